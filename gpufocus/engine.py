"""The streaming fusion engine and the ``fuse`` entry point."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .align import MODELS as ALIGN_MODELS
from .align import AlignOptions, FrameTransform, StackAligner, apply_transform, inner_rectangle
from .depth import DepthMap
from .device import default_chunk, frame_budget, resolve_device, resolve_dtype, working_bytes
from .errors import GpufocusError
from .load import FrameStack
from .pyramid import auto_levels, max_levels
from .rules import DEFAULT_KERNEL_SIZE, METHODS, SelectionRule, make_rule
from .tiling import Tile, auto_tile, plan_tiles, tile_margin
from .timing import NO_TIMER, StageTimer

__all__ = ["StackFuser", "fuse", "align_stack", "to_float"]

_MAX_KERNEL_SIZE = 15

Progress = Callable[[int, int], None]


def to_float(frames: Tensor | np.ndarray, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Frames as floats in [0, 1] on ``device``.

    Integer frames move to the device as they are (1 or 2 bytes a sample) and are
    scaled there; ``(B, H, W, C)`` arrays (as decoded) become ``(B, C, H, W)``.
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
    out.copy_(frames)
    return out if top is None else out.div_(top)


class StackFuser:
    """Fuses a stack fed chunk by chunk; memory stays that of one chunk plus the result.

    Args:
        method: ``'max-energy'`` (default), ``'wang-chang'`` or ``'max-log'``.
        levels: detail levels of the pyramid; ``None`` chooses from the frame size.
        kernel_size: window of the rule's local measure (odd); ``None`` for the
            method's default.
        per_channel: decide per colour channel instead of once per pixel.
        device: ``'auto'``, ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.
        dtype: ``'float32'``, ``'float16'`` or ``'bfloat16'``.
        align: how to align the frames (``gpufocus.align.AlignOptions``), or ``None``
            to fuse them as they are. With a reference other than frame 0, every
            chunk goes through ``estimate`` before any goes through ``add``.
        names: frame names for warnings (file names, say).
        depth_map: also work out which frame is in focus where (``depth_map()``).
        consistency: halo control for ``max-energy``, 0, 1 or 2 (see ``rules.MaxEnergy``);
            above 0, every chunk goes through ``refold`` after all went through ``add``.
        tile: fuse in tiles of about this many pixels a side, with overlaps that make
            the result the same as without (``gpufocus.tiling``); ``None`` tiles only when
            one frame's working memory would not fit in the device's budget, 0 never.
            Not for ``wang-chang``, whose entropy takes histograms of whole levels.
        memory_budget: bytes the fusion may use; it sizes chunks (see ``fuse``) and
            tiles. ``None``: a quarter of the free memory.

    Example:
        >>> fuser = StackFuser(device="cpu")
        >>> for chunk in chunks:          # (B, C, H, W) uint8, uint16 or float tensors
        ...     fuser.add(chunk)
        >>> image = fuser.result()        # (C, H, W) float32 in [0, 1]
    """

    def __init__(
        self,
        method: str = "max-energy",
        *,
        levels: int | None = None,
        kernel_size: int | None = None,
        per_channel: bool = False,
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "float32",
        align: AlignOptions | None = AlignOptions(),
        names: list[str] | None = None,
        depth_map: bool = False,
        consistency: int = 0,
        tile: int | None = None,
        memory_budget: int | None = None,
    ) -> None:
        if method not in METHODS:
            raise GpufocusError(f"--method {method}: use one of {', '.join(METHODS)}")
        if kernel_size is not None and not (1 <= kernel_size <= _MAX_KERNEL_SIZE and kernel_size % 2):
            raise GpufocusError(f"--kernel-size {kernel_size}: must be odd, from 1 to {_MAX_KERNEL_SIZE}")
        if levels is not None and levels < 1:
            raise GpufocusError(f"--levels {levels}: must be at least 1")
        if consistency not in (0, 1, 2):
            raise GpufocusError(f"--consistency {consistency}: use 0, 1 or 2")
        if consistency and method != "max-energy":
            raise GpufocusError(f"--consistency {consistency}: halo control is for max-energy, not {method}")
        self.consistency = consistency
        self._refolded = 0
        self.method = method
        self.levels = levels
        self.kernel_size = kernel_size or DEFAULT_KERNEL_SIZE[method]
        self.per_channel = per_channel
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.align = align
        self._aligner = None
        if align is not None:
            if align.model not in ALIGN_MODELS:
                raise GpufocusError(f"--align-model {align.model}: use one of {', '.join(ALIGN_MODELS)}")
            if align.reference < 0:
                raise GpufocusError(f"--reference {align.reference}: must be a frame index, 0 or more")
            self._aligner = StackAligner(align.model, align.reference, align.match_exposure)
            self._aligner.names = names
        self._estimated = 0
        if tile is not None and tile < 0:
            raise GpufocusError(f"--tile {tile}: must be 0 (never) or a size in pixels")
        if tile and method == "wang-chang":
            raise GpufocusError("--tile: wang-chang cannot be tiled (its entropy takes histograms of whole levels)")
        self.tile = tile
        self.memory_budget = memory_budget
        self._want_depth = depth_map
        self._regions: list[_Region] = []
        self._covered: Tensor | None = None
        self._shape: tuple[int, int, int] | None = None

    @property
    def count(self) -> int:
        """Frames added so far."""
        return self._regions[0].rule.count if self._regions else 0

    @property
    def tiles(self) -> list[Tile]:
        """The tiles fused one by one (a single one covering the frame when not tiled)."""
        return [region.tile for region in self._regions]

    @property
    def needs_estimate(self) -> bool:
        """Whether every frame must go through ``estimate`` before ``add``."""
        return self.align is not None and self.align.reference != 0

    @property
    def needs_refold(self) -> bool:
        """Whether every frame must go through ``refold`` after ``add``."""
        return self.consistency > 0

    def refold(self, frames: Tensor | np.ndarray, timer: StageTimer = NO_TIMER) -> None:
        """Second pass (halo control): the frames again, in order, after all were added."""
        with timer.stage("upload"):
            frames = to_float(_batch(frames), self.device, self.dtype)
        for region, part, valid in self._regions_of(frames, self._refolded, timer):
            with timer.stage("fuse"):
                region.rule.refold(part, valid)
        self._refolded += frames.shape[0]

    @property
    def transforms(self) -> list[FrameTransform]:
        """How each frame added so far was aligned (empty without alignment)."""
        return [] if self._aligner is None else self._aligner.results

    def estimate(self, frames: Tensor | np.ndarray, timer: StageTimer = NO_TIMER) -> None:
        """First pass, for a reference other than frame 0: estimate the next frames' motion."""
        if not self.needs_estimate:
            return
        with timer.stage("upload"):
            frames = to_float(_batch(frames), self.device, self.dtype)
        with timer.stage("align"):
            self._aligner.estimate(frames, self._estimated)
        self._estimated += frames.shape[0]

    def _start(self, channels: int, height: int, width: int) -> None:
        deepest = max_levels(height, width)
        if deepest < 1:
            raise GpufocusError(f"{width}x{height} frames are too small (at least 8x8)")
        if self.levels is None:
            self.levels = auto_levels(height, width)
        elif self.levels > deepest and self.method != "max-log":
            raise GpufocusError(f"--levels {self.levels}: too deep for {width}x{height} frames (at most {deepest})")
        self._shape = (channels, height, width)
        margin = tile_margin(self.levels, self.kernel_size)
        tile = self.tile
        if tile is None and self.method != "wang-chang":
            budget = frame_budget(self.device, self.memory_budget)
            tile = auto_tile(budget, channels, height, width, working_bytes(self.dtype), margin)
        if tile:
            tiles = plan_tiles(height, width, tile, self.levels, self.kernel_size)
        else:
            tiles = [Tile((0, 0, height, width), (0, 0, height, width))]
        for t in tiles:
            rule = make_rule(self.method, self.levels, self.kernel_size, self.per_channel, self.consistency)
            self._regions.append(_Region(t, rule, DepthMap(*t.padded[2:]) if self._want_depth else None))

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
        with timer.stage("upload"):
            frames = to_float(raw, self.device, self.dtype)
        if frames.dim() != 4:
            raise GpufocusError(f"expected (B, C, H, W) frames, got shape {tuple(frames.shape)}")
        shape = tuple(frames.shape[1:])
        if self._shape is None:
            self._start(*shape)
        elif shape != self._shape:
            raise GpufocusError(
                f"frame {self.count}: shape {shape} differs from the first frame's {self._shape}; "
                "frames must be aligned to the same size"
            )
        if self._aligner is not None and self.needs_estimate and self.align.reference >= self._estimated:
            raise GpufocusError(f"--reference {self.align.reference}: the stack has {self._estimated} frames")
        first = self.count
        for region, part, valid in self._regions_of(frames, first, timer):
            with timer.stage("fuse"):
                if region.depth is not None:
                    region.depth.fold(part, valid, first)
                region.rule.fold(part, valid)

    def _regions_of(self, frames: Tensor, first: int, timer: StageTimer):
        """Each region (tile) with its part of the frames, aligned, and their validity.

        The motion is estimated once per frame on the whole frame; each tile is then
        resampled from it. Validity is ``None`` where every pixel is covered.
        """
        transforms = None
        if self._aligner is not None:
            with timer.stage("align"):
                transforms = [self._aligner.transform(frame[None], first + i) for i, frame in enumerate(frames)]
        for region in self._regions:
            top, left, height, width = region.tile.padded
            if transforms is None:
                yield region, frames[..., top : top + height, left : left + width], None
                continue
            with timer.stage("align"):
                parts = [apply_transform(frame[None], t, region.tile.padded) for frame, t in zip(frames, transforms)]
            part, valid = torch.cat([p for p, _ in parts]), torch.cat([v for _, v in parts])
            if self.align.crop:
                if self._covered is None:
                    self._covered = torch.ones(self._shape[1:], dtype=torch.bool, device=frames.device)
                self._covered[top : top + height, left : left + width] &= valid.all(dim=0)[0]
            yield region, part, (None if valid.all() else valid)  # all covered: the plain, faster path

    def result(self, timer: StageTimer = NO_TIMER) -> Tensor:
        """The fused image, ``(C, H, W)`` float32 in [0, 1] on the fusion device.

        ``timer`` charges the stage ``collapse``.
        """
        if self.count < 2:
            raise GpufocusError(f"a stack needs at least 2 frames, got {self.count}")
        with timer.stage("collapse"):
            image = self._assemble(lambda region: region.rule.result()[0].float().clamp_(0, 1))
        return self._cropped(image)

    def depth_map(self) -> Tensor:
        """``(H, W)`` float32 on the CPU: the index of the frame in focus at each pixel,
        interpolated between frames (0 = the first frame), cropped as the result is."""
        if not self._want_depth:
            raise ValueError("this StackFuser was made without depth_map=True")
        return self._cropped(self._assemble(lambda region: region.depth.result()[None]))[0].cpu()

    def _assemble(self, part_of) -> Tensor:
        """The whole picture from each region's ``part_of(region)``, ``(C, h, w)`` per tile."""
        if len(self._regions) == 1:
            return part_of(self._regions[0])
        image = None
        for region in self._regions:
            part = part_of(region)
            if image is None:
                image = part.new_empty(part.shape[0], *self._shape[1:])
            top, left, height, width = region.tile.core
            rows, columns = region.tile.core_in_padded()
            image[:, top : top + height, left : left + width] = part[:, rows, columns]
        return image

    def _cropped(self, image: Tensor) -> Tensor:
        if self._covered is None:
            return image
        top, bottom, left, right = inner_rectangle(self._covered)
        return image[:, top:bottom, left:right]


