"""Triton kernels of one Laplacian pyramid level (imported only where Triton runs).

- ``_pyr_down_kernel``: the next Gaussian level; or (``OF_LUMA``) the next level of RGB
  frames' luminance, made as it is read: 12 bytes a pixel read and a quarter of 4
  written, where the luminance and then its level would write and read it again.
- ``_detail_kernel``: the detail ``g - pyr_up(coarser)``, or straight away the plane a
  decision is measured on (its luminance, or the mean of its channels), which is all
  the selection reads of a level: 4 bytes a pixel written instead of 4 per channel.

Written in the compiled Triton language only (no Python containers in a kernel; loops
over taps are ``tl.static_range``), and checked ahead of time for sm_90 and sm_80 by
``python -m gpufocus.kernels.compile``. Both kernels repeat the torch twins' arithmetic
operation by operation (the same products, the same pairing and order of additions,
reflect borders) and are launched with floating-point contraction off, so they give
the twins' results bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl

from .dispatch import launch

#: Output tiles (rows, columns) of one program: 4 warps, 4 samples a thread (16 x 32
#: tiles ran pyr_down 1.9 times slower on the H200: bench/RESULTS.md).
TILE = (8, 64)
#: ``pyr_down[luma]``'s tiles: 2 outputs a thread. It reads three planes for each
#: output, and with 4 outputs a thread ptxas gives it 255 registers and spills
#: (``python -m gpufocus.kernels.compile`` prints them); with 2, 168 and none.
LUMA_TILE = (4, 64)

#: What ``_detail_kernel`` writes: the detail of every channel, the luminance of an RGB
#: detail, or the mean of the channels (``gpufocus.color.luminance``'s rule).
DETAIL, LUMA, MEAN = 0, 1, 2


@triton.jit
def reflect(i, n):
    """Index into a side of ``n`` samples, mirrored at both ends without repeating the
    edge sample, as often as needed (a side of 1 maps everything to 0).

    The kernels read at most 7 samples past an edge (half the largest window): on sides
    longer than 16 one mirror is enough, without the division the general case costs."""
    if n > 16:
        r = tl.where(i < 0, -i, i)
        r = tl.where(r > n - 1, 2 * n - 2 - r, r)
    else:
        period = tl.maximum(2 * n - 2, 1)
        r = i % period
        r = tl.where(r < 0, r + period, r)
        r = tl.where(r > n - 1, period - r, r)
    return r


@triton.jit
def luma(red, green, blue):
    """``gpufocus.color.luminance``'s sum, in its order: red 0.299, += green 0.587, += blue 0.114."""
    value = red * 0.299
    value = value + green * 0.587
    return value + blue * 0.114


@triton.jit
def _sample(src, at, plane_size, inside, OF_LUMA: tl.constexpr):
    """The sample at offset ``at`` of the plane at ``src``, or (``OF_LUMA``) the luminance of
    the three planes from ``src`` on, ``plane_size`` apart."""
    if OF_LUMA:
        return luma(tl.load(src + at, mask=inside, other=0.0), tl.load(src + plane_size + at, mask=inside, other=0.0),
                    tl.load(src + 2 * plane_size + at, mask=inside, other=0.0))
    return tl.load(src + at, mask=inside, other=0.0)


@triton.jit
def _down_column(src, r0, r1, r2, r3, r4, c, w, plane_size, inside, OF_LUMA: tl.constexpr):
    """The vertical 5-tap binomial sum at column ``c``: m 6/16 + (a + e) / 16 + (b + d) 4/16."""
    a = _sample(src, r0 * w + c, plane_size, inside, OF_LUMA)
    b = _sample(src, r1 * w + c, plane_size, inside, OF_LUMA)
    m = _sample(src, r2 * w + c, plane_size, inside, OF_LUMA)
    d = _sample(src, r3 * w + c, plane_size, inside, OF_LUMA)
    e = _sample(src, r4 * w + c, plane_size, inside, OF_LUMA)
    v = m * 0.375
    v = v + (a + e) * 0.0625
    return v + (b + d) * 0.25


