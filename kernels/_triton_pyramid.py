"""Triton versions of one Laplacian pyramid level (imported only where Triton runs).

Both kernels repeat the torch twins' arithmetic operation by operation (the same
products, the same pairing and order of additions, reflect borders), and are launched
with floating-point contraction off, so they give the twins' results bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_BLOCK_H, _BLOCK_W = 16, 32


@triton.jit
def _reflect(i, n):
    """Index into a side of n samples, reflected without repeating the edge."""
    i = tl.where(i < 0, -i, i)
    return tl.where(i > n - 1, 2 * (n - 1) - i, i)


@triton.jit
def _pyr_down_kernel(x_ptr, out_ptr, h, w, oh, ow, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    plane = tl.program_id(2)
    oy = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    ox = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    inside = (oy < oh) & (ox < ow)
    src = x_ptr + plane * h * w
    r0, r1, r2 = _reflect(2 * oy - 2, h), _reflect(2 * oy - 1, h), _reflect(2 * oy, h)
    r3, r4 = _reflect(2 * oy + 1, h), _reflect(2 * oy + 2, h)
    # Rows first, then columns, each as c * 6/16 + (a + e) / 16 + (b + d) * 4/16 in that order.
    columns = []
    for j in tl.static_range(5):
        c = _reflect(2 * ox + j - 2, w)
        a = tl.load(src + r0 * w + c, mask=inside, other=0.0)
        b = tl.load(src + r1 * w + c, mask=inside, other=0.0)
        m = tl.load(src + r2 * w + c, mask=inside, other=0.0)
        d = tl.load(src + r3 * w + c, mask=inside, other=0.0)
        e = tl.load(src + r4 * w + c, mask=inside, other=0.0)
        v = m * 0.375
        v = v + (a + e) * 0.0625
        v = v + (b + d) * 0.25
        columns.append(v)
    out = columns[2] * 0.375
    out = out + (columns[0] + columns[4]) * 0.0625
    out = out + (columns[1] + columns[3]) * 0.25
    tl.store(out_ptr + plane * oh * ow + oy * ow + ox, out, mask=inside)


@triton.jit
def _mirror_end(i, m, fine):
    """Coarse index i past the end (i == m): the fine signal's reflection at its end."""
    return tl.where(i > m - 1, tl.where(fine % 2 == 1, m - 2, m - 1), i)


@triton.jit
def _up_columns(src, row, i, odd_x, mw, fw, inside):
    """The coarse row upsampled along columns at fine column 2 i (+1 if odd_x)."""
    left = tl.load(src + row * mw + tl.where(i - 1 < 0, 1, i - 1), mask=inside, other=0.0)
    mid = tl.load(src + row * mw + i, mask=inside, other=0.0)
    right = tl.load(src + row * mw + _mirror_end(i + 1, mw, fw), mask=inside, other=0.0)
    even = (left + right) * 0.125
    even = even + mid * 0.75
    odd = (mid + right) * 0.5
    return tl.where(odd_x, odd, even)


@triton.jit
def _detail_kernel(g_ptr, coarse_ptr, out_ptr, h, w, mh, mw, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """out = g - pyr_up(coarse): columns first, then rows, as the torch twin."""
    plane = tl.program_id(2)
    y = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    x = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    inside = (y < h) & (x < w)
    src = coarse_ptr + plane * mh * mw
    j, i = y // 2, x // 2
    odd_x = x % 2 == 1
    above = _up_columns(src, tl.where(j - 1 < 0, 1, j - 1), i, odd_x, mw, w, inside)
    mid = _up_columns(src, j, i, odd_x, mw, w, inside)
    below = _up_columns(src, _mirror_end(j + 1, mh, h), i, odd_x, mw, w, inside)
    even = (above + below) * 0.125
    even = even + mid * 0.75
    odd = (mid + below) * 0.5
    up = tl.where(y % 2 == 1, odd, even)
    g = tl.load(g_ptr + plane * h * w + y * w + x, mask=inside, other=0.0)
    tl.store(out_ptr + plane * h * w + y * w + x, g - up, mask=inside)


def _grid(height: int, width: int, planes: int) -> tuple[int, int, int]:
    return triton.cdiv(height, _BLOCK_H), triton.cdiv(width, _BLOCK_W), planes


def laplacian_level(g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(g - pyr_up(pyr_down(g)), pyr_down(g))`` for ``(B, C, H, W)`` float32."""
    g = g.contiguous()
    batch, channels, height, width = g.shape
    coarse = g.new_empty(batch, channels, (height + 1) // 2, (width + 1) // 2)
    planes = batch * channels
    _pyr_down_kernel[_grid(*coarse.shape[-2:], planes)](
        g, coarse, height, width, *coarse.shape[-2:], BLOCK_H=_BLOCK_H, BLOCK_W=_BLOCK_W, enable_fp_fusion=False
    )
    detail = torch.empty_like(g)
    _detail_kernel[_grid(height, width, planes)](
        g, coarse, detail, height, width, *coarse.shape[-2:], BLOCK_H=_BLOCK_H, BLOCK_W=_BLOCK_W,
        enable_fp_fusion=False,
    )
    return detail, coarse
