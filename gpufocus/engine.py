"""The streaming fusion engine: ``StackFuser`` and the ``fuse`` entry point.

``StackFuser.run(source)`` reads a stack as many times as its settings need (once; a
first pass to estimate motion when the reference is not frame 0; a second pass for
halo control) and returns the fused image. The passes are also open to callers that
feed frames themselves (``estimate``, ``add``, ``refold``, then ``result``); a pass
the settings need but that was skipped is an error, not a silently different image.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .align import FrameTransform, StackAligner, apply_transform, apply_transforms, inner_rectangle, moves
from .color import luminance
from .depth import DepthMap, finish
from .device import (
    arrived, default_chunk, frame_budget, free_memory, fusion_chunk, resolve_device, resolve_dtype, tile_budget,
    working_bytes,
)
from .memory import RESULT_BYTES_PER_PIXEL, failed_allocation, out_of_memory
from .errors import GpufocusError
from .load import FrameStack
from .options import FuseOptions, OptionError
from .pyramid import Decomposition, auto_levels, max_levels
from .rules import SelectionRule, make_rule
from .steps import StepWriter
from .tiling import Tile, auto_tile, plan_tiles, tile_margin
from .timing import NO_TIMER, StageTimer

__all__ = ["StackFuser", "fuse", "align_stack", "check_fits", "chunk_for", "to_float"]

log = logging.getLogger(__name__)

Progress = Callable[[int, int, str], None]
Source = Tensor | FrameStack | Sequence[str | os.PathLike] | str | os.PathLike


def to_float(frames: Tensor | np.ndarray, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Frames as floats in [0, 1] on ``device``.

    Integer frames move to the device as they are (1 or 2 bytes a sample) and are
    scaled there; ``(B, H, W, C)`` arrays (as decoded) become ``(B, C, H, W)``. In
    float32 the result is the same on every device: the integer divided by its largest
    value, rounded once.
    """
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(frames).permute(0, 3, 1, 2)
    if frames.dtype == torch.uint16:
        top = 65535.0
    elif frames.dtype == torch.uint8:
        top = 255.0
    elif frames.is_floating_point():
        top = None
    else:
        raise GpufocusError(f"frames of dtype {frames.dtype} are not supported (use uint8, uint16 or float)")
    frames = frames.to(device, non_blocking=True)
    out = torch.empty(frames.shape, dtype=dtype, device=device)  # contiguous, whatever the input's layout
    if top is None:
        return out.copy_(frames)
    if device.type == "cpu" and torch.finfo(dtype).max >= top:  # two passes: faster on the CPU
        return out.copy_(frames).div_(top)
    # One pass, which reads the integers and writes the floats (a GPU's time is its
    # bytes), computed in float32 and rounded once to ``dtype``: 16-bit samples above
    # float16's largest (65504) would become infinite if converted before the division.
    return torch.div(frames, top, out=out)


