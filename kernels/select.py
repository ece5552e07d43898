"""Fold a chunk of candidates into a running per-element maximum.

This is the innermost step of every selection rule, run once per pyramid level and
chunk of frames. The torch code here is the reference; the Triton kernels
(``_triton_select``) give the same result, bit for bit, in one launch per chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .dispatch import triton_or_torch, use_triton
from .filters import correlate1d, pyr_up, separable_filter

__all__ = ["RunningMax", "Level", "fold_max", "mask_unusable", "energy_fold", "window_energies", "halo_fold"]


@dataclass
class RunningMax:
    """Per element: the best score so far, the value that came with it and its frame.

    Shape:
        - score: ``(1, S, H, W)``, ``S`` is 1 (one decision for all channels) or ``C``.
        - value: ``(1, C, H, W)``, or ``None`` where only the winner's index is wanted.
        - index: ``(1, S, H, W)``, int32, the winning frame's index in the stack, or
          ``None`` where it is not wanted.
    """

    score: Tensor
    value: Tensor | None
    index: Tensor | None


@dataclass
class Level:
    """One pyramid level of a chunk of ``B`` frames, as a selection step reads it.

    The Triton path reads the two Gaussian levels and the measure; the torch twin the
    measure and the detail. Both are asked for only when needed, so that a path that
    does not read the detail of every channel never makes it.

    Shape:
        - gaussian: ``(B, C, H, W)``; coarser: ``(B, C, ceil(H/2), ceil(W/2))``.
        - measured(): ``(B, S, H, W)``, ``S`` is 1 or ``C``; detail(): ``(B, C, H, W)``.
    """

    gaussian: Tensor
    coarser: Tensor
    measured: Callable[[], Tensor]
    detail: Callable[[], Tensor]


def fold_max(
    state: RunningMax | None, score: Tensor, value: Tensor | None, first_index: int, track_index: bool = False
) -> RunningMax:
    """Keep, per element, the value whose score is the largest seen so far.

    The chunk's frames are compared with each other, then with the running state.
    Ties go to the lowest frame index: ``max`` returns the first maximum within a
    chunk and the state gives way only to a strictly larger score, so the result does
    not depend on how the stack is cut into chunks.

    Args:
        state: the running state, ``None`` before the first chunk. Updated in place.
        score: the chunk's scores, ``(B, S, H, W)``.
        value: the chunk's values, ``(B, C, H, W)`` with ``S`` in ``(1, C)``, or ``None``.
        first_index: the stack index of the chunk's first frame.
        track_index: keep the winning frame's index too (it costs one more pass).

    Returns:
        The updated state.
    """
    if score.shape[0] > 1 and score.device.type == "cpu":
        # One frame at a time: on the CPU a gather costs more than the comparisons it
        # saves (chunks there are 2 frames); the winners are the same.
        for k in range(score.shape[0]):
            one = None if value is None else value[k : k + 1]
            state = fold_max(state, score[k : k + 1], one, first_index + k, track_index)
        return state
    chunk_index = None
    if score.shape[0] == 1:
        chunk_score, chunk_value = score, value
        if track_index:
            chunk_index = torch.full_like(score, first_index, dtype=torch.int32)
    else:
        chunk_score, where_max = score.max(dim=0, keepdim=True)
        chunk_value = None if value is None else value.gather(0, where_max.expand(1, *value.shape[1:]))
        if track_index:
            chunk_index = where_max.to(torch.int32).add_(first_index)
    if state is None:
        # Own the memory: the chunk's tensors may be views into a larger batch.
        return RunningMax(chunk_score.clone(), None if value is None else chunk_value.clone(), chunk_index)
    wins = chunk_score > state.score
    if value is not None:
        torch.where(wins, chunk_value, state.value, out=state.value)
    if track_index:
        torch.where(wins, chunk_index, state.index, out=state.index)
    torch.where(wins, chunk_score, state.score, out=state.score)
    return state


def mask_unusable(score: Tensor, usable: Tensor | None) -> Tensor:
    """Scores of coefficients that see invalid pixels become -inf: they never win."""
    return score if usable is None else score.masked_fill(~usable, float("-inf"))


def energy_fold(
    state: RunningMax | None,
    level: Level,
    taps: tuple[float, ...],
    usable: Tensor | None,
    first_index: int,
    track_index: bool = False,
    keep_energy: bool = False,
) -> tuple[RunningMax, Tensor | None]:
    """The selection step of an energy rule: local energy, compare, keep the winner.

    The energy of a coefficient is its ``measured`` value squared, filtered with ``taps``
    along rows and columns (reflect borders); scores of coefficients that are not
    ``usable`` are -inf; the winner gives its ``detail`` coefficients.

    Args:
        state: as for ``fold_max``.
        level: the chunk's level.
        taps: odd, symmetric filter taps.
        usable: ``(B, 1, H, W)`` bool, or ``None`` for all.
        first_index: the stack index of the chunk's first frame.
        track_index: keep the winners' index too.
        keep_energy: also return the energies (before masking), ``(B, S, H, W)``.

    Returns:
        The updated state, and the energies or ``None``. The Triton version runs energy,
        comparison and update for the whole chunk in one pass, and makes the winners'
        coefficients only where they win; the result is the twin's, bit for bit.
    """

    def twin() -> tuple[RunningMax, Tensor | None]:
        measured = level.measured()
        energy = separable_filter(measured * measured, taps)
        return (fold_max(state, mask_unusable(energy, usable), level.detail(), first_index, track_index),
                energy if keep_energy else None)

    if not use_triton(level.gaussian):
        return twin()

    def fused() -> tuple[RunningMax, Tensor | None]:
        from . import _triton_select

        measured = level.measured()
        new = _new_state(state, measured, level.gaussian, track_index)
        energy = torch.empty_like(measured) if keep_energy else None
        _triton_select.fold(measured, level.gaussian, level.coarser, taps, usable, first_index, new.score, new.value,
                            new.index, state is not None, energy)
        return new, energy

    return triton_or_torch("fold", fused, twin)


def _new_state(state: RunningMax | None, measured: Tensor, gaussian: Tensor, track_index: bool) -> RunningMax:
    """``state``, or an empty one for the kernel's first chunk (it writes every element)."""
    if state is not None:
        return state
    planes, (height, width) = measured.shape[1], measured.shape[-2:]
    return RunningMax(
        measured.new_empty(1, planes, height, width),
        gaussian.new_empty(1, gaussian.shape[1], height, width),
        measured.new_empty(1, planes, height, width, dtype=torch.int32) if track_index else None,
    )


