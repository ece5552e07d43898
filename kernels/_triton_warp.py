"""Triton kernel of ``warp.sampling_grid`` (imported only where Triton runs).

- ``_grid_kernel``: a tile of the sampling grid and its coverage, from the 3x3 matrix
  on the device (no read-back): 8 bytes a pixel written for the grid and 1 for the
  coverage. The torch twin's operations in its order, floating-point contraction off,
  divisions rounded as IEEE's (``div_rn``; a plain ``/`` is approximate in Triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_pyramid import grid, tile_constexprs
from .dispatch import launch

#: Output tiles (rows, columns) of one program.
TILE = (8, 64)


@triton.jit
def _plane(m_ptr, row: tl.constexpr, x, y):
    """``matrix[row] @ (x, y, 1)``: ``(m0 x + m1 y) + m2``, as the twin's broadcast sum."""
    return (tl.load(m_ptr + 3 * row) * x + tl.load(m_ptr + 3 * row + 1) * y) + tl.load(m_ptr + 3 * row + 2)


@triton.jit(do_not_specialize=["top", "left", "rows", "columns", "h", "w"])
def _grid_kernel(
    m_ptr, grid_ptr, covered_ptr, top, left, rows, columns, h, w,
    AFFINE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    c = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    inside = (r < rows) & (c < columns)
    y = (top + r).to(tl.float32)
    x = (left + c).to(tl.float32)
    px = _plane(m_ptr, 0, x, y)
    py = _plane(m_ptr, 1, x, y)
    if not AFFINE:
        denominator = _plane(m_ptr, 2, x, y)
        px = tl.math.div_rn(px, denominator)
        py = tl.math.div_rn(py, denominator)
    covered = (px > -0.5) & (px < w - 0.5) & (py > -0.5) & (py < h - 0.5)
    gx = tl.math.div_rn(px, tl.full(px.shape, w - 1, tl.float32)) * 2.0 - 1.0
    gy = tl.math.div_rn(py, tl.full(py.shape, h - 1, tl.float32)) * 2.0 - 1.0
    at = r.to(tl.int64) * columns + c
    tl.store(grid_ptr + 2 * at, gx, mask=inside)
    tl.store(grid_ptr + 2 * at + 1, gy, mask=inside)
    tl.store(covered_ptr + at, covered.to(tl.uint8), mask=inside)


def grid_launch(matrix: torch.Tensor, out: torch.Tensor, covered: torch.Tensor, affine: bool,
                box: tuple[int, int, int, int], size: tuple[int, int]) -> tuple:
    """``(grid, args, constexprs)`` of ``_grid_kernel`` into ``out`` and ``covered``."""
    top, left, rows, columns = box
    args = (matrix, out, covered, top, left, rows, columns, *size)
    return grid(rows, columns, 1, TILE), args, {"AFFINE": affine, **tile_constexprs(TILE)}


def sampling_grid(
    matrix: torch.Tensor, affine: bool, box: tuple[int, int, int, int], size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``warp.sampling_grid`` of a float32 ``(3, 3)`` matrix on the device."""
    matrix = matrix.contiguous()
    rows, columns = box[2:]
    out = torch.empty(rows, columns, 2, dtype=torch.float32, device=matrix.device)
    covered = torch.empty(rows, columns, dtype=torch.uint8, device=matrix.device)
    launch_grid, args, constexprs = grid_launch(matrix, out, covered, affine, box, size)

    def traffic() -> tuple[int, int]:
        programs = launch_grid[0] * launch_grid[1]
        return 4 * 9 * programs, out.numel() * 4 + covered.numel()

    launch("sampling_grid", _grid_kernel, launch_grid, args, constexprs, traffic)
    return out, covered.view(torch.bool)
