"""Where an aligned frame samples its source: the sampling grid of a projective
transform, and which of its pixels fall on the frame."""

from __future__ import annotations

import torch
from torch import Tensor

from .dispatch import triton_or_torch, use_triton

__all__ = ["sampling_grid"]


def sampling_grid(
    matrix: Tensor, affine: bool, box: tuple[int, int, int, int], size: tuple[int, int]
) -> tuple[Tensor, Tensor]:
    """The source position ``matrix @ (x, y, 1)`` of every pixel ``(x, y)`` of ``box``
    (divided by its third coordinate unless ``affine``), as ``grid_sample``'s normalised
    coordinates (``align_corners=True``) on a frame of ``size``, and whether it falls on
    the frame (its centre on one of the frame's pixel areas).

    The Triton version computes both as it writes them (9 bytes a pixel, where the torch
    operations write and read the coordinates a dozen times over), with the same
    operations in the same order: the same numbers.

    Args:
        matrix: the pixel-coordinate transform, float32, on the frames' device.
        affine: its last row is ``(0, 0, 1)`` (no division).
        box: ``(top, left, rows, columns)``, the pixels wanted.
        size: ``(height, width)`` of the frame sampled.

    Shape:
        - matrix: ``(3, 3)``
        - output: grid ``(rows, columns, 2)`` float32 (x, y), covered ``(rows, columns)`` bool.
    """
    top, left, rows, columns = box
    height, width = size

    def twin() -> tuple[Tensor, Tensor]:
        ys = torch.arange(top, top + rows, device=matrix.device, dtype=torch.float32)
        xs = torch.arange(left, left + columns, device=matrix.device, dtype=torch.float32)

        def plane(row: int) -> Tensor:  # matrix[row] @ (x, y, 1) on the grid, a product per row and column
            return (matrix[row, 0] * xs)[None, :] + (matrix[row, 1] * ys)[:, None] + matrix[row, 2]

        px, py = plane(0), plane(1)
        if not affine:
            denominator = plane(2)
            px, py = px / denominator, py / denominator
        covered = (px > -0.5) & (px < width - 0.5) & (py > -0.5) & (py < height - 0.5)
        return torch.stack((px / (width - 1) * 2 - 1, py / (height - 1) * 2 - 1), dim=-1), covered

    if use_triton(matrix):
        from . import _triton_warp as fused

        return triton_or_torch("sampling_grid", lambda: fused.sampling_grid(matrix, affine, box, size), twin)
    return twin()
