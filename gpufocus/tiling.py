"""Cutting frames into overlapping tiles that fuse exactly as the whole frame does.

Every output pixel of the fusion depends only on the frames within a limited reach:
the pyramid's filters, the energy window and the collapse, each scaled by the level's
spacing. A tile fused with a margin wider than that reach, starting on the coarsest
level's grid (a multiple of 2**levels, so every level decimates the same samples),
gives the whole frame's result in its core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Tile", "tile_margin", "plan_tiles", "auto_tile"]


@dataclass(frozen=True)
class Tile:
    """``core`` is written to the result, ``padded`` is fused; both ``(top, left, height, width)``."""

    core: tuple[int, int, int, int]
    padded: tuple[int, int, int, int]

    def core_in_padded(self) -> tuple[slice, slice]:
        """Where the core lies inside the fused (padded) tile."""
        top, left, height, width = self.core
        return (slice(top - self.padded[0], top - self.padded[0] + height),
                slice(left - self.padded[1], left - self.padded[1] + width))


def tile_margin(levels: int, kernel_size: int) -> int:
    """Overlap, in pixels, that covers a pixel's reach through ``levels`` levels.

    At level l a coefficient sees about ``2**(l + 1)`` pixels through the pyramid's
    filters, ``kernel_size // 2 * 2**l`` through the energy window and ``2**l`` more
    through the collapse; the deepest level dominates. Two spare coarse samples on top.
    """
    return 2**levels * (kernel_size // 2 + 4)


def plan_tiles(height: int, width: int, tile: int, levels: int, kernel_size: int) -> list[Tile]:
    """Tiles of about ``tile`` pixels a side (rounded up to the coarsest grid) covering the frame."""
    grid = 2**levels
    step = max(grid, math.ceil(tile / grid) * grid)
    margin = tile_margin(levels, kernel_size)
    tiles = []
    for top in range(0, height, step):
        for left in range(0, width, step):
            core = (top, left, min(step, height - top), min(step, width - left))
            padded_top, padded_left = max(0, top - margin), max(0, left - margin)
            padded_bottom = min(height, top + core[2] + margin)
            padded_right = min(width, left + core[3] + margin)
            tiles.append(Tile(core, (padded_top, padded_left, padded_bottom - padded_top, padded_right - padded_left)))
    return tiles


def auto_tile(
    budget: int, channels: int, height: int, width: int, bytes_per_sample: int, margin: int, result_bytes: int,
    one_at_a_time: int | None = None,
) -> int | None:
    """The tile side that keeps one frame's working memory within ``budget``, or ``None``
    when the whole frame fits, or when tiles would take more memory than they save.

    ``bytes_per_sample`` is the working memory per float sample of a frame in flight;
    ``result_bytes`` the running result's per pixel, where every tile keeps it for its
    padded area at once (tiles fused side by side, as frames stream past): with margins
    of hundreds of pixels (``tile_margin``) the tiles' results together can outweigh
    the one frame's working memory they save.

    ``one_at_a_time``: where tiles are fused one after the other (``StackFuser.run``),
    the memory one tile may take, its frame in flight and its running result together.
    The tile is then as large as that allows, its core at least half the margin: a core
    of half the margin makes 25 times the frame's area to fuse, one as wide as the
    margin 9 times, so narrower cores cost time out of all proportion.
    """
    work = channels * bytes_per_sample
    if height * width * work <= budget:
        return None
    if one_at_a_time is not None:
        return max(int(math.sqrt(one_at_a_time / (work + result_bytes))) - 2 * margin, margin // 2)
    side = max(int(math.sqrt(budget / work)) - 2 * margin, margin)  # a core as wide as the margin, at least
    rows = [min(height, top + side + margin) - max(0, top - margin) for top in range(0, height, side)]
    columns = [min(width, left + side + margin) - max(0, left - margin) for left in range(0, width, side)]
    tiled = sum(rows) * sum(columns) * result_bytes + max(rows) * max(columns) * work
    return side if tiled < height * width * (result_bytes + work) else None
