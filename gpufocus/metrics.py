"""How good is a fused image: sharpness, fidelity to a ground truth, fusion quality.

- ``average_gradient``: the seed program's sharpness number: per channel, numpy-style
  central-difference gradients of the 0-255 image, the mean gradient magnitude,
  averaged over channels. Higher is sharper.
- ``psnr``, ``ssim``: against a ground truth (kornia.metrics; SSIM with an 11x11
  Gaussian window, sigma 1.5, over the valid region).
- ``qabf``: Xydeas & Petrovic's Q^AB/F in its common N-source form:
  ``Q = sum_n sum_p Q^nF(p) g_n(p) / sum_n sum_p g_n(p)``, from Sobel gradients of the
  BT.601 luma in 0-255 units (``Q^nF = Q_g * Q_a`` with Gamma_g 0.9994, k_g -15,
  sigma_g 0.5; Gamma_a 0.9879, k_a -22, sigma_a 0.8; orientations compared modulo pi).
  1 is a perfect transfer of edges; a source against itself scores about 0.975.

``evaluate`` scores a stack on disk; for Q^AB/F, PSNR and SSIM it drops a 2 % border
on every side first, so edge effects of the pyramid do not dominate.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch
from torch import Tensor

from .color import luminance
from .load import FrameStack, read_image

__all__ = ["as_unit_float", "average_gradient", "psnr", "ssim", "qabf", "QabfAccumulator", "border_crop", "evaluate"]

_BORDER = 0.02


def as_unit_float(image) -> Tensor:
    """``(H, W, C)`` uint8/uint16 array or ``(C, H, W)`` tensor to ``(C, H, W)`` float64 in [0, 1]."""
    if isinstance(image, Tensor):
        return image.double()
    top = 65535.0 if image.dtype.itemsize == 2 else 255.0
    return torch.from_numpy(image.astype("float64") / top).permute(2, 0, 1)


def border_crop(image: Tensor, fraction: float = _BORDER) -> Tensor:
    """Drop ``fraction`` of the height and width on every side of ``(..., H, W)``."""
    h, w = image.shape[-2:]
    dy, dx = int(round(h * fraction)), int(round(w * fraction))
    return image[..., dy : h - dy, dx : w - dx]


def average_gradient(image: Tensor) -> float:
    """The seed program's sharpness: mean gradient magnitude of the 0-255 image.

    Args:
        image: ``(C, H, W)`` in [0, 1].
    """
    scaled = image.double() * 255
    gy, gx = torch.gradient(scaled, dim=(-2, -1))
    return (gx**2 + gy**2).sqrt().mean(dim=(-2, -1)).mean().item()


def psnr(image: Tensor, reference: Tensor) -> float:
    """Peak signal-to-noise ratio in dB of ``(C, H, W)`` images in [0, 1]."""
    import kornia

    return kornia.metrics.psnr(image.double(), reference.double(), max_val=1.0).item()


def ssim(image: Tensor, reference: Tensor) -> float:
    """Mean structural similarity of ``(C, H, W)`` images in [0, 1]."""
    import kornia

    return kornia.metrics.ssim(image.double()[None], reference.double()[None], 11, padding="valid").mean().item()


def _luma_gradients(image: Tensor) -> tuple[Tensor, Tensor]:
    """Sobel gradient magnitude and orientation of the 0-255 luma of ``(3, H, W)``."""
    import kornia

    luma = luminance(image.double() * 255)[0]
    grad = kornia.filters.spatial_gradient(luma[None, None], mode="sobel", normalized=False)[0, 0]
    gx, gy = grad[0], grad[1]
    magnitude = (gx**2 + gy**2).sqrt()
    orientation = torch.atan(gy / torch.where(gx == 0, torch.full_like(gx, 1e-12), gx))
    return magnitude, orientation


class QabfAccumulator:
    """Q^AB/F summed one source at a time, so a long stack need not fit in memory.

    Args:
        fused: ``(3, H, W)`` in [0, 1].
    """

    def __init__(self, fused: Tensor) -> None:
        self._fused = _luma_gradients(fused)
        self._weighted = 0.0
        self._weights = 0.0

    def add(self, source: Tensor) -> None:
        """Add one source frame, ``(3, H, W)`` in [0, 1], the fused image's size."""
        g_f, a_f = self._fused
        g_s, a_s = _luma_gradients(source)
        largest = torch.maximum(g_s, g_f)
        strength = torch.where(largest > 0, torch.minimum(g_s, g_f) / largest.clamp_min(1e-300), 0.0)
        turn = (a_s - a_f).abs()
        turn = torch.minimum(turn, math.pi - turn)  # orientations are lines, not arrows
        alignment = 1 - turn / (math.pi / 2)
        q_g = 0.9994 / (1 + torch.exp(-15 * (strength - 0.5)))
        q_a = 0.9879 / (1 + torch.exp(-22 * (alignment - 0.8)))
        self._weighted += (q_g * q_a * g_s).sum().item()
        self._weights += g_s.sum().item()

    def value(self) -> float:
        return self._weighted / self._weights if self._weights > 0 else 0.0


