"""The depth map: which frame is in focus where, between frames, and how sure that is.

Per pixel of a middle band of the pyramid (the detail of level ``_LEVEL``, energy over
a 9x9 binomial window there), the frames stream past and three energies are kept: the
sharpest frame's and its two neighbours' in the stack. A parabola through their
logarithms puts the peak between frames (the focus measure falls off about as a
Gaussian of the focus distance), so depth is interpolated across frames, never across
pixels. The confidence is how far the peak stands above the frames' mean energy.

``finish`` turns the raw map into the one users see: pixels below a confidence
threshold (flat areas, where every frame looks alike) are filled from confident ones
(push-pull over a pyramid), then a guided filter (kornia's), steered by the fused
image, smooths depth within objects but not across their edges.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .kernels import mask_unusable
from .pyramid import COVERED, Decomposition, binomial_taps, max_levels, pyr_down, pyr_up, separable_filter

__all__ = ["DepthMap", "finish"]

_LEVEL = 2  # a quarter of the resolution: a 9x9 window there spans about 36 pixels
_WINDOW = binomial_taps(9)
_FLOOR = 1e-7  # energy (level units, [0, 1] luminance squared) below which nothing is measured


class DepthMap:
    """Folds frames in like a selection rule; ``result`` gives depth and confidence.

    Frames must come in stack order (chunks of any size: each frame is folded on its
    own, so the result does not depend on the chunking).

    Args:
        height, width: the frames' size.
    """

    def __init__(self, height: int, width: int) -> None:
        self.size = (height, width)
        self.level = max(0, min(_LEVEL, max_levels(height, width) - 1))
        self._best: Tensor | None = None  # the sharpest frame's energy so far
        self._index: Tensor | None = None
        self._before: Tensor | None = None  # the energy of the frame before it, -inf for none
        self._after: Tensor | None = None  # and after it, -inf until it is seen
        self._previous: Tensor | None = None  # the last frame's energy
        self._sum: Tensor | None = None
        self._count = 0

    def fold(self, parts: Decomposition, first_index: int) -> None:
        """Take the next frames' decomposition (at least ``level + 1`` detail levels)."""
        detail = parts.luma(self.level)
        energy = separable_filter(detail * detail, _WINDOW)
        if parts.coverage is not None:
            energy = mask_unusable(energy, parts.coverage[self.level] >= COVERED)
        for offset in range(energy.shape[0]):
            self._fold_one(energy[offset : offset + 1], first_index + offset)

    def _fold_one(self, energy: Tensor, index: int) -> None:
        if self._best is None:
            none = torch.full_like(energy, float("-inf"))
            self._best, self._before, self._after = energy.clone(), none, none.clone()
            self._index = torch.full_like(energy, index, dtype=torch.int32)
            self._sum = torch.where(torch.isfinite(energy), energy, 0)
        else:
            self._after = torch.where(self._index == index - 1, energy, self._after)
            better = energy > self._best  # ties stay with the lower index
            self._before = torch.where(better, self._previous, self._before)
            self._after = self._after.masked_fill(better, float("-inf"))
            self._index = self._index.masked_fill(better, index)
            self._best = torch.where(better, energy, self._best)
            self._sum = self._sum + torch.where(torch.isfinite(energy), energy, 0)
        self._previous = energy
        self._count += 1

    def result(self) -> tuple[Tensor, Tensor]:
        """``(depth, confidence)``, each ``(H, W)`` float at full size: the frame in focus,
        between frames (0 = the first), and from 0 (no peak) to 1 (one frame stands alone)."""
        best = self._best.clamp_min(_FLOOR)
        log = lambda e: torch.log(e.clamp_min(_FLOOR))  # noqa: E731
        centre, before, after = log(self._best), log(self._before), log(self._after)
        curvature = before - 2 * centre + after
        both = torch.isfinite(self._before) & torch.isfinite(self._after) & (curvature < 0)
        peak = torch.where(both, 0.5 * (before - after) / curvature.clamp_max(-1e-12), 0).clamp(-0.5, 0.5)
        depth = self._index.float() + peak
        mean = self._sum / self._count
        confidence = ((best - mean) / (best + mean + _FLOOR)).clamp(0, 1)
        confidence = confidence.masked_fill(self._best <= _FLOOR, 0)
        both = torch.cat([depth, confidence], 1)
        if self.level:
            both = F.interpolate(both, size=self.size, mode="bilinear", align_corners=False)
        return both[0, 0], both[0, 1]


def finish(depth: Tensor, confidence: Tensor, guide: Tensor, threshold: float, smooth: int) -> Tensor:
    """The depth map users see: unsure pixels filled, then smoothed along the image.

    Args:
        depth, confidence: ``(H, W)``, as ``DepthMap.result`` gives them.
        guide: ``(H, W)``, the fused image's luminance in [0, 1].
        threshold: pixels whose confidence is below this take their depth from the
            confident ones around them.
        smooth: radius of the guided filter in pixels; 0 for none.

    Returns:
        ``(H, W)`` float32, frames.
    """
    weight = (confidence >= threshold).float()[None, None]
    if not bool(weight.any()):  # nothing is sure: keep the measured map
        weight = torch.ones_like(weight)
    filled = _push_pull(depth.float()[None, None], weight)
    if smooth:
        import kornia.filters

        filled = kornia.filters.guided_blur(guide.float()[None, None], filled, 2 * smooth + 1, eps=1e-3)
    return filled[0, 0]


def _push_pull(values: Tensor, weight: Tensor) -> Tensor:
    """Fill where ``weight`` is 0 from where it is not (Gortler et al.'s push-pull): the
    weighted values and the weights are averaged down a pyramid, and each level takes
    from the coarser one what its own weights do not cover."""
    if min(values.shape[-2:]) < 8:  # the top: what is not covered takes the weighted mean
        mean = (values * weight).sum() / weight.sum().clamp_min(1e-12)
        return weight * values + (1 - weight) * mean
    coarse_weight = pyr_down(weight)
    coarse = _push_pull(pyr_down(values * weight) / coarse_weight.clamp_min(1e-12), coarse_weight)
    trust = (weight * 4).clamp(max=1)  # a level's own average is good once a quarter of it is sure
    return trust * values + (1 - trust) * pyr_up(coarse, values.shape[-2:])
