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
times as long (bench/halo.py). On CUDA the guard runs inside the finest level's fold
kernel (``kernels.halo_fold``): with it the fuse stage of 32 frames of 24 MP took 0.095 s
on an H200, without it 0.061 s (bench/RESULTS.md).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .kernels import Level, RunningMax, halo_fold, noise_samples, window_energies

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



def noise_level(frames: Tensor, per_channel: bool) -> Tensor:
    """Per image and plane, the squared median of its finest detail (the pixel less the
    5x5 binomial blur around it), on every 16th row; ``(B, P)`` float32.

    A robust measure of the noise: most of a frame is out of focus, where that detail
    is noise. A median is one of the values, so it does not depend on the batch. It is
    measured on the planes decisions are made on: the frames' luminance, or with
    ``per_channel`` each channel; only the rows it reads are converted.

    Shape:
        - frames: ``(B, C, H, W)``, at least 5 pixels a side.
    """
    samples = noise_samples(frames, per_channel).flatten(2)
    if samples.is_cuda:  # the lower median, ``median``'s, from a sort: on CUDA 6 times faster (bench/RESULTS.md)
        return samples.sort(dim=2).values[..., (samples.shape[-1] - 1) // 2].square()
    return samples.median(dim=2).values.square()


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
        self, best: RunningMax | None, level: Level, noise: Tensor, coarse_energy: Tensor, usable: Tensor | None,
        first_index: int,
    ) -> RunningMax:
        """Take the next frames: fold the finest ``level`` into the rule's winners ``best``
        (with their index) and into the guard's (``kernels.halo_fold``); ``noise``:
        ``noise_level`` of the planes decided on (``(B, S)``); ``coarse_energy``: the
        next level's energies. Returns ``best`` updated."""
        best, self._alternative, self._own = halo_fold(
            best, self._alternative, self._own, level, coarse_energy, self.taps, usable, first_index,
            MIN_SHARPNESS, HALF_SHARE,
        )
        least = noise.amin(0)  # per plane
        self._noise = least if self._noise is None else torch.minimum(self._noise, least)
        return best

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
