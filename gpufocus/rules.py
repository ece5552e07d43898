"""Selection rules: which frame supplies each coefficient of the fused pyramid.

Every rule is streaming: ``fold`` takes the next chunk of frames, ``result`` returns
the fused image. State is one running winner per coefficient, so memory does not
grow with the number of frames. All rules work on ``(B, C, H, W)`` batches with no
loop over pixels, and the winner of a tie is the frame with the lowest index.

- ``max-energy``: per detail coefficient, the frame with the largest local energy of
  the luminance coefficient wins, and gives all colour channels.
- ``wang-chang``: Wang & Chang (2011) as the seed program applied it: region energy
  (generating kernel a = 0.4) on the detail levels, local deviation and entropy on the
  coarsest detail level.
- ``max-log``: per pixel, the frame with the largest absolute Laplacian of Gaussian
  (no pyramid).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor

from .color import luminance
from .halo import HaloGuard
from .kernels import RunningMax, energy_fold, fold_max, mask_unusable
from .options import FuseOptions
from .pyramid import (
    Decomposition,
    binomial_taps,
    collapse_laplacian_pyramid,
    correlate1d,
    separable_filter,
)

__all__ = ["SelectionRule", "MaxEnergy", "WangChang", "MaxLoG", "make_rule"]


class SelectionRule(ABC):
    """Folds chunks of frames into a running selection; ``result`` gives the fused image.

    Args:
        kernel_size: side of the local window the rule measures over (odd).
        per_channel: decide for every colour channel on its own (the seed program's
            behaviour) instead of once per pixel from the luminance.
    """

    def __init__(self, kernel_size: int, per_channel: bool) -> None:
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel size must be odd and positive, got {kernel_size}")
        self.kernel_size = kernel_size
        self.per_channel = per_channel
        self.count = 0

    def fold(self, frames: Tensor | Decomposition, valid: Tensor | None = None) -> None:
        """Take the next ``B`` frames, ``(B, C, H, W)`` floating point, or their
        ``Decomposition`` (taken apart once for the rule and the depth map).

        ``valid`` (``(B, 1, H, W)`` bool), where given, marks the pixels that hold image
        data (aligned frames do not cover the whole grid); coefficients that depend on
        other pixels never win, and means leave them out.
        """
        parts = frames if isinstance(frames, Decomposition) else Decomposition(frames, valid, self.pyramid_levels)
        self._fold(parts)
        self.count += parts.frames.shape[0]

    #: The detail levels of the pyramid the rule reads (0: none).
    pyramid_levels = 0

    @abstractmethod
    def _fold(self, parts: Decomposition) -> None: ...

    @abstractmethod
    def result(self) -> Tensor:
        """The fused image, ``(1, C, H, W)``."""

    def decisions(self) -> list[Tensor] | None:
        """Which frame won where, per detail level, for rules that keep it; else ``None``."""
        return None

    def base(self) -> Tensor | None:
        """The fused base level, for pyramid rules; else ``None``."""
        return None

    def refold(self, frames: Tensor | Decomposition, valid: Tensor | None = None) -> None:
        """The second pass, for rules that make one (max-energy with consistency)."""
        raise NotImplementedError(f"{type(self).__name__} takes one pass")


class _PyramidRule(SelectionRule):
    """Shared by the pyramid rules: per-level running winners, a mean of the base."""

    def __init__(self, levels: int, kernel_size: int, per_channel: bool) -> None:
        super().__init__(kernel_size, per_channel)
        if levels < 1:
            raise ValueError(f"a pyramid rule needs at least one level, got {levels}")
        self.levels = self.pyramid_levels = levels
        # The base is blur of blur: nearly the same in every frame. Averaging it keeps
        # the overall brightness free of seams.
        self._base = _RunningMean()

    def _fold(self, parts: Decomposition) -> None:
        for level in self._level_order():
            self._fold_level(level, parts, None if parts.usable is None else parts.usable[level])
        self._base.add(parts.gaussian[-1], None if parts.coverage is None else parts.coverage[-1], self.count)

    def _level_order(self) -> list[int]:
        """The order in which a chunk's levels are folded."""
        return list(range(self.levels))

    def _measured(self, parts: Decomposition, level: int) -> Tensor:
        """The channels a decision on ``level`` is made on: luminance, or every channel."""
        return parts.measured(level, self.per_channel)

    @abstractmethod
    def _fold_level(self, level: int, parts: Decomposition, usable: Tensor | None) -> None: ...

    @abstractmethod
    def _fused_level(self, level: int) -> Tensor: ...

    def base(self) -> Tensor:
        """The fused base level, ``(C, h, w)``: the mean of the frames' bases."""
        return self._base.value()

    def result(self) -> Tensor:
        pyramid = [self._fused_level(level) for level in range(self.levels)]
        pyramid.append(self._base.value().unsqueeze(0).to(pyramid[0].dtype))
        return collapse_laplacian_pyramid(pyramid)


