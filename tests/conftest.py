"""Test-wide settings: one intra-op thread. The tests use tiny tensors, where a second OpenMP
thread only adds barrier stalls (10-100x on a loaded 2-core machine), and `pytest -n 2` already
fills both cores. ``device``: device-sensitive tests run on the CPU, and on CUDA where there is one
(marked ``cuda``: ``pytest -m cuda`` runs only those)."""
import pytest
import torch

torch.set_num_threads(1)

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device")])]


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)
