"""Halo guard: the finest level's choice of frame at depth edges.

Where a sharp foreground edge meets a background in focus in another frame, the frame
that holds the sharp edge has the most energy in every window that reaches the edge,
so it also wins the finest-level coefficients a few pixels out over the background,
whose texture it shows blurred: a thin seam along the edge, the halo photographers
see. (On the shared astronaut stack over 90 % of the error within 8 px of a depth edge
sits in the finest level, most of it on the background pixels right next to the edge.)

Energy that comes from one side only gives this away. Besides the usual window, each
frame's finest-level energy is taken over the four half windows (up, down, left,
right, each holding the centre line), and a frame is also ranked by
``min(energy, least half-window energy / HALF_SHARE)``: energy that fills one side of
the window counts for little. A second running winner is kept by that score, and when
the stack is done, a coefficient takes that winner's instead of the usual one only
where all of these hold:

- the two frames are focused far apart: at least ``JUMP_SHARE`` of the stack's frames
  apart, and at least ``MIN_JUMP`` frames (a depth edge, not a slope; stacks of 2 or 3
  frames are left as they are);
- the alternative's detail is fine detail of its own: its finest-level energy is at
  least ``MIN_SHARPNESS`` times its energy one level coarser, where a blurred edge's
  spill has little;
- both energies stand well above the noise: at least ``NOISE_FACTOR`` times the noise
  level, the smallest over the frames of ``noise_level`` (squared, like an energy), so
  that noise in flat areas never decides.

A stack without depth edges keeps every coefficient (tested on the shared smooth and
plane stacks: the same PSNR); the thresholds were chosen on the shared synthetic stacks
and checked on six others made by ``gpufocus synth`` (bench/halo.py prints both).
Cost: one more running winner of the finest level (its coefficients, score, frame and
half-window energy, the last with a copy of the score) and the usual winner's frame,
about 32 bytes a pixel for colour frames; on the CPU the fusion stage takes 1.5-1.7
times as long (bench/halo.py); on CUDA the finest level leaves the fused Triton kernel,
which keeps no frame index.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .kernels import RunningMax, fold_max, mask_unusable
from .kernels.filters import binomial_taps, correlate1d, pyr_up, separable_filter

__all__ = ["HALF_SHARE", "MIN_JUMP", "JUMP_SHARE", "MIN_SHARPNESS", "NOISE_FACTOR", "noise_level", "window_energies", "HaloGuard"]

#: Energy whose least half window holds less than this share of it is one-sided.
HALF_SHARE = 0.5
#: A depth edge: the two frames at least this many frames apart ...
MIN_JUMP = 3
#: ... and at least this share of the stack's span.
JUMP_SHARE = 0.3
#: Finest-level energy over the next level's, at least, for detail of the frame's own.
MIN_SHARPNESS = 0.2
#: Energies must be at least this many times the noise level (20 noise amplitudes).
NOISE_FACTOR = 400.0

_NOISE_ROW_STEP = 16  # the noise level reads every 16th row: enough for a median
_BINOMIAL5 = binomial_taps(5)


def noise_level(planes: Tensor) -> Tensor:
    """Per image and plane, the squared median of its finest detail (the pixel less the
    5x5 binomial blur around it), on every 16th row; ``(B, P)`` float32.

    A robust measure of the noise: most of a frame is out of focus, where that detail
    is noise. A median is one of the values, so it does not depend on the batch. Pass
    the planes decisions are made on: the luminance, or each channel.

    Shape:
        - planes: ``(B, P, H, W)``, at least 5 pixels a side.
    """
    height = planes.shape[-2]
    rows = (height - 5) // _NOISE_ROW_STEP + 1
    stop = lambda k: k + _NOISE_ROW_STEP * (rows - 1) + 1  # noqa: E731
    lines = [planes[..., k : stop(k) : _NOISE_ROW_STEP, :].float() for k in range(5)]
    vertical = sum(t * line for t, line in zip(_BINOMIAL5, lines))
    width = vertical.shape[-1] - 4
    blurred = sum(t * vertical[..., k : k + width] for k, t in enumerate(_BINOMIAL5))
    detail = lines[2][..., 2 : 2 + width] - blurred
    return detail.abs().flatten(2).median(dim=2).values.square()


def window_energies(squares: Tensor, taps: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """The mean of ``squares`` over the window ``taps`` x ``taps`` (``separable_filter``,
    the same arithmetic), and the least of its four half-window means: the window with
    the rows above or below, or the columns left or right of the centre cut off (the
    centre line kept, each half renormalised). Reflect borders.

    A half is the full window plus or minus its antisymmetric part, so the least of two
    opposite halves is ``(full + t * centre line - |antisymmetric part|) / (1 + t)``
    with ``t`` the centre tap: one more pass per direction instead of two.

    Shape:
        - squares: ``(B, S, h, w)``; both results are the same.
    """
    centre = taps[len(taps) // 2]
    columns = correlate1d(squares, taps, -2)
    energy = correlate1d(columns, taps, -1)
    # Left and right halves first, then up and down: one filtered copy alive at a time.
    least = torch.add(energy, columns, alpha=centre).sub_(correlate1d(columns, taps, -1, odd=True).abs_())
    del columns
    rows = correlate1d(squares, taps, -1)
    half = torch.add(energy, rows, alpha=centre).sub_(correlate1d(rows, taps, -2, odd=True).abs_())
    del rows
    return energy, torch.minimum(least, half, out=least).div_(1 + centre)


class HaloGuard:
    """The second running winner of the finest level, and the switch to it (module notes).

    Args:
        taps: the rule's energy window.
    """

    def __init__(self, taps: tuple[float, ...]) -> None:
        self.taps = taps
        self._alternative: RunningMax | None = None  # by score: coefficients and frame
        self._own: RunningMax | None = None  # by the same score: the winner's half-window energy
        self._noise: Tensor | None = None

    def fold(
        self, coefficients: Tensor, noise: Tensor, level1: Tensor, energy: Tensor, half: Tensor,
        usable: Tensor | None, first_index: int,
    ) -> None:
        """Take the next frames: their finest-level ``coefficients`` (``(B, C, h, w)``),
        ``noise_level`` of the planes decided on (``(B, S)``), what the rule measures one
        level coarser (``level1``, ``(B, S, h/2, w/2)``), and their finest level's
        ``window_energies``."""
        coarser = pyr_up(separable_filter(level1 * level1, self.taps), energy.shape[-2:])
        # Kept for the winner: its half-window energy, or -1 (below any noise floor) where
        # its detail is not its own.
        own = torch.where(energy >= MIN_SHARPNESS * coarser, half, -1.0)
        del coarser
        score = mask_unusable(torch.minimum(energy, half / HALF_SHARE), usable)
        self._alternative = fold_max(self._alternative, score, coefficients, first_index, track_index=True)
        self._own = fold_max(self._own, score, own, first_index)  # the same scores: the same winners
        least = noise.amin(0)  # per plane
        self._noise = least if self._noise is None else torch.minimum(self._noise, least)

    def apply(self, best: RunningMax, count: int) -> None:
        """Switch ``best`` (the finest level's winners, with their index) to the
        alternative where the module's conditions hold; in place, once."""
        alternative, own = self._alternative, self._own
        if alternative is None:
            return
        self._alternative = self._own = None  # their memory goes back
        own = own.value
        floor = (self._noise * NOISE_FACTOR).to(best.score.dtype).view(1, -1, 1, 1)
        jump = max(MIN_JUMP, math.ceil(JUMP_SHARE * (count - 1)))
        switch = (alternative.index - best.index).abs() >= jump
        switch &= (best.score >= floor) & (own >= floor) & (alternative.score >= floor)
        torch.where(switch, alternative.value, best.value, out=best.value)
        torch.where(switch, alternative.index, best.index, out=best.index)