@dataclass
class _Region:
    """A tile of the grid and the running fusion of its part of the frames."""

    tile: Tile
    rule: SelectionRule
    depth: DepthMap | None


def _as_source(source) -> Tensor | FrameStack:
    if isinstance(source, Tensor):
        if source.dim() != 4:
            raise GpufocusError(f"expected an (N, C, H, W) stack, got shape {tuple(source.shape)}")
        return source
    return source if isinstance(source, FrameStack) else FrameStack(source)


def _names(source: Tensor | FrameStack) -> list[str] | None:
    return [p.name for p in source.paths] if isinstance(source, FrameStack) else None


def _chunk_for(
    source: Tensor | FrameStack, chunk: int | None, device: torch.device, dtype: torch.dtype, budget: int | None = None
) -> int:
    if chunk is not None and chunk < 1:
        raise GpufocusError(f"--chunk {chunk}: must be at least 1")
    if chunk is not None:
        return chunk
    channels, (height, width) = (source.shape[1], source.shape[-2:]) if isinstance(source, Tensor) else (3, source.size)
    return default_chunk(device, channels, height, width, dtype, budget)


def align_stack(
    source: Tensor | FrameStack | Sequence[str | os.PathLike] | str | os.PathLike,
    aligner: StackAligner,
    *,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "float32",
    chunk: int | None = None,
    progress: Progress | None = None,
) -> Iterator[tuple[int, Tensor]]:
    """Align a stack to its reference frame without fusing it.

    Args:
        source: as for ``fuse``.
        aligner: the ``StackAligner`` to use; its ``results`` hold the transforms after.
        device, dtype, chunk, progress: as for ``fuse``.

    Yields:
        ``(index, frame)``: each frame, ``(C, H, W)`` float32 in [0, 1] on the CPU, on
        the reference's grid (pixels no data covers are filled from the frame's edge).
    """
    source = _as_source(source)
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    aligner.names = aligner.names or _names(source)
    total, chunk = len(source), _chunk_for(source, chunk, device, dtype)
    counters = {"estimated": 0, "aligned": 0}

    def estimate(frames, timer):
        frames = to_float(_batch(frames), device, dtype)
        aligner.estimate(frames, counters["estimated"])
        counters["estimated"] += len(frames)
        return ()

    def align(frames, timer):
        frames = to_float(_batch(frames), device, dtype)
        start = counters["aligned"]
        counters["aligned"] += len(frames)
        aligned, _ = aligner.align(frames, start)
        return [(start + i, frame.float().clamp(0, 1).cpu()) for i, frame in enumerate(aligned)]

    passes = [align]
    if aligner.reference != 0:
        _check_reference(aligner.reference, total)
        passes.insert(0, estimate)
    for frames in _passes(source, chunk, passes, total, progress, NO_TIMER, device):
        yield from frames


