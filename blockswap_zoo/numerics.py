"""Numerical settings shared by scoring and evaluation: strict fp32 on GPUs (TF32 off)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["strict_fp32"]


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """Turn TF32 off for cuDNN convolutions and cuBLAS matmuls for the duration, then restore both.

    PyTorch runs fp32 convolutions in TF32 on Ampere and newer GPUs by default (10-bit mantissa),
    which would make "exact" scores and fp32 test accuracy depend on the device. No effect on CPU.
    """
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul
