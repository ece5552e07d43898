"""Small batched arithmetic whose result does not depend on the batch, and never waits
for the device.

Alignment estimates every neighbour pair of a chunk at once, and its result must not
depend on the chunk size: library reductions and solvers choose their algorithm (and so
their rounding) by shape, batch included, and ``torch.linalg`` solvers synchronise a
CUDA device with the host. These are written with elementwise operations only: each
batch element gets the same operations in the same order, on any device.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["fixed_sum", "cholesky", "cholesky_solve", "matmul3x3", "inverse3x3"]


def fixed_sum(x: Tensor, dim: int = -1) -> Tensor:
    """Sum over ``dim`` (the last by default) by pairwise halving, in an order fixed by its
    length: the second half is added to the first; of an odd length, the last element is
    set aside and added at the end."""
    dim = dim % x.dim()
    carried, own = None, False
    while x.shape[dim] > 1:
        n = x.shape[dim]
        half = n // 2
        if n % 2:
            last = x.narrow(dim, n - 1, 1)
            carried = last if carried is None else carried + last
        first, second = x.narrow(dim, 0, half), x.narrow(dim, half, half)
        # After the first halving the partial sums are ours: added in place, no new buffers.
        x, own = (first.add_(second) if own else first + second), True
    return (x if carried is None else x + carried).squeeze(dim)


def cholesky(h: Tensor) -> list[list[Tensor | None]]:
    """Cholesky factor of symmetric positive definite ``(B, P, P)`` matrices, as ``L[i][j]``
    (``(B,)`` tensors, ``j <= i``); non-positive pivots are clamped, never an error."""
    size = h.shape[-1]
    lower: list[list[Tensor | None]] = [[None] * size for _ in range(size)]
    for i in range(size):
        for j in range(i + 1):
            s = h[:, i, j]
            for k in range(j):
                s = s - lower[i][k] * lower[j][k]
            lower[i][j] = s.clamp_min(1e-300).sqrt() if i == j else s / lower[j][j]
    return lower


def cholesky_solve(lower: list[list[Tensor | None]], g: Tensor) -> Tensor:
    """``x`` with ``L L^T x = g`` for the factor of ``cholesky``; ``g`` is ``(B, P)``."""
    size = len(lower)
    y: list[Tensor] = []
    for i in range(size):
        s = g[:, i]
        for k in range(i):
            s = s - lower[i][k] * y[k]
        y.append(s / lower[i][i])
    x: list[Tensor | None] = [None] * size
    for i in reversed(range(size)):
        s = y[i]
        for k in range(i + 1, size):
            s = s - lower[k][i] * x[k]
        x[i] = s / lower[i][i]
    return torch.stack(x, -1)


def matmul3x3(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` for ``(..., 3, 3)`` matrices, the three products of each entry added in order."""
    return a[..., :, 0:1] * b[..., 0:1, :] + a[..., :, 1:2] * b[..., 1:2, :] + a[..., :, 2:3] * b[..., 2:3, :]


def inverse3x3(m: Tensor) -> Tensor:
    """Inverse of ``(B, 3, 3)`` matrices by their adjugate."""
    a, b, c, d, e, f, g, h, i = m.reshape(-1, 9).unbind(1)
    co_a, co_b, co_c = e * i - f * h, f * g - d * i, d * h - e * g
    adjugate = torch.stack(
        [co_a, c * h - b * i, b * f - c * e, co_b, a * i - c * g, c * d - a * f, co_c, b * g - a * h, a * e - b * d], -1
    ).view(-1, 3, 3)
    return adjugate / (a * co_a + b * co_b + c * co_c).view(-1, 1, 1)
