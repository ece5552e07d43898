"""Triton version of the selection step: local energy, compare, update, in one pass.

Repeats the torch twin's arithmetic operation by operation (separable filter of the
squared measure, rows then columns, symmetric taps paired in the same order; strict
comparison, so ties keep the earlier frame) with floating-point contraction off: the
result is the twin's, bit for bit. Frames are folded one launch at a time, in order.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_pyramid import _reflect

_BLOCK_H, _BLOCK_W = 16, 32


@triton.jit
def _energy_fold_kernel(
    measured_ptr, value_ptr, usable_ptr, score_ptr, best_ptr, taps_ptr, h, w,
    K: tl.constexpr, CHANNELS: tl.constexpr, PER_CHANNEL: tl.constexpr, HAS_USABLE: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    plane = tl.program_id(2)  # decision plane: 0, or the channel with PER_CHANNEL
    y = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    x = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    inside = (y < h) & (x < w)
    src = measured_ptr + plane * h * w
    R: tl.constexpr = K // 2
    # Rows first: for each column offset, acc = t[R] w[R], then += (t[k] + t[K-1-k]) w[k].
    columns = []
    for dx in tl.static_range(K):
        c = _reflect(x + dx - R, w)
        mid = tl.load(src + _reflect(y, h) * w + c, mask=inside, other=0.0)
        acc = (mid * mid) * tl.load(taps_ptr + R)
        for k in tl.static_range(R):
            a = tl.load(src + _reflect(y + k - R, h) * w + c, mask=inside, other=0.0)
            b = tl.load(src + _reflect(y + R - k, h) * w + c, mask=inside, other=0.0)
            acc = acc + ((a * a) + (b * b)) * tl.load(taps_ptr + k)
        columns.append(acc)
    energy = columns[R] * tl.load(taps_ptr + R)
    for k in tl.static_range(R):
        energy = energy + (columns[k] + columns[K - 1 - k]) * tl.load(taps_ptr + k)
    if HAS_USABLE:
        usable = tl.load(usable_ptr + plane * h * w + y * w + x, mask=inside, other=0)
        energy = tl.where(usable != 0, energy, float("-inf"))
    offset = plane * h * w + y * w + x
    best = tl.load(score_ptr + offset, mask=inside, other=0.0)
    wins = energy > best
    tl.store(score_ptr + offset, tl.where(wins, energy, best), mask=inside)
    if PER_CHANNEL:
        value = tl.load(value_ptr + offset, mask=inside, other=0.0)
        kept = tl.load(best_ptr + offset, mask=inside, other=0.0)
        tl.store(best_ptr + offset, tl.where(wins, value, kept), mask=inside)
    else:
        for channel in tl.static_range(CHANNELS):
            at = channel * h * w + y * w + x
            value = tl.load(value_ptr + at, mask=inside, other=0.0)
            kept = tl.load(best_ptr + at, mask=inside, other=0.0)
            tl.store(best_ptr + at, tl.where(wins, value, kept), mask=inside)


def energy_fold(
    score: torch.Tensor, best: torch.Tensor, measured: torch.Tensor, values: torch.Tensor,
    taps: tuple[float, ...], usable: torch.Tensor | None,
) -> None:
    """Fold frames one by one into ``score`` (1, S, H, W) and ``best`` (1, C, H, W), in place.

    ``measured`` is ``(B, S, H, W)``, ``values`` ``(B, C, H, W)``, ``usable`` ``(B, S or 1,
    H, W)`` bool or ``None``; all float32 except ``usable``.
    """
    batch, planes, height, width = measured.shape
    channels = values.shape[1]
    weights = torch.tensor(taps, dtype=torch.float32, device=measured.device)
    grid = (triton.cdiv(height, _BLOCK_H), triton.cdiv(width, _BLOCK_W), planes)
    for frame in range(batch):
        mask = None if usable is None else usable[frame].expand(planes, height, width).contiguous().to(torch.uint8)
        _energy_fold_kernel[grid](
            measured[frame].contiguous(), values[frame].contiguous(), mask if mask is not None else measured,
            score, best, weights, height, width,
            K=len(taps), CHANNELS=channels, PER_CHANNEL=planes > 1, HAS_USABLE=mask is not None,
            BLOCK_H=_BLOCK_H, BLOCK_W=_BLOCK_W, enable_fp_fusion=False,
        )