class StackFuser:
    """Fuses a stack; memory stays that of one chunk plus the result.

    Args:
        options: the fusion settings (``FuseOptions``); ``None`` for the defaults.
        names: frame names for warnings (file names, say); ``run`` takes them from a
            stack on disk by itself.
        steps: report the intermediate results there (aligned frames, decisions,
            base, depth; see ``gpufocus.steps``).
        alpha: the frames' last channel is alpha: with ``use_alpha`` (the default)
            pixels below half opacity never win (``run`` takes this from a stack on disk).
        colour: three channels are red, green and blue, decided on their luminance;
            ``False`` decides each channel on its own, as for any other channel count
            but one (``run`` takes this from a stack on disk).
        **changes: settings that replace those of ``options`` (``method='wang-chang'``).

    ``run(source)`` does everything. To feed frames yourself: with ``align.reference``
    other than 0, every frame goes through ``estimate`` first; then every frame through
    ``add``; with ``consistency`` above 0, every frame through ``refold`` again; then
    ``result``.

    Example:
        >>> image = StackFuser(device="cpu").run("stack/")   # (C, H, W) float32 in [0, 1]
        >>> fuser = StackFuser(FuseOptions(align=None))
        >>> for chunk in chunks:          # (B, C, H, W) uint8, uint16 or float tensors
        ...     fuser.add(chunk)
        >>> image = fuser.result()
    """

    def __init__(
        self,
        options: FuseOptions | None = None,
        *,
        names: list[str] | None = None,
        alpha: bool = False,
        colour: bool = True,
        steps: StepWriter | None = None,
        **changes,
    ) -> None:
        self.options = FuseOptions.of(options, **changes)
        self.steps = steps
        self.alpha, self.colour = alpha, colour
        self.device = resolve_device(self.options.device)
        self.dtype = resolve_dtype(self.options.dtype)
        self.levels = self.options.levels  # chosen from the frame size when None
        self.kernel_size = self.options.window
        align = self.options.align
        self._aligner = None if align is None else StackAligner(align)
        self.names = names
        self._estimated = 0
        self._refolded = 0
        self._regions: list[_Region] = []
        self._active: list[_Region] | None = None  # the regions a tile-major pass folds (None: all)
        self._frames_done = 0  # frames fused, once every region is finished
        # a tile-major run's, kept from its first tile for the others: by (refolding, frame)
        self._transform_cache: dict[tuple[bool, int], FrameTransform] = {}
        self._finished: dict[str, Tensor] = {}  # a tile-major run's results, written tile by tile
        self._noise_cache: dict[int, Tensor] = {}  # the halo guard's noise level, by frame
        self._covered: Tensor | None = None
        self._image: Tensor | None = None
        self._shape: tuple[int, int, int] | None = None

    @property
    def names(self) -> list[str] | None:
        """Frame names used in warnings."""
        return self._names

    @names.setter
    def names(self, names: list[str] | None) -> None:
        self._names = names
        if self._aligner is not None:
            self._aligner.names = names

    def run(
        self, source: Source, *, progress: Progress | None = None, timer: StageTimer = NO_TIMER, on_device: bool = False
    ) -> Tensor:
        """Fuse a whole stack, reading it as many times as the settings need: where the
        frames are fused in tiles, once per tile (and pass), one tile's running result in
        memory at a time.

        Args:
            source: an ``(N, C, H, W)`` tensor (``uint8``, ``uint16`` or float in [0, 1]),
                a ``FrameStack``, a directory, or a list of image files.
            progress: called as ``progress(frames_done, frames, stage)`` after each
                chunk: the frames done in this pass (``stage``: ``"estimating motion"``,
                ``"fusing"``, ``"halo control"``), out of the stack's.
            timer: charges the stages ``decode``, ``upload``, ``align``, ``fuse``,
                ``collapse`` and ``download`` (see ``gpufocus.timing``).
            on_device: leave the result on the fusion device, for a caller that
                writes it from there (``Outputs.image``): no ``download`` stage.

        Returns:
            The fused image, ``(C, H, W)`` float32 in [0, 1], on the CPU (or see
            ``on_device``).
        """
        if self.count or self._estimated:
            raise GpufocusError("run(): this StackFuser has taken frames already; make a new one for another stack")
        source = _as_source(source, self.options)
        if isinstance(source, FrameStack):
            check_fits(source, self.options, self.device)
            self.alpha, self.colour = source.alpha, source.colour
            if self.names is None:
                self.names = source.names
        total = len(source)
        passes = [("fusing", self.add)]
        if self._needs_estimate:
            _check_reference(self.options.align.reference, total)
            passes.insert(0, ("estimating motion", self.estimate))
        if self.options.consistency:
            passes.append(("halo control", self.refold))
        chunk = chunk_for(source, self.options, self.device)
        height, width = source.shape[-2:] if isinstance(source, Tensor) else source.size
        log.info(
            "%d frames of %dx%d; %s on %s in %s; %d frames a chunk; passes: %s", total, width, height,
            self.options.method, self.device, self.options.dtype, chunk, ", ".join(name for name, _ in passes),
        )
        stage = ["reading the stack"]  # what ran out of memory, if anything does

        def staged(name: str, handle):
            def call(frames, timer):
                stage[0] = name
                return handle(frames, timer)
            return call

        try:
            if self._tile_major(source):
                self._run_tiles(source, chunk, passes, total, progress, timer, staged)
            else:
                for _ in _passes(source, chunk, [(n, staged(n, h)) for n, h in passes], total, progress, timer,
                                 self.device):
                    pass
            stage[0] = "collapsing the result"
            image = self.result(timer)
            if on_device:
                return image
            with timer.stage("download"):
                return image.cpu()
        except (MemoryError, RuntimeError) as error:
            if not out_of_memory(error):
                raise
            raise GpufocusError(_memory_advice(stage[0], error, self.device, self.options, chunk)) from None

    @property
    def count(self) -> int:
        """Frames added so far (in a tile-major run: to the tile being fused)."""
        regions = self._active or self._regions
        if not regions:
            return 0
        return self._frames_done if regions[0].finished else regions[0].rule.count

    def _tile_major(self, source: Tensor | FrameStack) -> bool:
        """Plan the tiles now, from the stack's size; whether there are several. Then the
        stack is read once per tile, and only one tile's running result is in memory."""
        if self._regions:
            return len(self._regions) > 1
        if isinstance(source, Tensor):
            channels, (height, width) = source.shape[1] - (1 if self.alpha else 0), source.shape[-2:]
        else:
            channels, (height, width) = source.channels, source.size
        self._start(channels, height, width, tile_major=True)
        return len(self._regions) > 1

    def _run_tiles(self, source, chunk: int, passes, total: int, progress, timer: StageTimer, staged) -> None:
        """Read the stack once per tile (and pass: fusing, halo control), each tile fused
        and finished before the next: memory holds one tile's result, not every tile's.
        Motion is estimated in the first tile's pass and kept for the others."""
        estimate = [(name, handle) for name, handle in passes if handle == self.estimate]
        if estimate:
            for _ in _passes(source, chunk, [(n, staged(n, h)) for n, h in estimate], total, progress, timer,
                             self.device):
                pass
        per_tile = [(name, handle) for name, handle in passes if handle != self.estimate]
        for number, region in enumerate(self._regions, 1):
            self._active, self._refolded = [region], 0
            named = [(f"{name}, tile {number} of {len(self._regions)}", handle) for name, handle in per_tile]
            for _ in _passes(source, chunk, [(n, staged(n, h)) for n, h in named], total, progress, timer, self.device):
                pass
            self._frames_done = region.rule.count
            with timer.stage("collapse"):
                self._finish(region)
        self._active, self._refolded = None, self._frames_done if self.options.consistency else 0

    @property
    def tiles(self) -> list[Tile]:
        """The tiles fused one by one (a single one covering the frame when not tiled)."""
        return [region.tile for region in self._regions]

    @property
    def _needs_estimate(self) -> bool:
        """Every frame must go through ``estimate`` before ``add``."""
        return self.options.align is not None and self.options.align.reference != 0

    def refold(self, frames: Tensor | np.ndarray, timer: StageTimer = NO_TIMER) -> None:
        """Second pass (halo control): the frames again, in order, after all were added."""
        if not self.options.consistency:
            raise GpufocusError("refold(): only halo control (consistency 1 or 2) reads the stack twice")
        raw = _batch(frames)
        for inputs in self._chunk_inputs(raw, self._refolded, timer, refolding=True):
            for region, part, valid in inputs.regions:
                with timer.stage("fuse"):
                    region.rule.refold(self._decompose(part, valid))
        self._refolded += len(raw)

    @property
    def transforms(self) -> list[FrameTransform]:
        """How each frame added so far was aligned (empty without alignment)."""
        return [] if self._aligner is None else self._aligner.results

    def estimate(self, frames: Tensor | np.ndarray, timer: StageTimer = NO_TIMER) -> None:
        """First pass, for a reference other than frame 0: estimate the next frames' motion."""
        if not self._needs_estimate:
            raise GpufocusError("estimate(): only a reference other than frame 0 needs a first pass")
        with timer.stage("upload"):
            frames, mask = self._split(to_float(_batch(frames), self.device, self.dtype))
        with timer.stage("align"):
            self._aligner.estimate(frames, self._estimated, mask)
        self._estimated += frames.shape[0]

    def _split(self, frames: Tensor) -> tuple[Tensor, Tensor | None]:
        return _split_alpha(frames, self.alpha, self.options.use_alpha)

    def _start(self, channels: int, height: int, width: int, tile_major: bool = False) -> None:
        """Plan the fusion of frames of this size; ``tile_major``: ``run`` fuses the tiles
        one after the other (else every tile's running result is kept at once)."""
        options = self.options
        if channels > 1 and not (self.colour and channels == 3) and not options.per_channel:
            # no luminance to decide on: every channel is its own image (microscopy)
            self.options = options = options.replace(per_channel=True)
        deepest = max_levels(height, width)
        if deepest < 1:
            raise GpufocusError(f"{width}x{height} frames are too small (at least 8x8)")
        if self.levels is None:
            self.levels = auto_levels(height, width)
        elif self.levels > deepest and options.method != "max-log":
            raise OptionError("levels", self.levels, f"too deep for {width}x{height} frames (at most {deepest})")
        self._shape = (channels, height, width)
        margin = tile_margin(self.levels, self.kernel_size)
        tile = options.tile
        if tile is None and options.method != "wang-chang":
            budget = frame_budget(self.device, options.memory_budget)
            tile = auto_tile(budget, channels, height, width, working_bytes(self.dtype), margin,
                             RESULT_BYTES_PER_PIXEL, tile_budget(self.device, options.memory_budget) if tile_major else None)
        if tile:
            tiles = plan_tiles(height, width, tile, self.levels, self.kernel_size)
        else:
            tiles = [Tile((0, 0, height, width), (0, 0, height, width))]
        per_channel = "each channel on its own" if options.per_channel else "on the luminance"
        log.info("%d pyramid levels, decided %s; %d tile(s)%s", self.levels, per_channel, len(tiles),
                 f" of about {tile} px" if len(tiles) > 1 else "")
        for t in tiles:
            rule = make_rule(options, self.levels, track_index=self.steps is not None)
            self._regions.append(_Region(t, rule, DepthMap(*t.padded[2:]) if options.depth_map else None))

    def add(self, frames: Tensor | np.ndarray, timer: StageTimer = NO_TIMER) -> None:
        """Fold in the next frames: ``(B, C, H, W)`` or one ``(C, H, W)`` frame.

        Integer frames are scaled to [0, 1] (``uint8`` by 255, ``uint16`` by 65535);
        float frames are taken as they are. ``np.ndarray`` input is ``(B, H, W, C)``.
        ``timer`` charges the stages ``upload``, ``align`` and ``fuse``.

        Where the device runs out of memory, the frames are folded in again in two
        halves (and so on down to one frame): every step of the fold can be repeated
        without changing the result, and the result does not depend on the chunking.
        """
        raw = _batch(frames)
        try:
            self._add(raw, timer)
        except torch.cuda.OutOfMemoryError:
            if len(raw) == 1:
                raise GpufocusError(
                    "out of GPU memory with a single frame in flight: try --dtype float16, or --device cpu"
                ) from None
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            half = len(raw) // 2
            self.add(raw[:half], timer)
            self.add(raw[half:], timer)

    def _add(self, raw: Tensor | np.ndarray, timer: StageTimer) -> None:
        if self._needs_estimate and self.options.align.reference >= self._estimated:
            raise GpufocusError(
                f"reference frame {self.options.align.reference}: estimate() must see the stack up to it "
                f"before add() (it saw {self._estimated} frames; or use run())"
            )
        for inputs in self._chunk_inputs(raw, self.count, timer, refolding=False):
            for region, part, valid in inputs.regions:
                with timer.stage("fuse"):
                    parts = self._decompose(part, valid, inputs.noise)
                    if region.depth is not None:
                        region.depth.fold(parts, inputs.first)
                    region.rule.fold(parts)
            if self.steps is not None and inputs.frames is not None and (
                self._active is None or self._active[0] is self._regions[0]
            ):  # whole frames (the regions above hold tiles of them), once
                for offset, frame in enumerate(inputs.frames):
                    if inputs.transforms is not None:
                        frame = apply_transform(frame[None], inputs.transforms[offset])[0][0]
                    self.steps.frame(inputs.first + offset, frame)

    def _chunk_inputs(self, raw: Tensor | np.ndarray, first: int, timer: StageTimer, refolding: bool):
        """The chunk (its first frame is frame ``first`` of the stack; ``refolding``: in
        the halo-control pass) as the regions fold it, in the parts fused at once
        (``fusion_chunk``): ``_Inputs`` per part.

        Motion and the halo guard's noise level are measured on whole frames. In a
        tile-major run, the first tile's passes measure them and keep them by frame;
        the later tiles cut their part from the frames as decoded, before they become
        floats, so that whole frames in floating point are never held again (frames that
        move are made floats one at a time, to be resampled).
        """
        count = len(raw)
        if self._cut(count, first, refolding):
            yield from self._tile_inputs(raw, first, timer, refolding)
            return
        with timer.stage("upload"):
            frames, mask = self._split(to_float(raw, self.device, self.dtype))
        shape = tuple(frames.shape[1:])
        if self._shape is None:
            self._start(*shape)
        elif shape != self._shape:
            raise GpufocusError(
                f"frame {first}: shape {shape} differs from the first frame's {self._shape}; "
                "frames must be aligned to the same size"
            )
        transforms = self._transforms(frames, mask, first, timer, refolding)
        step = fusion_chunk(frames.device, count)
        for start in range(0, count, step):
            part = slice(start, start + step)
            part_frames, part_mask = frames[part], None if mask is None else mask[part]
            part_transforms = None if transforms is None else transforms[part]
            noise = None
            if self._needs_noise and not refolding:
                with timer.stage("fuse"):
                    # of whole frames: the regions may be tiles
                    noise = Decomposition(part_frames, None, self.levels).noise(self.options.per_channel)
                if self._active is not None:
                    self._noise_cache.update(zip(range(first + start, first + start + len(part_frames)), noise))
            regions = (
                (region, *self._validated(*self._boxed(part_frames, part_mask, part_transforms, region.tile.padded,
                                                       timer), region.tile.padded, part_transforms is not None))
                for region in self._active or self._regions
            )
            yield _Inputs(first + start, regions, noise, part_frames, part_transforms)

    @property
    def _needs_noise(self) -> bool:
        return self.options.halo_guard and self.options.method == "max-energy"

    def _cut(self, count: int, first: int, refolding: bool) -> bool:
        """Whether the chunk goes to a tile past the first of a tile-major run, with
        what the whole frames gave (motion, noise) kept."""
        if self._active is None or self._active[0] is self._regions[0]:
            return False
        frames = range(first, first + count)
        if self._aligner is not None and any((refolding, i) not in self._transform_cache for i in frames):
            return False
        return refolding or not self._needs_noise or all(i in self._noise_cache for i in frames)

    def _tile_inputs(self, raw: Tensor | np.ndarray, first: int, timer: StageTimer, refolding: bool):
        """``_chunk_inputs`` for a tile past the first of a tile-major run: the tile cut
        from the frames as decoded (the whole frame made floats only where it moves)."""
        region = self._active[0]
        box = region.tile.padded
        count = len(raw)
        transforms = None
        if self._aligner is not None:
            transforms = [self._transform_cache[(refolding, i)] for i in range(first, first + count)]
        step = fusion_chunk(self.device, count)
        for start in range(0, count, step):
            sub = raw[start : start + step]
            sub_transforms = None if transforms is None else transforms[start : start + step]
            if sub_transforms is None or not moves(sub_transforms, *self._shape[1:]):
                with timer.stage("upload"):
                    part, moved = self._split(to_float(_crop(sub, box), self.device, self.dtype))
                valid = None
            else:
                part, moved, valid = self._tile_moved(sub, sub_transforms, box, timer)
            noise = None
            if self._needs_noise and not refolding:
                noise = torch.stack([self._noise_cache[i] for i in range(first + start, first + start + len(sub))])
            regions = [(region, *self._validated(part, moved, valid, box, sub_transforms is not None))]
            yield _Inputs(first + start, iter(regions), noise, None, sub_transforms)

    def _tile_moved(
        self, raw: Tensor | np.ndarray, transforms: list[FrameTransform], box: tuple[int, int, int, int],
        timer: StageTimer,
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """``_boxed`` of frames as decoded that move, made floats one at a time."""
        part = moved = None
        valid = []
        for i, transform in enumerate(transforms):
            with timer.stage("upload"):
                frame, mask = self._split(to_float(raw[i : i + 1], self.device, self.dtype))
            if part is None:
                part = frame.new_empty(len(transforms), frame.shape[1], *box[2:])
                moved = None if mask is None else mask.new_empty(len(transforms), 1, *box[2:])
            frame_valid = self._boxed(frame, mask, [transform], box, timer, part[i : i + 1],
                                       None if moved is None else moved[i : i + 1])[2]
            valid.append(frame_valid if frame_valid is not None else
                         torch.ones(1, 1, *box[2:], dtype=torch.bool, device=part.device))
        return part, moved, torch.cat(valid)

    def _transforms(
        self, frames: Tensor, mask: Tensor | None, first: int, timer: StageTimer, refolding: bool
    ) -> list[FrameTransform] | None:
        """How each of the chunk's frames maps onto the reference (``None`` without
        alignment): the whole chunk's motion is estimated at once. A tile-major run keeps
        each frame's, per pass, for its later tiles."""
        if self._aligner is None:
            return None
        with timer.stage("align"):
            found = self._aligner.transforms(frames, first, mask)
        if self._active is not None:
            self._transform_cache.update(((refolding, first + i), transform) for i, transform in enumerate(found))
        return found

    def _decompose(self, part: Tensor, valid: Tensor | None, noise: Tensor | None = None) -> Decomposition:
        """The chunk taken apart once, for the rule and the depth map (max-log reads no
        pyramid, but may take more levels than a frame has); ``noise``: the whole frames'."""
        return Decomposition(part, valid, min(self.levels, max_levels(*part.shape[-2:])), noise)

    def _boxed(
        self, frames: Tensor, mask: Tensor | None, transforms: list[FrameTransform] | None,
        box: tuple[int, int, int, int], timer: StageTimer, out: Tensor | None = None, mask_out: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The frames' part in ``box`` (``(top, left, height, width)``), aligned: ``(part,
        mask, valid)``, ``mask`` the alpha moved along with the frames (``None`` without),
        ``valid`` where the warp had data (``None``: everywhere). ``out``, ``mask_out``:
        written into, where given.

        The motion is estimated once per frame on the whole frame (``transforms``; ``None``
        without alignment); each tile is then resampled from it.
        """
        top, left, height, width = box
        if transforms is None:
            part = frames[..., top : top + height, left : left + width]
            moved = None if mask is None else mask[..., top : top + height, left : left + width]
            return (part if out is None else out.copy_(part)), moved, None
        with timer.stage("align"):  # frames that do not move come as they are
            part, valid = apply_transforms(frames, transforms, box, out=out)
            moved = None if mask is None else apply_transforms(mask, transforms, box, exposure=False, out=mask_out)[0]
        return part, moved, valid

    def _validated(
        self, part: Tensor, moved: Tensor | None, valid: Tensor | None, box: tuple[int, int, int, int], aligned: bool
    ) -> tuple[Tensor, Tensor | None]:
        """``part`` and where it is valid: where the warp had data and the frame's alpha
        (``moved``) is at least one half; ``None`` where every pixel is. With cropping,
        the area every frame covers is kept."""
        if moved is not None:
            valid = moved >= 0.5 if valid is None else valid & (moved >= 0.5)
        if aligned and self.options.align.crop and valid is not None:
            top, left, height, width = box
            if self._covered is None:
                self._covered = torch.ones(self._shape[1:], dtype=torch.bool, device=part.device)
            self._covered[top : top + height, left : left + width] &= valid.all(dim=0)[0]
        return part, (None if valid is None or valid.all() else valid)  # all covered: the plain, faster path

    def result(self, timer: StageTimer = NO_TIMER) -> Tensor:
        """The fused image, ``(C, H, W)`` float32 in [0, 1] on the fusion device.

        ``timer`` charges the stage ``collapse``.
        """
        if self.count < 2:
            raise GpufocusError(f"a stack needs at least 2 frames, got {self.count}")
        if self.options.consistency and self._refolded < self.count:
            raise GpufocusError(
                f"halo control (consistency {self.options.consistency}) reads the stack twice: refold() has seen "
                f"{self._refolded} of {self.count} frames (or use run())"
            )
        with timer.stage("collapse"):
            image = self._assemble("image", lambda region: region.image())
        self._image = image  # the depth map's guide
        if self.steps is not None:
            self._report_steps()
        return self._cropped(image)

    def _report_steps(self) -> None:
        """The decisions and the base (of a fusion in one tile: tiles' levels do not join
        up), and the result."""
        if len(self._regions) == 1:
            rule = self._regions[0].rule
            for level, index in enumerate(rule.decisions() or []):
                self.steps.decisions(level, index)
            if rule.base() is not None:
                self.steps.base(rule.base())
        self.steps.result(self._cropped(self._image))

    def depth_map(self) -> Tensor:
        """``(H, W)`` float32 on the CPU: the index of the frame in focus at each pixel,
        interpolated between frames (0 = the first frame), unsure areas filled and the
        whole smoothed along the image (``depth_threshold``, ``depth_smooth``), cropped
        as the result is. Call ``result`` (or ``run``) first: the image guides it."""
        depth, confidence = self.depth_layers()
        final = finish(depth, confidence, luminance(self._image)[0], self.options.depth_threshold, self.options.depth_smooth)
        if self.steps is not None:
            self.steps.depth(*(self._cropped(layer[None])[0] for layer in (depth, confidence, final)))
        return self._cropped(final[None])[0].cpu()

    def depth_layers(self) -> tuple[Tensor, Tensor]:
        """The depth map as measured, before filling and smoothing: ``(depth, confidence)``,
        each ``(H, W)`` on the fusion device, uncropped (see ``gpufocus.depth``)."""
        if not self.options.depth_map:
            raise GpufocusError("depth_map(): this StackFuser was made without depth_map=True")
        if self._image is None:
            raise GpufocusError("depth_map(): the image guides the depth map; call result() first")
        both = self._assemble("depth", lambda region: region.depth_layers())
        return both[0], both[1]

    def _finish(self, region: _Region) -> None:
        """A tile-major run's tile fused: its results (its core: the margins are other
        tiles') written into the whole picture, and its running state let go."""
        for name, part in (("image", region.image()), ("depth", None if region.depth is None else region.depth_layers())):
            if part is not None:
                self._finished[name] = self._paste(self._finished.get(name), region, part)
        region.rule = region.depth = None
        region.finished = True

    def _assemble(self, name: str, part_of) -> Tensor:
        """The whole picture ``name`` (``"image"``, ``"depth"``) from each region's
        ``part_of(region)``, ``(C, h, w)`` per tile core, or as a tile-major run wrote it."""
        if name in self._finished:
            return self._finished[name]
        if len(self._regions) == 1:
            return part_of(self._regions[0])
        image = None
        for region in self._regions:
            image = self._paste(image, region, part_of(region))
        return image

    def _paste(self, picture: Tensor | None, region: _Region, part: Tensor) -> Tensor:
        """``part``, a tile core's ``(C, h, w)``, written into the whole ``picture`` (made
        at the first tile)."""
        if picture is None:
            picture = part.new_empty(part.shape[0], *self._shape[1:])
        top, left, height, width = region.tile.core
        picture[:, top : top + height, left : left + width] = part
        return picture

    def _cropped(self, image: Tensor) -> Tensor:
        if self._covered is None:
            return image
        top, bottom, left, right = inner_rectangle(self._covered)
        return image[:, top:bottom, left:right]


@dataclass
class _Inputs:
    """Part of a chunk as the regions fold it (``StackFuser._chunk_inputs``)."""

    first: int  #: the index of its first frame in the stack
    #: ``(region, part, valid)``: each region's part of the frames, aligned, and where
    #: it is valid (``None``: everywhere); made as it is read
    regions: Iterator[tuple[_Region, Tensor, Tensor | None]]
    noise: Tensor | None  #: the halo guard's noise level of the whole frames, ``(B, S)``
    frames: Tensor | None  #: the whole frames, unaligned, where they were made
    transforms: list[FrameTransform] | None


def _crop(raw: Tensor | np.ndarray, box: tuple[int, int, int, int]) -> Tensor | np.ndarray:
    """``box`` of frames as decoded: ``(B, H, W, C)`` arrays, ``(B, C, H, W)`` tensors."""
    top, left, height, width = box
    if isinstance(raw, np.ndarray):
        return raw[:, top : top + height, left : left + width]
    return raw[..., top : top + height, left : left + width]


@dataclass
class _Region:
    """A tile of the grid and the running fusion of its part of the frames."""

    tile: Tile
    rule: SelectionRule | None
    depth: DepthMap | None
    #: Fused, in a tile-major run (``StackFuser._finish``): its results are in the whole
    #: picture, and its rule's memory is let go.
    finished: bool = False

    def image(self) -> Tensor:
        """The fused image of the tile's core, ``(C, h, w)`` float32 in [0, 1]."""
        return self._core(self.rule.result()[0].float().clamp_(0, 1))

    def depth_layers(self) -> Tensor:
        """``(2, h, w)``: depth and confidence (``gpufocus.depth``) of the tile's core."""
        return self._core(torch.stack(self.depth.result()))

    def _core(self, padded: Tensor) -> Tensor:
        rows, columns = self.tile.core_in_padded()
        return padded[:, rows, columns]


def _as_source(source, options: FuseOptions) -> Tensor | FrameStack:
    if isinstance(source, Tensor):
        if source.dim() != 4:
            raise GpufocusError(f"expected an (N, C, H, W) stack, got shape {tuple(source.shape)}")
        return source
    return source if isinstance(source, FrameStack) else FrameStack(source, options)


def _split_alpha(frames: Tensor, alpha: bool, use_alpha: bool) -> tuple[Tensor, Tensor | None]:
    """The image channels of ``(B, C, H, W)`` frames, and with ``alpha`` their last
    channel as the mask (``None`` without alpha, or where ``use_alpha`` is off)."""
    if frames.dim() != 4:
        raise GpufocusError(f"expected (B, C, H, W) frames, got shape {tuple(frames.shape)}")
    if not alpha:
        return frames, None
    if frames.shape[1] < 2:
        raise GpufocusError(f"alpha=True needs image channels and an alpha channel, got shape {tuple(frames.shape)}")
    return frames[:, :-1], (frames[:, -1:] if use_alpha else None)


def chunk_for(source: Tensor | FrameStack, options: FuseOptions, device: torch.device) -> int:
    """The frames read at once on ``device``: ``options.chunk``, else as many as its
    memory (and ``options.memory_budget``) holds in flight (``default_chunk``)."""
    if options.chunk is not None:
        return options.chunk
    channels, (height, width) = (
        (source.shape[1], source.shape[-2:]) if isinstance(source, Tensor) else (source.samples, source.size)
    )
    return default_chunk(device, channels, height, width, resolve_dtype(options.dtype), options.memory_budget)


def check_fits(stack: FrameStack, options: FuseOptions, device: torch.device) -> None:
    """``FrameStack.check_fits`` for the run's device, the GPU's free memory included."""
    on_gpu = device.type == "cuda"
    stack.check_fits(options, on_gpu, free_memory(device) if on_gpu else None)


def align_stack(
    source: Source, options: FuseOptions | None = None, *, progress: Progress | None = None, **changes
) -> tuple[StackAligner, Iterator[tuple[int, Tensor]]]:
    """Align a stack to its reference frame without fusing it.

    Args:
        source: as for ``StackFuser.run``.
        options: its ``align``, ``device``, ``dtype`` and ``chunk`` are used
            (``align=None`` is taken for the default alignment).
        progress: as for ``StackFuser.run``.

    Returns:
        The aligner (its ``results`` hold the transforms once the frames are read) and
        the frames, ``(index, frame)``, each ``(C, H, W)`` float32 in [0, 1] on the CPU,
        on the reference's grid (pixels no data covers are filled from the frame's edge).
    """
    options = FuseOptions.of(options, **changes)
    align = options.align or FuseOptions().align
    source = _as_source(source, options)
    device, dtype = resolve_device(options.device), resolve_dtype(options.dtype)
    if isinstance(source, FrameStack):
        check_fits(source, options, device)
    aligner = StackAligner(align)
    aligner.names = source.names if isinstance(source, FrameStack) else None
    alpha = isinstance(source, FrameStack) and source.alpha

    def split(frames):  # the image, and its alpha (used as a mask, not written)
        return _split_alpha(to_float(_batch(frames), device, dtype), alpha, options.use_alpha)
    total, chunk = len(source), chunk_for(source, options, device)
    counters = {"estimated": 0, "aligned": 0}

    def estimate(frames, timer):
        frames, mask = split(frames)
        aligner.estimate(frames, counters["estimated"], mask)
        counters["estimated"] += len(frames)
        return ()

    def align_frames(frames, timer):
        frames, mask = split(frames)
        start = counters["aligned"]
        counters["aligned"] += len(frames)
        aligned, _ = aligner.align(frames, start, mask=mask)
        return [(start + i, frame.float().clamp(0, 1).cpu()) for i, frame in enumerate(aligned)]

    passes = [("aligning", align_frames)]
    if align.reference != 0:
        _check_reference(align.reference, total)
        passes.insert(0, ("estimating motion", estimate))

    def frames() -> Iterator[tuple[int, Tensor]]:
        for done in _passes(source, chunk, passes, total, progress, NO_TIMER, device):
            yield from done

    return aligner, frames()


def _memory_advice(stage: str, error: BaseException, device: torch.device, options: FuseOptions, chunk: int) -> str:
    """One line for running out of memory: where, how much was asked for, what to try."""
    where = "GPU" if device.type == "cuda" else "host"
    tips = ["a smaller --memory-budget, which sizes chunks and tiles"]
    if options.tile == 0:
        tips.append("tiles (--tile is 0: tiling is off)")
    elif options.tile:
        tips.append(f"smaller tiles (--tile {options.tile})")
    if chunk > 1:
        tips.append(f"fewer frames at once (--chunk {chunk})")
    return f"out of {where} memory while {stage}{failed_allocation(error)}; try " + ", or ".join(tips)


def _check_reference(reference: int, total: int) -> None:
    if not 0 <= reference < total:
        raise OptionError("align.reference", reference, f"the stack has {total} frames (0 to {total - 1})")


def _pinned(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An array in page-locked memory (torch's caching host allocator: the blocks are
    reused once their copies are done), for the decoders to fill."""
    return torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype, pin_memory=True).numpy()


def _upload_ahead(chunks: Iterable[np.ndarray], device: torch.device) -> Iterator[Tensor]:
    """Decoded chunks to a CUDA device: copied on a side stream one chunk ahead, from
    pinned memory (chunks decoded there, ``_pinned``, else pinned here).

    The copy of chunk k+1 (uint8 or uint16, 1-2 bytes a sample) runs while chunk k is
    fused; the fusion's stream waits for a chunk's copy before it uses it, and the
    conversion to float happens on the device.
    """
    stream = torch.cuda.Stream(device)
    ahead: tuple[Tensor, torch.cuda.Event, Tensor] | None = None
    for array in chunks:
        host = torch.from_numpy(array)
        host = host if host.is_pinned() else host.pin_memory()
        with torch.cuda.stream(stream):
            copied = host.to(device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        if ahead is not None:
            yield _arrived(*ahead[:2])
        ahead = (copied, done, host)  # the host buffer lives until its copy is done
    if ahead is not None:
        yield _arrived(*ahead[:2])


def _arrived(copied: Tensor, done: torch.cuda.Event) -> Tensor:
    return arrived(copied, done).permute(0, 3, 1, 2)  # (B, H, W, C) as decoded -> (B, C, H, W), a view


def _passes(source, chunk: int, passes, total: int, progress: Progress | None, timer: StageTimer, device):
    """Read the stack once per pass (``(stage, handle)``), feeding each chunk to the pass;
    yield what it returned after each chunk.

    ``progress`` counts the frames of each pass. For a CUDA ``device``, JPEG stacks are
    decoded there (``FrameStack.chunks_on``); others are decoded on the host, in as many
    threads as torch has (its cores; on the CPU the fusion takes them, and two decode),
    and go through ``_upload_ahead``.
    """
    for stage, handle in passes:
        done = 0
        if isinstance(source, Tensor):
            chunks = _tensor_chunks(source, chunk)
        elif device is not None and source.decodable_on(device):
            chunks = source.chunks_on(chunk, device, timer)
        elif device is not None and device.type == "cuda":  # the host's cores are the decoders'
            workers = max(2, torch.get_num_threads())
            chunks = _upload_ahead(source.chunks(chunk, workers, timer, into=_pinned), device)
        else:
            chunks = source.chunks(chunk, timer=timer)
        for frames in chunks:
            result = handle(frames, timer)
            done += len(frames)
            if progress is not None:
                progress(done, total, stage)
            yield result


def _batch(frames: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """One ``(C, H, W)`` frame as a batch of one."""
    return frames.unsqueeze(0) if isinstance(frames, Tensor) and frames.dim() == 3 else frames


def _tensor_chunks(frames: Tensor, chunk: int) -> Iterable[Tensor]:
    for start in range(0, frames.shape[0], chunk):
        yield frames[start : start + chunk]


def fuse(
    source: Source,
    options: FuseOptions | None = None,
    *,
    progress: Progress | None = None,
    timer: StageTimer = NO_TIMER,
    on_device: bool = False,
    **changes,
) -> Tensor:
    """Fuse a focus stack into one image sharp throughout: ``StackFuser(options).run(source)``.

    Args:
        source: an ``(N, C, H, W)`` tensor (``uint8``, ``uint16`` or float in [0, 1]),
            a ``FrameStack``, a directory, or a list of image files.
        options: the settings (``FuseOptions``); ``None`` for the defaults.
        progress, timer, on_device: see ``StackFuser.run``.
        **changes: settings that replace those of ``options``, by name
            (``fuse(frames, method="wang-chang", align=False)``).

    Returns:
        The fused image, ``(C, H, W)`` float32 in [0, 1], on the CPU (or see ``on_device``).

    Raises:
        GpufocusError: bad input (fewer than 2 frames, unreadable files, frames of
            different sizes, ...); ``OptionError`` for settings.
    """
    return StackFuser(options, **changes).run(source, progress=progress, timer=timer, on_device=on_device)
