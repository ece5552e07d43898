"""Luminance, for decisions on colour images, and the sRGB curve, for linear (RAW) input."""

from __future__ import annotations

import torch
from torch import Tensor

from .kernels.color import LUMA, luminance

__all__ = ["LUMA", "luminance", "linear_to_srgb"]


def linear_to_srgb(images: Tensor) -> Tensor:
    """The sRGB transfer curve (IEC 61966-2-1) on linear values in [0, 1]: how a result
    fused from RAW frames (linear light) is written, so that it looks right anywhere."""
    images = images.clamp(0, 1)
    return torch.where(images <= 0.0031308, images * 12.92, 1.055 * images.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)