def window_energies(squares: Tensor, taps: tuple[float, ...]) -> tuple[Tensor, Tensor]:
    """The mean of ``squares`` over the window ``taps`` x ``taps`` (``separable_filter``,
    the same arithmetic), and the least of its four half-window means: the window with
    the rows above or below, or the columns left or right of the centre cut off (the
    centre line kept, each half renormalised). Reflect borders.

    A half is the full window plus or minus its antisymmetric part, so the least of two
    opposite halves is ``(full + t * centre line - |antisymmetric part|) / (1 + t)``
    with ``t`` the centre tap: one more pass per direction instead of two.

    Shape:
        - squares: ``(B, S, h, w)``; both results are the same.
    """
    centre = taps[len(taps) // 2]
    columns = correlate1d(squares, taps, -2)
    energy = correlate1d(columns, taps, -1)
    # Left and right halves first, then up and down: one filtered copy alive at a time.
    least = torch.add(energy, columns, alpha=centre).sub_(correlate1d(columns, taps, -1, odd=True).abs_())
    del columns
    rows = correlate1d(squares, taps, -1)
    half = torch.add(energy, rows, alpha=centre).sub_(correlate1d(rows, taps, -2, odd=True).abs_())
    del rows
    return energy, torch.minimum(least, half, out=least).div_(1 + centre)


def halo_fold(
    best: RunningMax | None,
    alternative: RunningMax | None,
    own: RunningMax | None,
    level: Level,
    coarse_energy: Tensor,
    taps: tuple[float, ...],
    usable: Tensor | None,
    first_index: int,
    sharpness: float,
    half_share: float,
) -> tuple[RunningMax, RunningMax, RunningMax]:
    """The finest level's selection with the halo guard's second winner
    (``gpufocus.halo``), for a chunk.

    Per frame: ``energy`` and ``half`` = ``window_energies`` of the measure squared;
    ``best`` (with its index) folds ``energy``; ``alternative`` (with its index) folds
    ``min(energy, half / half_share)``, and ``own`` the same winners' ``half`` where
    ``energy`` is at least ``sharpness`` times ``pyr_up(coarse_energy)``, else -1.
    Unusable coefficients score -inf in both.

    Args:
        coarse_energy: the next level's energies (``energy_fold(keep_energy=True)``),
            ``(B, S, ceil(H/2), ceil(W/2))``.

    Returns:
        The three states, updated.
    """

    def twin() -> tuple[RunningMax, RunningMax, RunningMax]:
        nonlocal best, alternative, own
        if own is not None and own.score is alternative.score:  # the kernel's states, shared: each its own here
            own = RunningMax(own.score.clone(), own.value, None)
        measured, coefficients = level.measured(), level.detail()
        for k in range(measured.shape[0]):  # a frame at a time: the temporaries are whole planes
            one, index = slice(k, k + 1), first_index + k
            usable_one = None if usable is None else usable[one]
            energy, half = window_energies(measured[one] * measured[one], taps)
            best = fold_max(best, mask_unusable(energy, usable_one), coefficients[one], index, True)
            coarser = pyr_up(coarse_energy[one], energy.shape[-2:])
            kept = torch.where(energy >= sharpness * coarser, half, -1.0)
            score = mask_unusable(torch.minimum(energy, half / half_share), usable_one)
            alternative = fold_max(alternative, score, coefficients[one], index, track_index=True)
            own = fold_max(own, score, kept, index)  # the same scores: the same winners
        return best, alternative, own

    if not use_triton(level.gaussian):
        return twin()

    def fused() -> tuple[RunningMax, RunningMax, RunningMax]:
        from . import _triton_select

        measured = level.measured()
        new_best = _new_state(best, measured, level.gaussian, True)
        new_alternative = _new_state(alternative, measured, level.gaussian, True)
        # ``own`` has the alternative's winners, so it shares its score.
        new_own = own or RunningMax(new_alternative.score, torch.empty_like(new_alternative.score), None)
        halo = {"coarse_energy": coarse_energy.contiguous(), "score": new_alternative.score,
                "value": new_alternative.value, "index": new_alternative.index, "own": new_own.value,
                "has_state": alternative is not None, "sharpness": sharpness, "half_share": half_share}
        _triton_select.fold(measured, level.gaussian, level.coarser, taps, usable, first_index, new_best.score,
                            new_best.value, new_best.index, best is not None, None, halo)
        return new_best, new_alternative, new_own

    return triton_or_torch("fold[halo]", fused, twin)
