"""Gaussian and Laplacian pyramids of any size, with exact collapse.

Burt & Adelson's pyramid with the 5-tap binomial kernel ``[1, 4, 6, 4, 1] / 16``:
``pyr_down`` blurs and keeps every second sample (OpenCV's rounding: a side of
``n`` becomes ``ceil(n / 2)``), ``pyr_up`` is the matching interpolation to any
requested size. Borders reflect without repeating the edge sample (OpenCV's
``BORDER_REFLECT_101``, kornia's ``'reflect'``).

Why not ``kornia.geometry.transform.build_laplacian_pyramid``: it pads every level
to the next power of two (6000x4000 becomes 8192x4096), its ``pyrdown`` averages
2x2 blocks instead of decimating, odd sizes do not round-trip through its ``pyrup``,
and it has no collapse. The filters here are written as sums of shifted slices:
every output element is computed by the same additions and multiplications
whatever the batch size, so results do not depend on how frames are chunked
(convolution back-ends choose their algorithm by shape), and on the CPU this runs
several times faster than a depthwise convolution.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "MIN_LEVEL_SIDE",
    "max_levels",
    "auto_levels",
    "level_sizes",
    "reflect_pad",
    "correlate1d",
    "separable_filter",
    "binomial_taps",
    "check_levels",
    "pyr_down",
    "pyr_up",
    "build_gaussian_pyramid",
    "build_laplacian_pyramid",
    "collapse_laplacian_pyramid",
]

#: The smallest side a level may have before it is reduced again.
MIN_LEVEL_SIDE = 8

#: The coarsest level that ``auto_levels`` aims for, in pixels along the shorter side.
_AUTO_COARSEST_SIDE = 32
#: More levels than this add nothing visible and only cost time.
_AUTO_MAX_LEVELS = 8


def max_levels(height: int, width: int) -> int:
    """The deepest pyramid an image of this size supports.

    A level is reduced only while its shorter side is at least ``MIN_LEVEL_SIDE``.

    Args:
        height: image height in pixels.
        width: image width in pixels.

    Returns:
        The number of detail levels, 0 for images too small for any.
    """
    levels, side = 0, min(height, width)
    while side >= MIN_LEVEL_SIDE:
        side = (side + 1) // 2
        levels += 1
    return levels


def auto_levels(height: int, width: int) -> int:
    """The default number of detail levels for an image of this size.

    Deep enough that the coarsest level is about ``_AUTO_COARSEST_SIDE`` pixels on its
    shorter side, so that the widest blur in a stack is still resolved by some level,
    but no deeper than ``max_levels`` allows and at most ``_AUTO_MAX_LEVELS``.
    """
    wanted = max(1, math.ceil(math.log2(max(min(height, width), 1) / _AUTO_COARSEST_SIDE)))
    return max(0, min(wanted, _AUTO_MAX_LEVELS, max_levels(height, width)))


def level_sizes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    """Sizes of the Gaussian levels 0..levels (level 0 is the image itself)."""
    sizes = [(height, width)]
    for _ in range(levels):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def reflect_pad(x: Tensor, dim: int, before: int, after: int) -> Tensor:
    """Pad ``x`` along ``dim`` by reflection without repeating the edge sample.

    ``torch.nn.functional.pad(mode='reflect')`` pads two dimensions at once and is
    several times slower on the CPU than this concatenation of two thin slices.
    """
    n = x.shape[dim]
    if before >= n or after >= n:
        raise ValueError(f"cannot reflect-pad a side of {n} by {max(before, after)}")
    parts = []
    if before:
        parts.append(x.narrow(dim, 1, before).flip(dim))
    parts.append(x)
    if after:
        parts.append(x.narrow(dim, n - 1 - after, after).flip(dim))
    return torch.cat(parts, dim) if len(parts) > 1 else x


def correlate1d(x: Tensor, taps: tuple[float, ...], dim: int, stride: int = 1) -> Tensor:
    """Correlate ``x`` along ``dim`` with a symmetric odd-length filter, reflect borders.

    Args:
        x: tensor of any shape.
        taps: filter weights, odd length, symmetric (``taps[i] == taps[-1 - i]``).
        dim: the dimension to filter.
        stride: keep every ``stride``-th output sample, starting with the first.

    Returns:
        The filtered tensor; along ``dim`` it has ``ceil(n / stride)`` samples.
    """
    dim = dim % x.dim()
    radius = len(taps) // 2
    n = x.shape[dim]
    out_n = -(-n // stride)
    # Outputs whose window lies inside x are computed from x itself; only the few
    # at each border see a padded copy. Padding all of x would copy every sample.
    first = -(-radius // stride)
    last = (n - 1 - radius) // stride
    beyond = (out_n - 1) * stride + radius - (n - 1)  # samples needed past the end
    if last - first < 2:
        return _correlate_valid(reflect_pad(x, dim, radius, beyond), taps, dim, stride, out_n)
    out = x.new_empty(x.shape[:dim] + (out_n,) + x.shape[dim + 1 :])
    inner = x.narrow(dim, first * stride - radius, (last - first) * stride + 2 * radius + 1)
    _correlate_valid(inner, taps, dim, stride, last - first + 1, out=out.narrow(dim, first, last - first + 1))
    if first > 0:
        head = reflect_pad(x.narrow(dim, 0, (first - 1) * stride + radius + 1), dim, radius, 0)
        _correlate_valid(head, taps, dim, stride, first, out=out.narrow(dim, 0, first))
    if last < out_n - 1:
        start = (last + 1) * stride - radius
        tail = reflect_pad(x.narrow(dim, start, n - start), dim, 0, beyond)
        _correlate_valid(tail, taps, dim, stride, out_n - 1 - last, out=out.narrow(dim, last + 1, out_n - 1 - last))
    return out


def binomial_taps(size: int) -> tuple[float, ...]:
    """The normalised binomial filter of ``size`` taps (odd): a smooth local window."""
    row = [math.comb(size - 1, k) for k in range(size)]
    return tuple(w / sum(row) for w in row)


def separable_filter(x: Tensor, taps: tuple[float, ...]) -> Tensor:
    """Filter the last two dimensions with ``taps`` along each (rows first), reflect borders."""
    return correlate1d(correlate1d(x, taps, dim=-2), taps, dim=-1)


def _correlate_valid(
    x: Tensor, taps: tuple[float, ...], dim: int, stride: int, count: int, out: Tensor | None = None
) -> Tensor:
    """``out[i] = sum_k taps[k] * x[i * stride + k]`` for ``i < count`` (no padding)."""
    radius = len(taps) // 2
    span = (count - 1) * stride + 1

    def tap(k: int) -> Tensor:
        return x.narrow(dim, k, span)[_every(dim, stride, x.dim())]

    # Symmetric taps: add the mirrored pair before multiplying (half the products).
    acc = torch.mul(tap(radius), taps[radius], out=out) if out is not None else tap(radius) * taps[radius]
    for k in range(radius):
        acc += torch.add(tap(k), tap(len(taps) - 1 - k)).mul_(taps[k])
    return acc


def _every(dim: int, stride: int, ndim: int) -> tuple:
    index = [slice(None)] * ndim
    index[dim] = slice(None, None, stride)
    return tuple(index)


_BINOMIAL5 = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)


def pyr_down(x: Tensor) -> Tensor:
    """Blur with the 5-tap binomial kernel and keep every second row and column.

    Args:
        x: images, shape ``(B, C, H, W)``, floating point, ``H, W >= 3``.

    Returns:
        Shape ``(B, C, ceil(H / 2), ceil(W / 2))``.
    """
    # Rows first: the column pass then runs on half the data.
    return correlate1d(correlate1d(x, _BINOMIAL5, dim=-2, stride=2), _BINOMIAL5, dim=-1, stride=2)


def _upsample1d(x: Tensor, dim: int, size: int) -> Tensor:
    """Twice-denser samples along ``dim``: zero insertion plus the binomial blur (x2).

    Polyphase form of the interpolation filter ``[1, 4, 6, 4, 1] / 8``: samples on the
    coarse grid get ``(c[i-1] + 6 c[i] + c[i+1]) / 8``, those between two coarse samples
    ``(c[i] + c[i+1]) / 2``. The border continues the fine signal by reflection: for an
    odd ``size`` the last fine sample sits on the coarse grid, for an even one it does not.
    """
    dim = dim % x.dim()
    m = x.shape[dim]
    if size not in (2 * m, 2 * m - 1) or m < 2:
        raise ValueError(f"cannot upsample {m} samples to {size}")
    # Write both phases straight into the output, seen as (..., m, 2, ...).
    out = x.new_empty(x.shape[:dim] + (m, 2) + x.shape[dim + 1 :])
    even, odd = out.select(dim + 1, 0), out.select(dim + 1, 1)

    def part(t: Tensor, start: int, length: int) -> Tensor:
        return t.narrow(dim, start, length)

    # Even samples: the edges mirror their inner neighbour, c[-1] = c[1] and (odd size)
    # c[m] = c[m-2]; for an even size the last coarse sample has its own mirror, c[m] = c[m-1].
    inner = torch.add(part(x, 0, m - 2), part(x, 2, m - 2), out=part(even, 1, m - 2)).mul_(1 / 8)
    inner += part(x, 1, m - 2) * (6 / 8)
    torch.add(part(x, 1, 1) * (2 / 8), part(x, 0, 1) * (6 / 8), out=part(even, 0, 1))
    last_mirror = part(x, m - 2, 1) if size % 2 else part(x, m - 1, 1)
    torch.add(part(x, m - 2, 1) + last_mirror, part(x, m - 1, 1) * 6, out=part(even, m - 1, 1)).mul_(1 / 8)
    # Odd samples: between neighbours; the last one (even size only) reaches the mirror.
    torch.add(part(x, 0, m - 1), part(x, 1, m - 1), out=part(odd, 0, m - 1)).mul_(0.5)
    torch.add(part(x, m - 1, 1), last_mirror, out=part(odd, m - 1, 1)).mul_(0.5)
    return out.flatten(dim, dim + 1).narrow(dim, 0, size)


def pyr_up(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Interpolate to ``size``, the inverse step of ``pyr_down`` in a Laplacian pyramid.

    Args:
        x: images, shape ``(B, C, h, w)``.
        size: ``(H, W)`` with ``h == ceil(H / 2)`` and ``w == ceil(W / 2)``.

    Returns:
        Shape ``(B, C, H, W)``.
    """
    # Columns first: the rows pass, which writes whole rows, then runs on the larger data.
    return _upsample1d(_upsample1d(x, -1, size[1]), -2, size[0])


