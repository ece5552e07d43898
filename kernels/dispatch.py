"""Which implementation of a kernel runs: Triton where it can, the torch twin elsewhere."""

from __future__ import annotations

import functools
import os

import torch

__all__ = ["use_triton"]


@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(tensor: torch.Tensor) -> bool:
    """Whether the Triton kernels handle ``tensor``.

    On CUDA float32 tensors when Triton is installed; on any device under Triton's
    interpreter (``TRITON_INTERPRET=1``, which the tests use on the CPU).
    ``GPUFOCUS_TRITON=0`` turns them off.
    """
    if os.environ.get("GPUFOCUS_TRITON") == "0" or tensor.dtype != torch.float32:
        return False
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return (tensor.is_cuda or interpreted) and _triton_importable()