def _check_reference(reference: int, total: int) -> None:
    if not 0 <= reference < total:
        raise GpufocusError(f"--reference {reference}: the stack has {total} frames (0 to {total - 1})")


def _upload_ahead(chunks: Iterable[np.ndarray], device: torch.device) -> Iterator[Tensor]:
    """Decoded chunks to a CUDA device: pinned, copied on a side stream one chunk ahead.

    The copy of chunk k+1 (uint8 or uint16, 1-2 bytes a sample) runs while chunk k is
    fused; the fusion's stream waits for a chunk's copy before it uses it, and the
    conversion to float happens on the device.
    """
    stream = torch.cuda.Stream(device)
    ahead: tuple[Tensor, torch.cuda.Event, Tensor] | None = None
    for array in chunks:
        host = torch.from_numpy(array).pin_memory()
        with torch.cuda.stream(stream):
            copied = host.to(device, non_blocking=True)
            done = torch.cuda.Event()
            done.record(stream)
        if ahead is not None:
            yield _arrived(*ahead)
        ahead = (copied, done, host)  # the host buffer lives until its copy is done
    if ahead is not None:
        yield _arrived(*ahead)


def _arrived(copied: Tensor, done: torch.cuda.Event, host: Tensor) -> Tensor:
    current = torch.cuda.current_stream(copied.device)
    current.wait_event(done)
    copied.record_stream(current)  # the allocator must not reuse it before the fusion is done
    return copied.permute(0, 3, 1, 2)  # (B, H, W, C) as decoded -> (B, C, H, W), a view


