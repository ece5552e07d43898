"""The samples a frame's noise level is the median of: its finest detail on every 16th row."""

from __future__ import annotations

from torch import Tensor

from .color import luminance
from .dispatch import triton_or_torch, use_triton
from .filters import binomial_taps
from .pyramid_level import DETAIL, measure_of

__all__ = ["ROW_STEP", "noise_samples"]

#: The noise level reads every 16th row: enough for a median.
ROW_STEP = 16
_BINOMIAL5 = binomial_taps(5)


def noise_samples(frames: Tensor, per_channel: bool) -> Tensor:
    """``|pixel - 5x5 binomial blur around it|`` of the planes decisions are made on (the
    luminance, or each channel), on every ``ROW_STEP``-th row, where the blur fits.

    Only the rows read are converted to the measure. The Triton version reads them once
    and writes only the samples.

    Shape:
        - frames: ``(B, C, H, W)`` with ``H, W >= 5``.
        - output: ``(B, S, (H - 5) // ROW_STEP + 1, W - 4)`` float32.
    """

    def twin() -> Tensor:
        rows = (frames.shape[-2] - 5) // ROW_STEP + 1
        stop = lambda k: k + ROW_STEP * (rows - 1) + 1  # noqa: E731
        measure = (lambda x: x) if per_channel else luminance
        lines = [measure(frames[..., k : stop(k) : ROW_STEP, :]).float() for k in range(5)]
        vertical = sum(t * line for t, line in zip(_BINOMIAL5, lines))
        width = vertical.shape[-1] - 4
        blurred = sum(t * vertical[..., k : k + width] for k, t in enumerate(_BINOMIAL5))
        return (lines[2][..., 2 : 2 + width] - blurred).abs()

    if use_triton(frames):
        from . import _triton_noise as fused

        measure = DETAIL if per_channel else measure_of(frames.shape[1], False)
        return triton_or_torch("noise", lambda: fused.noise_samples(frames, measure, ROW_STEP), twin)
    return twin()