class _RunningMean:
    """A per-pixel mean over frames, optionally weighted, that does not depend on chunking.

    Frames (and their weights) are added one at a time, in stack order, so the order of
    additions and the rounding are the same whatever the chunks, and whether a frame
    with full weight comes with a weight or without one; in at least float32, so
    half-precision runs do not lose the sum. A frame added again (a chunk retried
    after running out of memory) is skipped.
    """

    def __init__(self) -> None:
        self._total: Tensor | None = None
        self._weight: Tensor | None = None  # from the first weighted frame on
        self._count = 0  # unweighted frames before it
        self._next = 0  # stack index of the next frame to add

    def add(self, frames: Tensor, weights: Tensor | None, first_index: int) -> None:
        frames = frames.to(torch.promote_types(frames.dtype, torch.float32))
        for i, frame in enumerate(frames):
            if first_index + i < self._next:
                continue
            self._next = first_index + i + 1
            if weights is not None:
                weight = weights[i].to(frame.dtype)
                frame = frame * weight
                if self._weight is None:
                    self._weight = torch.full_like(weight, float(self._count))
                self._weight += weight
            elif self._weight is None:
                self._count += 1
            else:
                self._weight += 1
            self._total = frame.clone() if self._total is None else self._total.add_(frame)

    def value(self) -> Tensor:
        if self._weight is None:
            return self._total / self._count
        return self._total / self._weight.clamp_min(1e-12)


class MaxEnergy(_PyramidRule):
    """Per detail coefficient, the frame with the largest local energy wins.

    Energy is the square of the luminance coefficient (or of each channel with
    ``per_channel``) averaged over a ``kernel_size`` window with binomial weights.
    The winner's coefficients are taken for all channels together, so colours never
    mix between frames. The base level is the mean of the frames' bases.

    ``halo_guard`` changes the finest level's choice at depth edges where a frame's
    energy comes from a strong edge beside the coefficient rather than from its own
    detail (``gpufocus.halo``); it needs two levels.

    ``consistency`` (halo control) makes the choice of frame agree with its neighbours
    after all frames are seen: 1 takes, per coefficient, the frame most of its 3x3
    neighbourhood chose; 2 lets the coarser level's (consistent) choice vote too.
    The coefficients of the frames so chosen are gathered in a second pass over the
    stack (``refold``), so memory still does not grow with the number of frames.
    """

    def __init__(
        self, levels: int, kernel_size: int, per_channel: bool, consistency: int, track_index: bool = False, *,
        halo_guard: bool,
    ) -> None:
        super().__init__(levels, kernel_size, per_channel)
        if consistency not in (0, 1, 2):
            raise ValueError(f"consistency must be 0, 1 or 2, got {consistency}")
        self.consistency = consistency
        self._track = track_index or consistency > 0  # halo control needs the winners' index
        self._window = binomial_taps(kernel_size)
        self._best: list[RunningMax | None] = [None] * levels
        self._changes: list[tuple[Tensor, Tensor]] | None = None  # per level: chosen index, where it changed
        self._refolded = 0
        self._guard = HaloGuard(self._window) if halo_guard and levels >= 2 else None
        self._coarse_energy: Tensor | None = None  # level 1's energies, for the guard on level 0

    def _level_order(self) -> list[int]:
        # The halo guard reads the next level's energies on the finest: that level first.
        return [1, 0, *range(2, self.levels)] if self._guard is not None else list(range(self.levels))

    def _fold_level(self, level: int, parts: Decomposition, usable: Tensor | None) -> None:
        if level == 0 and self._guard is not None:
            self._best[0] = self._guard.fold(
                self._best[0], parts.level(0, self.per_channel), parts.noise(self.per_channel), self._coarse_energy,
                usable, self.count,
            )
            self._coarse_energy = None
            return
        self._best[level], energy = energy_fold(
            self._best[level], parts.level(level, self.per_channel), self._window, usable, self.count, self._track,
            keep_energy=level == 1 and self._guard is not None,
        )
        if energy is not None:
            self._coarse_energy = energy

    def _guarded(self) -> None:
        """The halo guard's switch, once every frame is in (``gpufocus.halo``)."""
        if self._guard is not None:
            self._guard.apply(self._best[0], self.count)

    def _settle(self) -> None:
        """Between the passes: the consistent choice of frame, coarse levels first."""
        self._guarded()
        chosen: list[Tensor] = [None] * self.levels
        for level in reversed(range(self.levels)):
            index = self._best[level].index
            votes = [index]
            if self.consistency == 2 and level + 1 < self.levels:
                votes.append(F.interpolate(chosen[level + 1].float(), size=index.shape[-2:], mode="nearest").int())
            chosen[level] = _majority(votes)
        self._changes = [(c, c != b.index) for c, b in zip(chosen, self._best)]

    def refold(self, frames: Tensor | Decomposition, valid: Tensor | None = None) -> None:
        """Second pass: take the coefficients of the frames the consistency step chose.

        Frames come again in stack order, as in the first pass.
        """
        if self._changes is None:
            self._settle()
        parts = frames if isinstance(frames, Decomposition) else Decomposition(frames, valid, self.levels)
        frames, pyramid, usable = parts.frames, parts.pyramid, parts.usable
        for level, coefficients in enumerate(pyramid[:-1]):
            chosen, changed = self._changes[level]
            best = self._best[level].value
            for offset in range(frames.shape[0]):
                take = changed & (chosen == self._refolded + offset)
                if usable is not None:  # a frame may not cover a coefficient its neighbours chose
                    take &= usable[level][offset : offset + 1]
                torch.where(take, coefficients[offset : offset + 1], best, out=best)
        self._refolded += frames.shape[0]

    def _fused_level(self, level: int) -> Tensor:
        if level == 0:
            self._guarded()
        return self._best[level].value

    def decisions(self) -> list[Tensor] | None:
        """Per detail level, ``(h, w)``: the frame each coefficient came from (of the
        first channel with ``per_channel``); ``None`` unless made with ``track_index``."""
        if not self._track:
            return None
        self._guarded()
        if self._changes is not None:  # halo control: the consistent choice
            return [chosen[0, 0] for chosen, _ in self._changes]
        return [best.index[0, 0] for best in self._best]


