"""Luminance, the one colour operation the pipeline needs."""

from __future__ import annotations

from torch import Tensor

__all__ = ["LUMA", "luminance"]

#: ITU-R BT.601 luma weights, as OpenCV's and kornia's RGB-to-grey conversions use.
LUMA = (0.299, 0.587, 0.114)


def luminance(images: Tensor, dim: int = -3) -> Tensor:
    """The luma of RGB images, keeping ``dim`` (size 1); other channel counts are averaged.

    Shape:
        - images: ``(..., 3, H, W)`` (channels at ``dim``)
        - output: ``(..., 1, H, W)``
    """
    if images.shape[dim] != 3:
        return images.mean(dim=dim, keepdim=True)
    red, green, blue = images.unbind(dim)
    return (red * LUMA[0] + green * LUMA[1] + blue * LUMA[2]).unsqueeze(dim)
