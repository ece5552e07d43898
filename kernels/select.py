"""Fold a chunk of candidates into a running per-element maximum.

This is the innermost step of every selection rule, run once per pyramid level and
chunk of frames. The torch code here is the reference; a fused device kernel must
give the same result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .dispatch import use_triton
from .filters import separable_filter

__all__ = ["RunningMax", "fold_max", "mask_unusable", "energy_fold"]


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
    measured: Tensor,
    values: Tensor,
    taps: tuple[float, ...],
    usable: Tensor | None,
    first_index: int,
    track_index: bool = False,
) -> RunningMax:
    """The selection step of an energy rule: local energy, compare, keep the winner.

    The energy of a coefficient is ``measured**2`` filtered with ``taps`` along rows and
    columns (reflect borders); scores of coefficients that are not ``usable`` are -inf.

    Args:
        state: as for ``fold_max`` (the winners' index is not kept).
        measured: ``(B, S, H, W)``, what the energy is measured on (luminance, or each channel).
        values: ``(B, C, H, W)``, the coefficients.
        taps: odd, symmetric filter taps.
        usable: ``(B, 1, H, W)`` bool, or ``None`` for all.
        first_index: the stack index of the chunk's first frame.
        track_index: keep the winners' index too (the torch version does that).

    Returns:
        The updated state. The Triton version runs energy, comparison and update in one
        pass per frame, with the same result bit for bit.
    """
    if track_index or not use_triton(values):
        energy = mask_unusable(separable_filter(measured * measured, taps), usable)
        return fold_max(state, energy, values, first_index, track_index)
    from ._triton_select import energy_fold as fused

    if state is None:  # as fold_max starts: the first frame's values, beaten by any finite score
        score = torch.full((1, *measured.shape[1:]), float("-inf"), dtype=measured.dtype, device=measured.device)
        state = RunningMax(score, values[:1].clone(), None)
    fused(state.score, state.value, measured, values, taps, usable)
    return state