def _majority(maps: list[Tensor]) -> Tensor:
    """Per element, the value most common among the 3x3 neighbourhoods of ``maps``.

    ``maps`` are ``(1, S, h, w)`` integer tensors of one size; ties keep the first
    map's own value. Counted by comparing every vote with every other, so the cost
    does not depend on how many distinct values (frames) there are.
    """
    height, width = maps[0].shape[-2:]
    votes = []
    for plane in maps:
        padded = F.pad(plane.float(), (1, 1, 1, 1), mode="replicate")  # frame indices are exact in float32
        votes += [padded[..., dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)]
    votes.insert(0, votes.pop(4))  # the first map's own value first: it wins ties
    count = lambda candidate: sum((candidate == other).to(torch.int16) for other in votes)  # noqa: E731
    best, best_count = votes[0], count(votes[0])
    for candidate in votes[1:]:
        candidate_count = count(candidate)
        better = candidate_count > best_count
        best = torch.where(better, candidate, best)
        best_count = torch.where(better, candidate_count, best_count)
    return best.to(torch.int32)


# Wang & Chang's region energy: the 5-tap generating kernel with a = 0.4.
_GENERATING_KERNEL = (0.25 - 0.4 / 2, 0.25, 0.4, 0.25, 0.25 - 0.4 / 2)


