"""TF32 switches work on torch with fp32_precision (>= 2.9) and on the older allow_tf32 API that
the declared floor torch>=2.4 offers."""
from types import SimpleNamespace

import torch

from landscapes.precision import get_fp32_precision, precision, set_fp32_precision


def test_new_api_is_used_and_restored():
    before = get_fp32_precision()
    assert before == (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision)
    try:
        set_fp32_precision("ieee")
        assert (torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision) == ("ieee", "ieee")
    finally:
        set_fp32_precision(before)
    assert get_fp32_precision() == before


def test_falls_back_to_allow_tf32_when_fp32_precision_is_absent(monkeypatch):
    """Before: evaluate read torch.backends.cuda.matmul.fp32_precision unconditionally (AttributeError on torch < 2.9)."""
    monkeypatch.setattr(torch.backends.cuda, "matmul", SimpleNamespace(allow_tf32=False))
    monkeypatch.setattr(torch.backends, "cudnn", SimpleNamespace(allow_tf32=True))  # no .conv
    assert get_fp32_precision() == (False, True)
    with precision("tf32", torch.device("cuda")):
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    with precision("float32", torch.device("cuda")):
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
    assert get_fp32_precision() == (False, True)  # restored