@triton.jit(do_not_specialize=["h", "w", "oh", "ow"])
def _pyr_down_kernel(
    x_ptr, out_ptr, h, w, oh, ow, OF_LUMA: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """One output plane a program column: a plane of the input, or (``OF_LUMA``) the
    luminance of a frame's three."""
    plane = tl.program_id(2).to(tl.int64)
    oy = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    ox = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    inside = (oy < oh) & (ox < ow)
    plane_size = h * w
    src = x_ptr + plane * (3 if OF_LUMA else 1) * plane_size
    r0, r1, r2 = reflect(2 * oy - 2, h), reflect(2 * oy - 1, h), reflect(2 * oy, h)
    r3, r4 = reflect(2 * oy + 1, h), reflect(2 * oy + 2, h)
    # Rows first, then columns, each as c 6/16 + (a + e) / 16 + (b + d) 4/16 in that order.
    c0 = _down_column(src, r0, r1, r2, r3, r4, reflect(2 * ox - 2, w), w, plane_size, inside, OF_LUMA)
    c1 = _down_column(src, r0, r1, r2, r3, r4, reflect(2 * ox - 1, w), w, plane_size, inside, OF_LUMA)
    c2 = _down_column(src, r0, r1, r2, r3, r4, reflect(2 * ox, w), w, plane_size, inside, OF_LUMA)
    c3 = _down_column(src, r0, r1, r2, r3, r4, reflect(2 * ox + 1, w), w, plane_size, inside, OF_LUMA)
    c4 = _down_column(src, r0, r1, r2, r3, r4, reflect(2 * ox + 2, w), w, plane_size, inside, OF_LUMA)
    out = c2 * 0.375
    out = out + (c0 + c4) * 0.0625
    out = out + (c1 + c3) * 0.25
    tl.store(out_ptr + plane * oh * ow + oy * ow + ox, out, mask=inside)


@triton.jit
def _coarse_index(i, m, fine):
    """A coarse index one step outside ``[0, m)``: the fine signal's reflection there."""
    i = tl.where(i < 0, tl.minimum(1, m - 1), i)
    return tl.where(i > m - 1, tl.where(fine % 2 == 1, tl.maximum(m - 2, 0), m - 1), i)


@triton.jit
def _up_row(src, row, i, odd_x, mw, fw, inside):
    """A coarse row interpolated along columns at fine column ``2 i`` (``+ 1`` if odd_x)."""
    left = tl.load(src + row * mw + _coarse_index(i - 1, mw, fw), mask=inside, other=0.0)
    mid = tl.load(src + row * mw + i, mask=inside, other=0.0)
    right = tl.load(src + row * mw + _coarse_index(i + 1, mw, fw), mask=inside, other=0.0)
    even = (left + right) * 0.125
    even = even + mid * 0.75
    odd = (mid + right) * 0.5
    return tl.where(odd_x, odd, even)


@triton.jit
def upsampled(src, y, x, mh, mw, h, w, inside):
    """``pyr_up`` of the ``(mh, mw)`` plane at ``src``, to ``(h, w)``, at ``(y, x)``:
    columns first, then rows, as the torch twin."""
    j, i = y // 2, x // 2
    odd_x = x % 2 == 1
    above = _up_row(src, _coarse_index(j - 1, mh, h), i, odd_x, mw, w, inside)
    mid = _up_row(src, j, i, odd_x, mw, w, inside)
    below = _up_row(src, _coarse_index(j + 1, mh, h), i, odd_x, mw, w, inside)
    even = (above + below) * 0.125
    even = even + mid * 0.75
    odd = (mid + below) * 0.5
    return tl.where(y % 2 == 1, odd, even)


@triton.jit
def detail_at(g_ptr, coarse_ptr, plane, y, x, h, w, mh, mw, inside):
    """``g - pyr_up(coarse)`` of plane ``plane`` (a tensor or a scalar) at ``(y, x)``."""
    g = tl.load(g_ptr + plane * h * w + y * w + x, mask=inside, other=0.0)
    return g - upsampled(coarse_ptr + plane * mh * mw, y, x, mh, mw, h, w, inside)


@triton.jit(do_not_specialize=["channels", "h", "w", "mh", "mw"])
def _detail_kernel(
    g_ptr, coarse_ptr, out_ptr, channels, h, w, mh, mw,
    MEASURE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """One frame's detail (``MEASURE == DETAIL``: every channel) or its measure (one plane)."""
    frame = tl.program_id(2).to(tl.int64)
    y = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    x = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    inside = (y < h) & (x < w)
    at = y * w + x
    if MEASURE == 0:
        for c in range(channels):
            plane = frame * channels + c
            tl.store(out_ptr + plane * h * w + at, detail_at(g_ptr, coarse_ptr, plane, y, x, h, w, mh, mw, inside),
                     mask=inside)
    elif MEASURE == 1:
        first = frame * 3
        value = luma(detail_at(g_ptr, coarse_ptr, first, y, x, h, w, mh, mw, inside),
                     detail_at(g_ptr, coarse_ptr, first + 1, y, x, h, w, mh, mw, inside),
                     detail_at(g_ptr, coarse_ptr, first + 2, y, x, h, w, mh, mw, inside))
        tl.store(out_ptr + frame * h * w + at, value, mask=inside)
    else:
        total = tl.full((BLOCK_H, BLOCK_W), 0.0, tl.float32)
        for c in range(channels):
            total = total + detail_at(g_ptr, coarse_ptr, frame * channels + c, y, x, h, w, mh, mw, inside)
        tl.store(out_ptr + frame * h * w + at, tl.math.div_rn(total, tl.full((BLOCK_H, BLOCK_W), channels, tl.float32)), mask=inside)


def grid(height: int, width: int, planes: int, tile: tuple[int, int]) -> tuple[int, int, int]:
    """The launch grid of a kernel that covers ``planes`` planes of ``height`` x ``width``."""
    return triton.cdiv(height, tile[0]), triton.cdiv(width, tile[1]), planes


def tile_constexprs(tile: tuple[int, int]) -> dict:
    return {"BLOCK_H": tile[0], "BLOCK_W": tile[1]}


def extent(n_out: int, block: int, n_in: int, first: Callable[[int], int], last: Callable[[int], int]) -> int:
    """Input samples read along one side, summed over the tiles of ``block`` outputs:
    a tile of outputs ``s..e`` reads inputs ``first(s)..last(e)`` (clipped to the side;
    reflected indices stay inside that range). The halo each tile re-reads counts."""
    total = 0
    for start in range(0, n_out, block):
        end = min(start + block, n_out) - 1
        total += min(n_in - 1, last(end)) - max(0, first(start)) + 1
    return total


def coarse_extent(height: int, width: int, coarse_height: int, coarse_width: int, tile: tuple[int, int]) -> int:
    """Samples of the coarser plane that ``upsampled`` reads for a plane's tiles."""
    rows = extent(height, tile[0], coarse_height, lambda s: s // 2 - 1, lambda e: e // 2 + 1)
    return rows * extent(width, tile[1], coarse_width, lambda s: s // 2 - 1, lambda e: e // 2 + 1)

def pyr_down_launch(g: torch.Tensor, coarse: torch.Tensor) -> tuple:
    """``(grid, args, constexprs)`` of ``_pyr_down_kernel`` from ``g`` into ``coarse``:
    ``coarse`` with one channel where ``g`` has three is the luminance's level."""
    batch, channels, height, width = g.shape
    luma_of = coarse.shape[1] != channels
    tile = LUMA_TILE if luma_of else TILE
    args = (g, coarse, height, width, *coarse.shape[-2:])
    return grid(*coarse.shape[-2:], batch * coarse.shape[1], tile), args, {"OF_LUMA": luma_of, **tile_constexprs(tile)}


def pyr_down(g: torch.Tensor, of_luma: bool = False) -> torch.Tensor:
    """``filters.pyr_down`` of ``(B, C, H, W)`` float32; with ``of_luma``, of the
    luminance of ``(B, 3, H, W)`` (``pyr_down(luminance(g))``, made in one pass)."""
    g = g.contiguous()
    batch, channels, height, width = g.shape
    coarse = g.new_empty(batch, 1 if of_luma else channels, (height + 1) // 2, (width + 1) // 2)
    launch_grid, args, constexprs = pyr_down_launch(g, coarse)

    def traffic() -> tuple[int, int]:
        tile_h, tile_w = constexprs["BLOCK_H"], constexprs["BLOCK_W"]
        rows = extent(coarse.shape[-2], tile_h, height, lambda s: 2 * s - 2, lambda e: 2 * e + 2)
        columns = extent(coarse.shape[-1], tile_w, width, lambda s: 2 * s - 2, lambda e: 2 * e + 2)
        return 4 * batch * channels * rows * columns, 4 * coarse.numel()

    launch("pyr_down[luma]" if of_luma else "pyr_down", _pyr_down_kernel, launch_grid, args, constexprs, traffic)
    return coarse


def detail_launch(g: torch.Tensor, coarse: torch.Tensor, out: torch.Tensor, measure: int) -> tuple:
    """``(grid, args, constexprs)`` of ``_detail_kernel``."""
    batch, channels, height, width = g.shape
    args = (g, coarse, out, channels, height, width, *coarse.shape[-2:])
    return grid(height, width, batch, TILE), args, {"MEASURE": measure, **tile_constexprs(TILE)}


def detail(g: torch.Tensor, coarse: torch.Tensor, measure: int = DETAIL) -> torch.Tensor:
    """``g - pyr_up(coarse)`` of ``(B, C, H, W)`` float32, or (``LUMA``, ``MEAN``) its measure."""
    g, coarse = g.contiguous(), coarse.contiguous()
    batch, channels, height, width = g.shape
    out = g.new_empty(batch, channels if measure == DETAIL else 1, height, width)
    launch_grid, args, constexprs = detail_launch(g, coarse, out, measure)

    def traffic() -> tuple[int, int]:
        read = g.numel() + batch * channels * coarse_extent(height, width, *coarse.shape[-2:], TILE)
        return 4 * read, 4 * out.numel()

    launch("detail", _detail_kernel, launch_grid, args, constexprs, traffic)
    return out