def _passes(source, chunk: int, passes, total: int, progress: Progress | None, timer: StageTimer, device=None):
    """Read the stack once per pass, feeding each chunk to the pass; yield after each chunk.

    ``progress`` counts frames over all passes. For a CUDA ``device``, JPEG stacks are
    decoded there (nvJPEG) where torchvision allows, others go through ``_upload_ahead``.
    """
    done = 0
    for handle in passes:
        if isinstance(source, Tensor):
            chunks = _tensor_chunks(source, chunk)
        elif device is not None and source.decodable_on(device):
            chunks = source.chunks_on(chunk, device, timer)
        elif device is not None and device.type == "cuda":
            chunks = _upload_ahead(source.chunks(chunk, timer=timer), device)
        else:
            chunks = source.chunks(chunk, timer=timer)
        for frames in chunks:
            result = handle(frames, timer)
            done += len(frames)
            if progress is not None:
                progress(done, total * len(passes))
            yield result


def _batch(frames: Tensor | np.ndarray) -> Tensor | np.ndarray:
    """One ``(C, H, W)`` frame as a batch of one."""
    return frames.unsqueeze(0) if isinstance(frames, Tensor) and frames.dim() == 3 else frames


def _tensor_chunks(frames: Tensor, chunk: int) -> Iterable[Tensor]:
    for start in range(0, frames.shape[0], chunk):
        yield frames[start : start + chunk]


