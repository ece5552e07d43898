"""Triton version of a level's selection: energy, comparison and update for a whole
chunk of frames in one pass (imported only where Triton runs).

One program covers a tile of one decision plane. For every frame of the chunk, in
order, it filters the squared measure over the window (rows first, then columns,
symmetric taps paired in the torch twin's order), masks unusable coefficients, and
keeps the chunk's winner in registers (strict comparison: ties keep the earlier
frame). Then it compares the chunk's winner with the running state once, and only
where the chunk wins computes the winner's detail coefficients (``g - pyr_up(coarse)``
of that frame, gathered per pixel) and writes them. Per pixel and frame it reads the
measure (4 bytes, the window's halo from cache); per pixel and chunk, the state and the
winner's two Gaussian levels. With ``HALO`` it also runs the halo guard's second winner
(``gpufocus.halo``) on the finest level. Floating-point contraction is off and explicit
``fma`` stands where torch's ``add(alpha=)`` fuses: the twins' results, bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton_pyramid import TILE, coarse_extent, detail_at, extent, grid, reflect, tile_constexprs, upsampled
from .dispatch import launch


#: The column pass's tiles: taller, for fewer re-read rows of its halo.
SQUARES_TILE = (16, 64)


@triton.jit
def _vertical(src, y, x, h, w, taps_ptr, R, inside):
    """The window's vertical sum of squares at ``(y, x)``: t[R] m^2, += (a^2 + b^2) t[k]."""
    mid = tl.load(src + y * w + x, mask=inside, other=0.0)
    acc = (mid * mid) * tl.load(taps_ptr + R)
    for k in range(R):
        a = tl.load(src + reflect(y + k - R, h) * w + x, mask=inside, other=0.0)
        b = tl.load(src + reflect(y + R - k, h) * w + x, mask=inside, other=0.0)
        acc = acc + ((a * a) + (b * b)) * tl.load(taps_ptr + k)
    return acc


@triton.jit
def _horizontal(src, y, x, h, w, taps_ptr, R, inside):
    """The window's horizontal sum of squares at ``(y, x)``."""
    mid = tl.load(src + y * w + x, mask=inside, other=0.0)
    acc = (mid * mid) * tl.load(taps_ptr + R)
    for k in range(R):
        a = tl.load(src + y * w + reflect(x + k - R, w), mask=inside, other=0.0)
        b = tl.load(src + y * w + reflect(x + R - k, w), mask=inside, other=0.0)
        acc = acc + ((a * a) + (b * b)) * tl.load(taps_ptr + k)
    return acc


