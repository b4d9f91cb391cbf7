"""The scan-like CLIs share one set of options whose defaults are ScanConfig's (issue 13)."""
from __future__ import annotations

from landscapes.hessian import build_parser as hessian_parser
from landscapes.options import scan_config_kwargs
from landscapes.scan import ScanConfig
from landscapes.scan import build_parser as scan_parser

# Chosen per CLI on purpose: a Hessian map is expensive per point, so it has a coarser grid and a subset.
PER_CLI = {"x", "samples"}


def test_scan_and_hessian_share_options_and_their_defaults_are_the_configs():
    scan_args = scan_config_kwargs(scan_parser().parse_args([]))
    hess_args = scan_config_kwargs(hessian_parser().parse_args([]))
    assert scan_args.keys() == hess_args.keys() and len(scan_args) == 26
    assert {k for k in scan_args if scan_args[k] != hess_args[k]} == PER_CLI
    default = ScanConfig()
    differ = {k for k, v in scan_args.items() if v != getattr(default, k)}
    assert differ == set(), differ
    assert ScanConfig(**scan_args) == ScanConfig()  # the CLI without options is the Python default