def fuse(
    source: Tensor | FrameStack | Sequence[str | os.PathLike] | str | os.PathLike,
    *,
    method: str = "max-energy",
    levels: int | None = None,
    kernel_size: int | None = None,
    per_channel: bool = False,
    device: str | torch.device = "auto",
    dtype: str | torch.dtype = "float32",
    chunk: int | None = None,
    align: AlignOptions | bool | None = True,
    consistency: int = 0,
    tile: int | None = None,
    memory_budget: int | None = None,
    progress: Progress | None = None,
    timer: StageTimer = NO_TIMER,
    fuser: StackFuser | None = None,
) -> Tensor:
    """Fuse a focus stack into one image sharp throughout.

    Args:
        source: an ``(N, C, H, W)`` tensor (``uint8``, ``uint16`` or float in [0, 1]),
            a ``FrameStack``, a directory, or a list of image files.
        method, levels, kernel_size, per_channel, device, dtype: see ``StackFuser``.
        chunk: frames folded in at once; ``None`` chooses from free memory. The
            result does not depend on it.
        align: ``True`` (default: similarity, reference frame 0, exposure matched),
            ``False``/``None`` for none, or ``gpufocus.align.AlignOptions``. A reference
            other than 0 reads the stack twice: once to estimate, once to fuse.
        consistency: halo control, 0 (none), 1 or 2 (see ``StackFuser``); above 0 the
            stack is read once more.
        tile: tile size in pixels, ``None`` for tiles only where memory needs them, 0
            for none (see ``StackFuser``). The result does not depend on it.
        memory_budget: bytes the fusion may use (chunks and tiles are sized to it);
            ``None``: a quarter of the free memory.
        progress: called as ``progress(steps_done, steps_total)`` after each chunk (a
            step is a frame read; a reference other than 0 and halo control each add a
            pass over the stack).
        timer: charges the stages ``decode``, ``upload``, ``fuse``, ``collapse`` and
            ``download`` (see ``gpufocus.timing``), and ``align``.
        fuser: fuse with this ``StackFuser`` (its settings then replace the ones
            above), to read its ``transforms`` afterwards.

    Returns:
        The fused image, ``(C, H, W)`` float32 in [0, 1], on the CPU.

    Raises:
        GpufocusError: bad input (fewer than 2 frames, unreadable files, frames of
            different sizes, ...) or settings.
    """
    if align is True:
        align = AlignOptions()
    elif align is False:
        align = None
    source = _as_source(source)
    fuser = fuser or StackFuser(
        method, levels=levels, kernel_size=kernel_size, per_channel=per_channel, device=device, dtype=dtype,
        align=align, names=_names(source), consistency=consistency, tile=tile, memory_budget=memory_budget,
    )
    total, chunk = len(source), _chunk_for(source, chunk, fuser.device, fuser.dtype, fuser.memory_budget)
    passes = ([fuser.estimate] if fuser.needs_estimate else []) + [fuser.add]
    if fuser.needs_refold:
        passes.append(fuser.refold)
    if fuser.needs_estimate:
        _check_reference(fuser.align.reference, total)
    for _ in _passes(source, chunk, passes, total, progress, timer, fuser.device):
        pass
    image = fuser.result(timer)
    with timer.stage("download"):
        return image.cpu()
