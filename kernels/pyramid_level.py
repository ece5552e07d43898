"""One Laplacian pyramid level, and the whole pyramid built from it."""

from __future__ import annotations

from torch import Tensor

from gpufocus.pyramid import build_laplacian_pyramid, check_levels, pyr_down, pyr_up

from .dispatch import use_triton

__all__ = ["laplacian_level", "laplacian_pyramid"]


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


def laplacian_pyramid(frames: Tensor, levels: int) -> list[Tensor]:
    """``gpufocus.pyramid.build_laplacian_pyramid``, level by level through ``laplacian_level``."""
    if not use_triton(frames):
        return build_laplacian_pyramid(frames, levels)
    check_levels(frames, levels)
    pyramid, g = [], frames
    for _ in range(levels):
        detail, g = laplacian_level(g)
        pyramid.append(detail)
    return pyramid + [g]
