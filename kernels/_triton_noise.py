"""Triton version of ``noise.noise_samples`` (imported only where Triton runs).

One program covers a tile of samples of one output plane: it reads the five rows and
five columns around each sample (each row of the frame's channels, converted to the
measure as it is read), blurs them with the binomial taps in the torch twin's order
and writes ``|centre - blur|``. Floating-point contraction is off: the twin's result,
bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_pyramid import DETAIL, TILE, extent, grid, luma, tile_constexprs
from .dispatch import launch


@triton.jit
def _measure(x_ptr, first, channels, row, column, h, w, inside, MEASURE: tl.constexpr):
    """The plane decisions are made on, at ``(row, column)``: a channel (``first``), the
    luminance of three (``first`` is the frame's first channel) or their mean."""
    at = row * w + column
    if MEASURE == 0:
        return tl.load(x_ptr + first * h * w + at, mask=inside, other=0.0)
    elif MEASURE == 1:
        return luma(tl.load(x_ptr + first * h * w + at, mask=inside, other=0.0),
                    tl.load(x_ptr + (first + 1) * h * w + at, mask=inside, other=0.0),
                    tl.load(x_ptr + (first + 2) * h * w + at, mask=inside, other=0.0))
    else:
        total = tl.full(row.shape, 0.0, tl.float32) + tl.full(column.shape, 0.0, tl.float32)
        for c in range(channels):
            total = total + tl.load(x_ptr + (first + c) * h * w + at, mask=inside, other=0.0)
        return tl.math.div_rn(total, total * 0.0 + channels)


@triton.jit
def _vertical(x_ptr, first, channels, top, column, h, w, inside, MEASURE: tl.constexpr):
    """The binomial blur down the five rows from ``top``: 0 + t0 l0 + t1 l1 + ... in order."""
    v = _measure(x_ptr, first, channels, top, column, h, w, inside, MEASURE) * 0.0625
    v = v + _measure(x_ptr, first, channels, top + 1, column, h, w, inside, MEASURE) * 0.25
    v = v + _measure(x_ptr, first, channels, top + 2, column, h, w, inside, MEASURE) * 0.375
    v = v + _measure(x_ptr, first, channels, top + 3, column, h, w, inside, MEASURE) * 0.25
    return v + _measure(x_ptr, first, channels, top + 4, column, h, w, inside, MEASURE) * 0.0625


@triton.jit(do_not_specialize=["channels", "planes", "h", "w", "rows", "width"])
def _noise_kernel(
    x_ptr, out_ptr, channels, planes, h, w, rows, width,
    STEP: tl.constexpr, MEASURE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    plane = tl.program_id(2).to(tl.int64)  # frame * planes + the measured plane
    j = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    x = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    inside = (j < rows) & (x < width)
    frame = plane // planes
    first = tl.where(MEASURE == 0, plane, frame * channels)
    top = j * STEP
    blurred = _vertical(x_ptr, first, channels, top, x, h, w, inside, MEASURE) * 0.0625
    blurred = blurred + _vertical(x_ptr, first, channels, top, x + 1, h, w, inside, MEASURE) * 0.25
    blurred = blurred + _vertical(x_ptr, first, channels, top, x + 2, h, w, inside, MEASURE) * 0.375
    blurred = blurred + _vertical(x_ptr, first, channels, top, x + 3, h, w, inside, MEASURE) * 0.25
    blurred = blurred + _vertical(x_ptr, first, channels, top, x + 4, h, w, inside, MEASURE) * 0.0625
    centre = _measure(x_ptr, first, channels, top + 2, x + 2, h, w, inside, MEASURE)
    tl.store(out_ptr + plane * rows * width + j * width + x, tl.abs(centre - blurred), mask=inside)


def noise_launch(frames: torch.Tensor, out: torch.Tensor, measure: int, step: int) -> tuple:
    """``(grid, args, constexprs)`` of ``_noise_kernel``, reading every ``step``-th row."""
    batch, channels, height, width = frames.shape
    planes, rows, samples = out.shape[1:]
    args = (frames, out, channels, planes, height, width, rows, samples)
    constexprs = {"STEP": step, "MEASURE": measure, **tile_constexprs(TILE)}
    return grid(rows, samples, batch * planes, TILE), args, constexprs


def noise_samples(frames: torch.Tensor, measure: int, step: int) -> torch.Tensor:
    """``noise.noise_samples`` of ``(B, C, H, W)`` float32 frames, measured as ``measure``,
    on every ``step``-th row."""
    frames = frames.contiguous()
    batch, channels, height, width = frames.shape
    planes = channels if measure == DETAIL else 1
    out = frames.new_empty(batch, planes, (height - 5) // step + 1, width - 4)
    launch_grid, args, constexprs = noise_launch(frames, out, measure, step)

    def traffic() -> tuple[int, int]:
        read_planes = batch * (channels if measure != DETAIL else planes)
        columns = extent(out.shape[-1], TILE[1], width, lambda s: s, lambda e: e + 4)
        return 4 * read_planes * 5 * out.shape[-2] * columns, 4 * out.numel()

    launch("noise", _noise_kernel, launch_grid, args, constexprs, traffic)
    return out
