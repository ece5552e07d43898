"""The depth map: which frame is in focus where.

Per pixel, the frame whose luminance carries the most local energy in a middle band
of the pyramid (the detail of level 2, a quarter of the resolution, energy averaged
over a 9x9 binomial window there, about 36 pixels at full size): fine enough to
follow objects, coarse enough to be steady where one frame's texture is faint. The
coarse index map is enlarged by bilinear interpolation, so depth steps are smooth.
It reads the chunk's ``Decomposition``, the one the selection rule reads.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .kernels import fold_max, mask_unusable
from .pyramid import COVERED, Decomposition, binomial_taps, max_levels, separable_filter

__all__ = ["DepthMap"]

_LEVEL = 2
_WINDOW = binomial_taps(9)


class DepthMap:
    """Folds frames in like a selection rule; ``result`` gives the in-focus frame per pixel.

    Args:
        height, width: the frames' size.
    """

    def __init__(self, height: int, width: int) -> None:
        self.size = (height, width)
        self.level = max(0, min(_LEVEL, max_levels(height, width) - 1))
        self._best = None

    def fold(self, parts: Decomposition, first_index: int) -> None:
        """Take the next frames' decomposition (at least ``level + 1`` detail levels)."""
        detail = parts.luma(self.level)
        energy = separable_filter(detail * detail, _WINDOW)
        if parts.coverage is not None:
            energy = mask_unusable(energy, parts.coverage[self.level] >= COVERED)
        self._best = fold_max(self._best, energy, None, first_index, track_index=True)

    def result(self) -> Tensor:
        """``(H, W)`` float: the index of the frame in focus, interpolated between frames."""
        index = self._best.index.float()
        if self.level:
            index = F.interpolate(index, size=self.size, mode="bilinear", align_corners=False)
        return index[0, 0]