class WangChang(_PyramidRule):
    """Wang & Chang (2011), as the seed program applied it.

    - Detail levels below the coarsest: the frame with the largest region energy (the
      squared coefficient filtered with the 5x5 generating kernel, a = 0.4) wins.
    - The coarsest detail level: with D the local deviation (variance over a
      ``kernel_size`` window) and E the local entropy, take the frame that maximizes
      both D and E; else the frame that minimizes both; else the mean of all frames.
      E follows the seed program: coefficients quantized to 256 levels (in units of
      1/255, wrapped like its ``uint8`` cast), p the level's histogram over the whole
      frame, ``E = -sum over the window of q * log p(q)``.
    - Base: the mean of the frames' bases (the seed program took the last frame's).
    - ``per_channel=True`` decides per colour channel, as the seed program did;
      otherwise decisions are made on the luminance and taken for all channels.
    """

    def __init__(self, levels: int, kernel_size: int, per_channel: bool) -> None:
        super().__init__(levels, kernel_size, per_channel)
        self._box = (1.0 / kernel_size,) * kernel_size
        self._best: list[RunningMax | None] = [None] * (levels - 1)
        self._top_mean = _RunningMean()
        self._top: dict[str, RunningMax | None] = dict.fromkeys(("max_d", "max_e", "min_d", "min_e"))

    def _fold_level(self, level: int, parts: Decomposition, usable: Tensor | None) -> None:
        if level < self.levels - 1:
            self._best[level], _ = energy_fold(
                self._best[level], parts.level(level, self.per_channel), _GENERATING_KERNEL, usable, self.count
            )
            return
        coefficients = parts.pyramid[level]
        measured = self._measured(parts, level).double()
        deviation = self._deviation(measured)
        entropy = self._entropy(measured)
        top, count = self._top, self.count
        top["max_d"] = fold_max(top["max_d"], mask_unusable(deviation, usable), coefficients, count, track_index=True)
        top["max_e"] = fold_max(top["max_e"], mask_unusable(entropy, usable), None, count, track_index=True)
        top["min_d"] = fold_max(top["min_d"], mask_unusable(-deviation, usable), coefficients, count, track_index=True)
        top["min_e"] = fold_max(top["min_e"], mask_unusable(-entropy, usable), None, count, track_index=True)
        self._top_mean.add(coefficients, None if usable is None else usable, self.count)

    def _deviation(self, x: Tensor) -> Tensor:
        mean = separable_filter(x, self._box)
        return separable_filter(x * x, self._box) - mean * mean

    def _entropy(self, x: Tensor) -> Tensor:
        levels = torch.round(x * 255).long().remainder_(256)
        batch, channels = levels.shape[:2]
        # One histogram per frame and channel: offset each one's bins, count once.
        offsets = torch.arange(batch * channels, device=x.device).view(batch, channels, 1, 1) * 256
        counts = torch.bincount((levels + offsets).flatten(), minlength=batch * channels * 256)
        probability = counts.view(batch, channels, 256).double() / levels[0, 0].numel()
        log_p = probability.clamp_min(1e-300).log().flatten()
        per_sample = -levels.double() * log_p[levels + offsets]
        return separable_filter(per_sample, (1.0,) * self.kernel_size)

    def _fused_level(self, level: int) -> Tensor:
        if level < self.levels - 1:
            return self._best[level].value
        top = self._top
        mean = self._top_mean.value().unsqueeze(0).to(top["max_d"].value.dtype)
        both_min = torch.where(top["min_d"].index == top["min_e"].index, top["min_d"].value, mean)
        return torch.where(top["max_d"].index == top["max_e"].index, top["max_d"].value, both_min)


class MaxLoG(SelectionRule):
    """Per pixel, the frame with the largest absolute Laplacian of Gaussian (no pyramid).

    The seed program's ``--naive`` mode: luminance, Gaussian blur (``kernel_size``
    window, sigma 3), the 3x3 Laplacian ``[[2, 0, 2], [0, -8, 0], [2, 0, 2]]`` (OpenCV's
    ``Laplacian`` with ``ksize=3``), and the whole pixel, all channels, from the winner.
    """

    def __init__(self, kernel_size: int, per_channel: bool) -> None:
        super().__init__(kernel_size, per_channel)
        import kornia  # only here: importing it costs half a second of every start

        gauss = kornia.filters.get_gaussian_kernel1d(kernel_size, 3.0, dtype=torch.float64)
        self._gauss = tuple(gauss.flatten().tolist())
        self._best: RunningMax | None = None

    def _fold(self, parts: Decomposition) -> None:
        frames, valid = parts.frames, parts.valid
        measured = frames if self.per_channel or frames.shape[1] == 1 else luminance(frames)
        blurred = separable_filter(measured, self._gauss)
        d2y = correlate1d(correlate1d(blurred, (1.0, -2.0, 1.0), dim=-2), (1.0, 2.0, 1.0), dim=-1)
        d2x = correlate1d(correlate1d(blurred, (1.0, 2.0, 1.0), dim=-2), (1.0, -2.0, 1.0), dim=-1)
        usable = None
        if valid is not None:  # the measure reaches kernel_size // 2 + 1 pixels: erode by that
            reach = self.kernel_size // 2 + 1
            usable = ~F.max_pool2d((~valid).float(), 2 * reach + 1, stride=1, padding=reach).bool()
        self._best = fold_max(self._best, mask_unusable((d2x + d2y).abs_(), usable), frames, self.count)

    def result(self) -> Tensor:
        return self._best.value


def make_rule(options: FuseOptions, levels: int, track_index: bool = False) -> SelectionRule:
    """The rule ``options.method`` names, with its window, channels, halo guard and control;
    ``track_index``: max-energy keeps the winners' frame index (``decisions``)."""
    if options.method == "max-energy":
        return MaxEnergy(
            levels, options.window, options.per_channel, options.consistency, track_index, halo_guard=options.halo_guard
        )
    if options.method == "wang-chang":
        return WangChang(levels, options.window, options.per_channel)
    return MaxLoG(options.window, options.per_channel)