@triton.jit(do_not_specialize=["h", "w", "R"])
def _squares_kernel(
    measure_ptr, columns_ptr, rows_ptr, taps_ptr, h, w, R,
    HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """The first of the window's two passes, per plane: the squares filtered along
    columns (``correlate1d(squares, taps, -2)``), and with ``HALF`` along rows too."""
    plane = tl.program_id(2).to(tl.int64)
    y = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    x = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    inside = (y < h) & (x < w)
    src = measure_ptr + plane * h * w
    at = plane * h * w + y * w + x
    tl.store(columns_ptr + at, _vertical(src, y, x, h, w, taps_ptr, R, inside), mask=inside)
    if HALF:
        tl.store(rows_ptr + at, _horizontal(src, y, x, h, w, taps_ptr, R, inside), mask=inside)


@triton.jit
def _energies(columns, rows, y, x, h, w, taps_ptr, R, inside, HALF: tl.constexpr):
    """The second pass: the window energy at ``(y, x)`` (``separable_filter`` of the
    squares) from the column sums and, with ``HALF``, the least half-window energy
    (``gpufocus.kernels.window_energies``) from both."""
    t_mid = tl.load(taps_ptr + R)
    centre = tl.load(columns + y * w + x, mask=inside, other=0.0)
    energy = centre * t_mid
    odd = tl.full(energy.shape, 0.0, tl.float32)
    for k in range(R):
        left = tl.load(columns + y * w + reflect(x + k - R, w), mask=inside, other=0.0)
        right = tl.load(columns + y * w + reflect(x + R - k, w), mask=inside, other=0.0)
        energy = energy + (left + right) * tl.load(taps_ptr + k)
        if HALF:  # 0 + the first product is that product: torch's first term, bit for bit
            odd = odd + (left - right) * tl.load(taps_ptr + k)
    if HALF:
        least = tl.fma(centre, t_mid, energy) - tl.abs(odd)
        row = tl.load(rows + y * w + x, mask=inside, other=0.0)
        odd = tl.full(energy.shape, 0.0, tl.float32)
        for k in range(R):
            above = tl.load(rows + reflect(y + k - R, h) * w + x, mask=inside, other=0.0)
            below = tl.load(rows + reflect(y + R - k, h) * w + x, mask=inside, other=0.0)
            odd = odd + (above - below) * tl.load(taps_ptr + k)
        half = tl.fma(row, t_mid, energy) - tl.abs(odd)
        return energy, tl.math.div_rn(tl.minimum(least, half), 1.0 + t_mid)
    return energy, energy


@triton.jit
def _store_winner(
    score_ptr, value_ptr, index_ptr, score, frame, g_ptr, coarse_ptr, at, y, x, h, w, mh, mw, inside,
    first_index, has_state, plane, channels, planes, TRACK: tl.constexpr,
):
    """Fold the chunk's winner (``score``, ``frame``) into the running state at ``at``:
    where it beats the state strictly (or there is none yet), its score, index and
    detail coefficients are written."""
    offset = plane * h * w + at
    stateful = (at * 0 + has_state) != 0  # as a block: a scalar mask is not portable
    kept = tl.load(score_ptr + offset, mask=inside & stateful, other=float("-inf"))
    wins = inside & ((score > kept) | ~stateful)
    tl.store(score_ptr + offset, score, mask=wins)
    if TRACK:
        tl.store(index_ptr + offset, (first_index + frame).to(tl.int32), mask=wins)
    # The winner's coefficients: every channel with one decision plane, else its own.
    lo = tl.where(planes == channels, plane, 0)
    hi = tl.where(planes == channels, plane + 1, channels)
    for c in range(lo, hi):
        value = detail_at(g_ptr, coarse_ptr, frame.to(tl.int64) * channels + c, y, x, h, w, mh, mw, wins)
        tl.store(value_ptr + c * h * w + at, value, mask=wins)


@triton.jit(do_not_specialize=["frames", "channels", "planes", "h", "w", "mh", "mw", "R", "first_index", "has_state",
                             "alt_has_state"])
def _fold_kernel(
    columns_ptr, rows_ptr, g_ptr, coarse_ptr, usable_ptr, taps_ptr, score_ptr, value_ptr, index_ptr, energy_ptr,
    coarse_energy_ptr, alt_score_ptr, alt_value_ptr, alt_index_ptr, own_ptr,
    frames, channels, planes, h, w, mh, mw, R, first_index, has_state, alt_has_state, sharpness, half_share,
    HAS_USABLE: tl.constexpr, TRACK: tl.constexpr, ENERGY_OUT: tl.constexpr, HALO: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    plane = tl.program_id(2).to(tl.int64)
    y = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)[:, None]
    x = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
    inside = (y < h) & (x < w)
    at = y * w + x
    best = tl.full((BLOCK_H, BLOCK_W), float("-inf"), tl.float32)
    best_frame = tl.full((BLOCK_H, BLOCK_W), 0, tl.int32)
    alt = tl.full((BLOCK_H, BLOCK_W), float("-inf"), tl.float32)
    alt_frame = tl.full((BLOCK_H, BLOCK_W), 0, tl.int32)
    alt_own = tl.full((BLOCK_H, BLOCK_W), 0.0, tl.float32)
    for f in range(frames):
        measured = f * planes + plane
        energy, half = _energies(columns_ptr + measured * h * w, rows_ptr + measured * h * w, y, x, h, w, taps_ptr, R,
                                 inside, HALO)
        if ENERGY_OUT:
            tl.store(energy_ptr + measured * h * w + at, energy, mask=inside)
        score = energy
        if HALO:
            # The guard's score and, for its winner, the half energy where the detail is
            # the frame's own (at least ``sharpness`` of the coarser level's energy).
            coarser = upsampled(coarse_energy_ptr + measured * mh * mw, y, x, mh, mw, h, w, inside)
            own = tl.where(energy >= sharpness * coarser, half, -1.0)
            guard = tl.minimum(energy, tl.math.div_rn(half, half_share))
        if HAS_USABLE:
            usable = tl.load(usable_ptr + f * h * w + at, mask=inside, other=0) != 0
            score = tl.where(usable, score, float("-inf"))
            if HALO:
                guard = tl.where(usable, guard, float("-inf"))
        wins = (score > best) | (f == 0)
        best = tl.where(wins, score, best)
        best_frame = tl.where(wins, f, best_frame)
        if HALO:
            alt_wins = (guard > alt) | (f == 0)
            alt = tl.where(alt_wins, guard, alt)
            alt_frame = tl.where(alt_wins, f, alt_frame)
            alt_own = tl.where(alt_wins, own, alt_own)
    _store_winner(score_ptr, value_ptr, index_ptr, best, best_frame, g_ptr, coarse_ptr, at, y, x, h, w, mh, mw,
                  inside, first_index, has_state, plane, channels, planes, TRACK)
    if HALO:
        offset = plane * h * w + at
        stateful = (at * 0 + alt_has_state) != 0
        kept = tl.load(alt_score_ptr + offset, mask=inside & stateful, other=float("-inf"))
        wins = inside & ((alt > kept) | ~stateful)
        tl.store(own_ptr + offset, alt_own, mask=wins)
        _store_winner(alt_score_ptr, alt_value_ptr, alt_index_ptr, alt, alt_frame, g_ptr, coarse_ptr, at, y, x, h,
                      w, mh, mw, inside, first_index, alt_has_state, plane, channels, planes, True)


def squares_launch(measure: torch.Tensor, columns: torch.Tensor, rows: torch.Tensor | None, taps: torch.Tensor) -> tuple:
    """``(grid, args, constexprs)`` of ``_squares_kernel``; ``rows`` only for the halo guard."""
    frames, planes, height, width = measure.shape
    args = (measure, columns, columns if rows is None else rows, taps, height, width, (taps.shape[0] - 1) // 2)
    constexprs = {"HALF": rows is not None, **tile_constexprs(SQUARES_TILE)}
    return grid(height, width, frames * planes, SQUARES_TILE), args, constexprs


def fold_warps(halo: bool) -> int:
    """Warps a ``_fold_kernel`` program: 8 for the halo guard's fold, which keeps two
    winners (with 4, Triton 3.6, the H200's, gave its masked specialization 255 registers
    a thread and a spill to memory; with 8, 128 and none), else 4."""
    return 8 if halo else 4


def fold_launch(
    columns: torch.Tensor, rows: torch.Tensor | None, g: torch.Tensor, coarse: torch.Tensor, taps: torch.Tensor,
    usable: torch.Tensor | None, first_index: int, score: torch.Tensor, value: torch.Tensor, index: torch.Tensor | None,
    has_state: bool, energy_out: torch.Tensor | None = None, halo: dict | None = None,
) -> tuple:
    """``(grid, args, constexprs)`` of ``_fold_kernel`` (see ``fold``); ``taps`` as a tensor."""
    frames, planes, height, width = columns.shape
    h = halo or {}
    any_ = score  # a placeholder for the pointers a specialization does not read
    args = (
        columns, columns if rows is None else rows, g, coarse, any_ if usable is None else usable, taps, score, value,
        any_ if index is None else index, any_ if energy_out is None else energy_out, h.get("coarse_energy", any_),
        h.get("score", any_), h.get("value", any_), h.get("index", any_), h.get("own", any_),
        frames, g.shape[1], planes, height, width, *coarse.shape[-2:], (taps.shape[0] - 1) // 2, first_index,
        int(has_state), int(h.get("has_state", False)), float(h.get("sharpness", 0.0)), float(h.get("half_share", 1.0)),
    )
    constexprs = {
        "HAS_USABLE": usable is not None, "TRACK": index is not None, "ENERGY_OUT": energy_out is not None,
        "HALO": halo is not None, **tile_constexprs(TILE),
    }
    return grid(height, width, planes, TILE), args, constexprs


_TAPS: dict[tuple, torch.Tensor] = {}


def _taps(taps: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """The taps on the device, copied there once."""
    key = (taps, str(device))
    if key not in _TAPS:
        _TAPS[key] = torch.tensor(taps, dtype=torch.float32, device=device)
    return _TAPS[key]


def fold(
    measure: torch.Tensor, g: torch.Tensor, coarse: torch.Tensor, taps: tuple[float, ...], usable: torch.Tensor | None,
    first_index: int, score: torch.Tensor, value: torch.Tensor, index: torch.Tensor | None, has_state: bool,
    energy_out: torch.Tensor | None = None, halo: dict | None = None,
) -> None:
    """Fold a chunk into the running state, in place: the window's column pass (and for
    the halo guard its row pass) over the chunk, then ``_fold_kernel``.

    ``measure`` ``(B, S, H, W)``: what the energy is measured on; ``g``, ``coarse``: the
    frames' Gaussian level and the next, ``(B, C, ...)``; ``usable`` ``(B, 1, H, W)``
    bool or ``None``; the state: ``score`` ``(1, S, H, W)``, ``value`` ``(1, C, H, W)``,
    ``index`` int32 or ``None``; ``energy_out`` ``(B, S, H, W)`` receives the energies.
    ``halo``, for the guard: ``coarse_energy`` (the next level's energies, ``(B, S, mh,
    mw)``), ``score``, ``value``, ``index`` and ``own`` of its winner, ``has_state``,
    ``sharpness`` and ``half_share``.
    """
    weights = _taps(taps, g.device)
    measure = measure.contiguous()
    columns = torch.empty_like(measure)
    rows = torch.empty_like(measure) if halo is not None else None
    frames, planes, height, width = measure.shape
    radius = len(taps) // 2
    # Samples a plane's tiles read with the window's halo: along columns, along rows.
    area = height * width

    def reach(tile: tuple[int, int]) -> tuple[int, int]:
        """Samples a plane's tiles read with the window's halo: along columns, along rows."""
        tall = extent(height, tile[0], height, lambda s: s - radius, lambda e: e + radius) * width
        return tall, height * extent(width, tile[1], width, lambda s: s - radius, lambda e: e + radius)

    def squares_traffic() -> tuple[int, int]:
        tall, wide = reach(SQUARES_TILE)
        read = tall + (wide - area if rows is not None else 0)
        return 4 * frames * planes * read, 4 * frames * planes * area * (1 if rows is None else 2)

    launch_grid, args, constexprs = squares_launch(measure, columns, rows, weights)
    launch("squares", _squares_kernel, launch_grid, args, constexprs, squares_traffic)
    mask = None if usable is None else usable.contiguous().view(torch.uint8)

    def fold_traffic() -> tuple[int, int]:
        tall, wide = reach(TILE)
        coarse_area = coarse_extent(height, width, *coarse.shape[-2:], TILE)
        values = g.shape[1] if planes == 1 else 1  # coefficients a decision plane gives
        per_frame = 4 * wide + (mask is not None) * area + (4 * (tall + coarse_area) if halo else 0)
        winner = 4 * values * (area + coarse_area)  # the winner's detail, made where it wins
        read = frames * per_frame + 4 * area + winner + (4 * area + winner if halo else 0)
        written = (4 * area * (1 + (index is not None) + values) + frames * 4 * area * (energy_out is not None)
                   + (4 * area * (3 + values) if halo else 0))
        return planes * read, planes * written

    launch_grid, args, constexprs = fold_launch(
        columns, rows, g.contiguous(), coarse.contiguous(), weights, mask, first_index, score, value, index,
        has_state, energy_out, halo,
    )
    launch("fold[halo]" if halo else "fold", _fold_kernel, launch_grid, args, constexprs, fold_traffic,
           fold_warps(halo is not None))
