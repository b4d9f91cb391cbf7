"""Test-wide settings: one intra-op thread. The tests use tiny tensors, where a second OpenMP
thread only adds barrier stalls (10-100x on a loaded 2-core machine), and `pytest -n 2` already
fills both cores."""
import torch

torch.set_num_threads(1)
