"""One Laplacian pyramid level: the next Gaussian level, and the detail or its measure."""

from __future__ import annotations

from torch import Tensor

from .color import luminance
from .dispatch import triton_or_torch, use_triton
from .filters import pyr_down, pyr_up

__all__ = ["DETAIL", "LUMA", "MEAN", "measure_of", "downsample", "downsample_luminance", "detail"]

#: What ``detail`` returns: the detail of every channel, the luminance of an RGB
#: detail, or the mean of its channels (``gpufocus.color.luminance``'s rule).
DETAIL, LUMA, MEAN = 0, 1, 2


def measure_of(channels: int, per_channel: bool) -> int:
    """What decisions are measured on: every channel (``per_channel``, or one channel),
    the luminance of three, or the mean of other counts."""
    if per_channel or channels == 1:
        return DETAIL
    return LUMA if channels == 3 else MEAN


def downsample(g: Tensor) -> Tensor:
    """The next Gaussian level, ``pyr_down(g)``.

    Shape:
        - g: ``(B, C, H, W)``; output: ``(B, C, ceil(H/2), ceil(W/2))``.
    """
    if use_triton(g):
        from . import _triton_pyramid as fused

        return triton_or_torch("pyr_down", lambda: fused.pyr_down(g), lambda: pyr_down(g))
    return pyr_down(g)


def downsample_luminance(frames: Tensor) -> Tensor:
    """The next Gaussian level of the frames' luminance, ``pyr_down(luminance(frames))``:
    for RGB frames in one pass where Triton runs, which reads the frames once and writes
    only the level (the twin writes the luminance and reads it again).

    Shape:
        - frames: ``(B, C, H, W)``; output: ``(B, 1, ceil(H/2), ceil(W/2))``.
    """
    if frames.shape[1] == 3 and use_triton(frames):
        from . import _triton_pyramid as fused

        return triton_or_torch(
            "pyr_down[luma]", lambda: fused.pyr_down(frames, of_luma=True), lambda: pyr_down(luminance(frames))
        )
    return downsample(luminance(frames))


def detail(g: Tensor, coarser: Tensor, measure: int = DETAIL) -> Tensor:
    """``g - pyr_up(coarser)``, the detail of a Gaussian level, or (``LUMA``, ``MEAN``) the
    plane decisions are measured on, made without the detail of every channel.

    Shape:
        - g: ``(B, C, H, W)``; coarser: ``(B, C, ceil(H/2), ceil(W/2))``.
        - output: ``(B, C, H, W)``, or ``(B, 1, H, W)`` for a measure.
    """

    def twin() -> Tensor:
        difference = g - pyr_up(coarser, g.shape[-2:])
        return difference if measure == DETAIL else luminance(difference)

    if use_triton(g):
        from . import _triton_pyramid as fused

        return triton_or_torch("detail", lambda: fused.detail(g, coarser, measure), twin)
    return twin()
