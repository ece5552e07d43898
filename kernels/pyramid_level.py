"""One Laplacian pyramid level: the detail and the next Gaussian level."""

from __future__ import annotations

from torch import Tensor

from .dispatch import use_triton
from .filters import pyr_down, pyr_up

__all__ = ["laplacian_level"]


def laplacian_level(g: Tensor) -> tuple[Tensor, Tensor]:
    """``(detail, coarser)`` of a Gaussian level: ``g - pyr_up(pyr_down(g))`` and ``pyr_down(g)``.

    Shape:
        - g: ``(B, C, H, W)``; detail: the same; coarser: ``(B, C, ceil(H/2), ceil(W/2))``.
    """
    if use_triton(g):
        from ._triton_pyramid import laplacian_level as fused

        return fused(g)
    coarser = pyr_down(g)
    return g - pyr_up(coarser, g.shape[-2:]), coarser