def qabf(sources: Tensor, fused: Tensor) -> float:
    """Q^AB/F of a fused image against its ``(N, 3, H, W)`` sources, all in [0, 1]."""
    accumulator = QabfAccumulator(fused)
    for source in sources:
        accumulator.add(source)
    return accumulator.value()


def _centre(image: Tensor, height: int, width: int) -> Tensor:
    h, w = image.shape[-2:]
    top, left = (h - height) // 2, (w - width) // 2
    return image[..., top : top + height, left : left + width]


def evaluate(
    inputs: Sequence[str | os.PathLike] | str | os.PathLike | FrameStack,
    fused: str | os.PathLike,
    ground_truth: str | os.PathLike | None = None,
    transforms: Sequence | None = None,
) -> dict:
    """Score a fused image against its stack (and a ground truth, if given).

    Images of different sizes are compared on their common centre.

    Args:
        transforms: how the fusion aligned the frames (``StackFuser.transforms``, one
            ``FrameTransform`` a frame): the sources are scored as aligned, as they were
            fused. ``None`` or empty: as they are. Q^AB/F compares edges where they lie,
            so frames that moved (focus breathing) score low against a result in the
            reference's geometry: petteri_pcb fused at the defaults scored 0.19 against
            its frames as they are, 0.44 against them aligned (0.38 fused unaligned).

    Returns:
        ``frames``, ``width``, ``height`` (of the compared region, before the border),
        ``avg_gradient_sources`` (mean over the frames), ``avg_gradient_fused``,
        ``sharpness_gain`` (their ratio), ``qabf``, and with a ground truth ``psnr``
        and ``ssim``.
    """
    stack = inputs if isinstance(inputs, FrameStack) else FrameStack(inputs)
    result = as_unit_float(read_image(fused))
    truth = None if ground_truth is None else as_unit_float(read_image(ground_truth))
    sizes = [stack.size, tuple(result.shape[-2:])] + ([] if truth is None else [tuple(truth.shape[-2:])])
    height, width = min(h for h, _ in sizes), min(w for _, w in sizes)

    # The seed program's sharpness looks at whole images; the fusion metrics skip the border.
    result = _centre(result, height, width)
    accumulator = QabfAccumulator(border_crop(result))
    source_gradients = []
    if transforms:
        from .align import apply_transform
    for index, chunk in enumerate(stack.chunks(1)):
        source = as_unit_float(chunk[0, ..., : stack.channels])  # alpha left out
        if transforms:
            source = apply_transform(source[None], transforms[index])[0][0]
        source = _centre(source, height, width)
        accumulator.add(border_crop(source))
        source_gradients.append(average_gradient(source))
    scores = {
        "frames": len(stack),
        "width": width,
        "height": height,
        "avg_gradient_sources": sum(source_gradients) / len(source_gradients),
        "avg_gradient_fused": average_gradient(result),
        "qabf": accumulator.value(),
    }
    scores["sharpness_gain"] = scores["avg_gradient_fused"] / max(scores["avg_gradient_sources"], 1e-12)
    if truth is not None:
        a, b = border_crop(result), border_crop(_centre(truth, height, width))
        scores["psnr"], scores["ssim"] = psnr(a, b), ssim(a, b)
    return scores