def build_gaussian_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """Levels ``0..levels`` of the Gaussian pyramid; level 0 is ``x`` itself.

    Shape:
        - x: ``(B, C, H, W)``
        - level ``l``: ``(B, C, H_l, W_l)`` with ``H_l = ceil(H_{l-1} / 2)``.
    """
    check_levels(x, levels)
    pyramid = [x]
    for _ in range(levels):
        pyramid.append(pyr_down(pyramid[-1]))
    return pyramid


def build_laplacian_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """Detail levels ``0..levels-1`` followed by the Gaussian residual (``levels + 1`` tensors).

    Args:
        x: images, shape ``(B, C, H, W)``, floating point.
        levels: number of detail levels, at most ``max_levels(H, W)``.

    Returns:
        ``[L_0, ..., L_{levels-1}, G_levels]`` with ``L_l = G_l - pyr_up(G_{l+1})``.
    """
    gaussian = build_gaussian_pyramid(x, levels)
    laplacian = [g - pyr_up(g_next, g.shape[-2:]) for g, g_next in zip(gaussian, gaussian[1:])]
    laplacian.append(gaussian[-1])
    return laplacian


def collapse_laplacian_pyramid(pyramid: list[Tensor]) -> Tensor:
    """Rebuild the image from ``build_laplacian_pyramid``'s output.

    Exact up to float rounding: each step adds back precisely what was subtracted.
    """
    image = pyramid[-1]
    for detail in reversed(pyramid[:-1]):
        image = pyr_up(image, detail.shape[-2:]).add_(detail)
    return image


def check_levels(x: Tensor, levels: int) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(B, C, H, W)`` and deep enough for ``levels``."""
    if x.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    deepest = max_levels(h, w)
    if not 0 <= levels <= deepest:
        raise ValueError(f"{levels} pyramid levels do not fit {w}x{h} images (at most {deepest})")
