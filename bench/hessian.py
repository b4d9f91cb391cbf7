"""Time per point of the Hessian's extreme eigenvalues: our Lanczos / ARPACK / power iteration against
the reference code's recipe (two eigsh runs at tol 1e-2, shift 0.51 lambda_max, a fresh forward and
double backward per product), all in one run on one checkpoint, with a tight Lanczos as the truth.

    python bench/hessian.py --checkpoint runs/resnet20_mnist/final.pt --dataset mnist --samples 64
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh

from landscapes.hessian import HessianConfig, HessianOperator, hessian_eigs
from models import load_checkpoint
from models.data import load_device_data


def reference_recipe(model, data, batch_size: int) -> dict:
    """tomgoldstein/loss-landscape hess_vec_prod.min_max_hessian_eigs, re-expressed on our operator
    (weights of dim > 1, eval mode, no graph reuse: forward + grad(create_graph) + backward per product)."""
    op = HessianOperator(model, data, HessianConfig(reuse_graph=False, batch_size=batch_size))
    n = op.dim

    def hvp(v: np.ndarray) -> np.ndarray:
        return op.matvec(torch.from_numpy(v.astype(np.float32))).double().numpy()

    start = time.perf_counter()
    max_eig = float(eigsh(LinearOperator((n, n), matvec=hvp, dtype=np.float64), k=1, tol=1e-2,
                          return_eigenvectors=False)[0])
    shift = 0.51 * max_eig
    shifted = LinearOperator((n, n), matvec=lambda v: hvp(v) - shift * v, dtype=np.float64)
    min_eig = float(eigsh(shifted, k=1, tol=1e-2, return_eigenvectors=False)[0]) + shift
    if max_eig <= 0 and min_eig > 0:
        max_eig, min_eig = min_eig, max_eig
    return {"method": "reference (eigsh tol 1e-2 x2, shift 0.51 max)", "max_eig": max_eig, "min_eig": min_eig,
            "hvps": op.hvps, "seconds": time.perf_counter() - start, "converged": True}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model", help="for reference-project checkpoints")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--data-root", default="/work/shared/datasets")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--methods", default="reference,lanczos,arpack,power,truth")
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--out", help="JSON file for the results")
    args = p.parse_args()
    model, _ = load_checkpoint(args.checkpoint, name=args.model)
    model.eval()
    data = load_device_data(args.dataset, args.data_root, "train", args.samples)
    base = HessianConfig(max_iter=args.max_iter, batch_size=args.samples, progress=False)
    runs = {"lanczos": base, "lanczos_1e-2": replace(base, tol=1e-2), "arpack": replace(base, method="arpack"),
            "power": replace(base, method="power"), "truth": replace(base, tol=1e-6, max_iter=300)}
    rows = []
    for name in args.methods.split(","):
        if name == "reference":
            row = reference_recipe(model, data, args.samples)
        else:
            r = hessian_eigs(model, data, runs[name])
            row = {"method": name, "max_eig": r.max_eig, "min_eig": r.min_eig, "hvps": r.hvps,
                   "seconds": r.seconds, "converged": r.converged, "residuals": list(r.residuals)}
        row["s_per_hvp"] = row["seconds"] / max(row["hvps"], 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    truth = next((r for r in rows if r["method"] == "truth"), None)
    print(f"\n{'method':48s} {'lambda_max':>11s} {'lambda_min':>11s} {'HVPs':>5s} {'s/point':>8s}")
    for r in rows:
        print(f"{r['method']:48s} {r['max_eig']:11.5g} {r['min_eig']:11.5g} {r['hvps']:5d} {r['seconds']:8.1f}")
    if truth is not None:
        for r in rows:
            r["max_rel_err"] = abs(r["max_eig"] / truth["max_eig"] - 1)
            r["min_err_over_max"] = abs(r["min_eig"] - truth["min_eig"]) / abs(truth["max_eig"])
    meta = {"checkpoint": args.checkpoint, "dataset": args.dataset, "samples": args.samples,
            "threads": torch.get_num_threads(), "torch": str(torch.__version__), "rows": rows}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(meta, indent=1) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
