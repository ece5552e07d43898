"""Intermediate results as pictures (``gpufocus fuse --save-steps DIR``).

``StepWriter`` is what ``StackFuser`` reports its steps to: the aligned frames, the
per-level decision maps (which frame won where, one colour per frame), the base level,
and the depth map with its confidence. Everything is 8-bit, PNG for maps and JPEG for
frames, so that a folder of them can be flipped through in any viewer.
"""

from __future__ import annotations

import colorsys
import os
from pathlib import Path

import numpy as np
from torch import Tensor

from .errors import GpufocusError
from .write import to_array, write_image

__all__ = ["StepWriter", "frame_colours"]


def frame_colours(count: int) -> np.ndarray:
    """``(count, 3)`` uint8: a colour per frame, from red (first) through the hues to
    violet (last), so that neighbouring frames look alike and far ones do not."""
    hues = np.linspace(0.0, 0.8, count) if count > 1 else np.zeros(1)
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, 0.95)] for h in hues], np.uint8)


class StepWriter:
    """Writes each step's picture into ``folder`` as it is reported (the depth map's
    only when the fusion makes one).

    Args:
        folder: where the pictures go (made if missing).
        frames: frames in the stack (for the colours of the decision maps).
        stems: the frames' file-name stems (``FrameStack.stems``), for the aligned frames.
    """

    def __init__(self, folder: str | os.PathLike, frames: int, stems: list[str] | None = None) -> None:
        self.folder = Path(folder)
        self.frames = frames
        self.stems = stems
        self.written: list[Path] = []

    @staticmethod
    def check(folder: str | os.PathLike) -> None:
        """Fail before any work if ``folder`` cannot hold the pictures (it is a file)."""
        if Path(folder).exists() and not Path(folder).is_dir():
            raise GpufocusError(f"{folder}: not a directory")

    def _write(self, name: str, image, **options) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written.append(write_image(self.folder / name, image, overwrite=True, role="step", **options))

    def frame(self, index: int, image: Tensor) -> None:
        """An aligned frame, ``(C, H, W)`` in [0, 1], on the reference's grid."""
        stem = self.stems[index] if self.stems else f"frame{index}"
        self._write(f"1-aligned-{index:03d}-{stem}.jpg", _displayable(image), quality=90)

    def decisions(self, level: int, index: Tensor) -> None:
        """Which frame won each coefficient of detail level ``level`` (``(h, w)`` ints)."""
        colours = frame_colours(self.frames)
        chosen = index.clamp(0, self.frames - 1).long().cpu().numpy()
        self._write(f"2-decisions-level{level}.png", colours[chosen])
        if level == 0:  # the key: frame 0 on the left
            self._write("2-decisions-legend.png", np.repeat(np.repeat(colours[None], 16, axis=0), 16, axis=1))

    def base(self, image: Tensor) -> None:
        """The fused base (the coarsest Gaussian level), ``(C, h, w)``."""
        self._write("3-base.png", _displayable(image))

    def depth(self, measured: Tensor, confidence: Tensor, final: Tensor) -> None:
        """The depth map as measured, its confidence, and as finished (``(H, W)`` each)."""
        top = max(self.frames - 1, 1)
        self._write("4-depth-measured.png", (measured / top)[None])
        self._write("4-depth-confidence.png", confidence[None])
        self._write("4-depth-final.png", (final / top)[None])

    def result(self, image: Tensor) -> None:
        """The fused image."""
        self._write("5-fused.png", _displayable(image))


def _displayable(image: Tensor) -> np.ndarray:
    """Grey or RGB for a picture: other channel counts show their first channel."""
    image = image.detach().float().cpu().clamp(0, 1)
    if image.shape[0] not in (1, 3):
        image = image[:1]
    return to_array(image, 8)

