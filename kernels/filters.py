"""The separable filters every pyramid is made of, as torch references of the kernels.

Written as sums of shifted slices rather than convolutions: every output element is
computed by the same additions and multiplications whatever the batch size, so results
do not depend on how frames are chunked (convolution back-ends choose their algorithm
by shape), and on the CPU this runs several times faster than a depthwise convolution.
Borders reflect without repeating the edge sample (OpenCV's ``BORDER_REFLECT_101``,
kornia's ``'reflect'``). The Triton kernels repeat this arithmetic operation by operation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["reflect_pad", "reflect_index", "correlate1d", "binomial_taps", "separable_filter", "pyr_down", "pyr_up"]


def reflect_pad(x: Tensor, dim: int, before: int, after: int) -> Tensor:
    """Pad ``x`` along ``dim`` by reflection without repeating the edge sample.

    ``torch.nn.functional.pad(mode='reflect')`` pads two dimensions at once and is
    several times slower on the CPU than this concatenation of two thin slices.
    """
    n = x.shape[dim]
    if before >= n or after >= n:  # a side shorter than the padding: mirror as often as needed
        return x.index_select(dim, reflect_index(torch.arange(-before, n + after, device=x.device), n))
    parts = []
    if before:
        parts.append(x.narrow(dim, 1, before).flip(dim))
    parts.append(x)
    if after:
        parts.append(x.narrow(dim, n - 1 - after, after).flip(dim))
    return torch.cat(parts, dim) if len(parts) > 1 else x


def reflect_index(i: Tensor, n: int) -> Tensor:
    """Indices ``i`` into a side of ``n`` samples, mirrored at both ends without repeating
    the edge sample, as often as needed (a side of 1 maps everything to 0)."""
    period = max(2 * n - 2, 1)
    i = i.remainder(period)
    return torch.where(i > n - 1, period - i, i)


def correlate1d(x: Tensor, taps: tuple[float, ...], dim: int, stride: int = 1, odd: bool = False) -> Tensor:
    """Correlate ``x`` along ``dim`` with a symmetric odd-length filter, reflect borders.

    Args:
        x: tensor of any shape.
        taps: filter weights, odd length, symmetric (``taps[i] == taps[-1 - i]``).
        dim: the dimension to filter.
        stride: keep every ``stride``-th output sample, starting with the first.
        odd: correlate with the antisymmetric filter instead: ``taps`` before the
            centre, their negatives after it, nothing at the centre.

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
        return _correlate_valid(reflect_pad(x, dim, radius, beyond), taps, dim, stride, out_n, odd=odd)
    out = x.new_empty(x.shape[:dim] + (out_n,) + x.shape[dim + 1 :])
    inner = x.narrow(dim, first * stride - radius, (last - first) * stride + 2 * radius + 1)
    _correlate_valid(inner, taps, dim, stride, last - first + 1, out=out.narrow(dim, first, last - first + 1), odd=odd)
    if first > 0:
        head = reflect_pad(x.narrow(dim, 0, (first - 1) * stride + radius + 1), dim, radius, 0)
        _correlate_valid(head, taps, dim, stride, first, out=out.narrow(dim, 0, first), odd=odd)
    if last < out_n - 1:
        start = (last + 1) * stride - radius
        tail = reflect_pad(x.narrow(dim, start, n - start), dim, 0, beyond)
        _correlate_valid(
            tail, taps, dim, stride, out_n - 1 - last, out=out.narrow(dim, last + 1, out_n - 1 - last), odd=odd
        )
    return out


def binomial_taps(size: int) -> tuple[float, ...]:
    """The normalised binomial filter of ``size`` taps (odd): a smooth local window."""
    row = [math.comb(size - 1, k) for k in range(size)]
    return tuple(w / sum(row) for w in row)


def separable_filter(x: Tensor, taps: tuple[float, ...]) -> Tensor:
    """Filter the last two dimensions with ``taps`` along each (rows first), reflect borders."""
    return correlate1d(correlate1d(x, taps, dim=-2), taps, dim=-1)


def _correlate_valid(
    x: Tensor, taps: tuple[float, ...], dim: int, stride: int, count: int, out: Tensor | None = None, odd: bool = False
) -> Tensor:
    """``out[i] = sum_k taps[k] * x[i * stride + k]`` for ``i < count`` (no padding); with
    ``odd``, the taps after the centre negated and the centre's left out."""
    radius = len(taps) // 2
    span = (count - 1) * stride + 1

    every = _every(dim, stride, x.dim()) if stride > 1 else None

    def tap(k: int) -> Tensor:
        window = x.narrow(dim, k, span)
        return window if every is None else window[every]

    # Symmetric taps: add the mirrored pair before multiplying (half the products).
    pair = torch.sub if odd else torch.add
    if odd:  # no centre tap: start from the outermost pair
        acc = torch.mul(pair(tap(0), tap(len(taps) - 1)), taps[0], out=out)
        pairs = range(1, radius)
    else:
        acc = torch.mul(tap(radius), taps[radius], out=out) if out is not None else tap(radius) * taps[radius]
        pairs = range(radius)
    for k in pairs:
        acc += pair(tap(k), tap(len(taps) - 1 - k)).mul_(taps[k])
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
    if size not in (2 * m, 2 * m - 1):
        raise ValueError(f"cannot upsample {m} samples to {size}")
    if m < 2:  # one coarse sample: its mirrors are itself, as in the Triton kernel
        even = (x + x) * 0.125 + x * 0.75
        return torch.cat([even, (x + x) * 0.5], dim).narrow(dim, 0, size)
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
