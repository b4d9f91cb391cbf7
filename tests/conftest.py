"""Test-wide settings: one intra-op thread per worker, since `pytest -n 2` already fills both
cores and oversubscribed OpenMP threads slow small-model tests several times over."""
import os

import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
