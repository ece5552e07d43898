"""The streaming fusion engine and the ``fuse`` entry point."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from .device import default_chunk, resolve_device, resolve_dtype
from .errors import GpufocusError
from .load import FrameStack
from .pyramid import auto_levels, max_levels
from .rules import DEFAULT_KERNEL_SIZE, METHODS, SelectionRule, make_rule
from .timing import NO_TIMER, StageTimer

__all__ = ["StackFuser", "fuse", "to_float"]

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
        frames = frames.to(torch.int32)  # few ops take uint16
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
    ) -> None:
        if method not in METHODS:
            raise GpufocusError(f"--method {method}: use one of {', '.join(METHODS)}")
        if kernel_size is not None and not (1 <= kernel_size <= _MAX_KERNEL_SIZE and kernel_size % 2):
            raise GpufocusError(f"--kernel-size {kernel_size}: must be odd, from 1 to {_MAX_KERNEL_SIZE}")
        if levels is not None and levels < 1:
            raise GpufocusError(f"--levels {levels}: must be at least 1")
        self.method = method
        self.levels = levels
        self.kernel_size = kernel_size or DEFAULT_KERNEL_SIZE[method]
        self.per_channel = per_channel
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self._rule: SelectionRule | None = None
        self._shape: tuple[int, int, int] | None = None

    @property
    def count(self) -> int:
        """Frames added so far."""
        return 0 if self._rule is None else self._rule.count

    def _start(self, channels: int, height: int, width: int) -> None:
        deepest = max_levels(height, width)
        if deepest < 1:
            raise GpufocusError(f"{width}x{height} frames are too small (at least 8x8)")
        if self.levels is None:
            self.levels = auto_levels(height, width)
        elif self.levels > deepest and self.method != "max-log":
            raise GpufocusError(f"--levels {self.levels}: too deep for {width}x{height} frames (at most {deepest})")
        self._shape = (channels, height, width)
        self._rule = make_rule(self.method, self.levels, self.kernel_size, self.per_channel)

    def add(self, frames: Tensor | np.ndarray, timer: StageTimer = NO_TIMER) -> None:
        """Fold in the next frames: ``(B, C, H, W)`` or one ``(C, H, W)`` frame.

        Integer frames are scaled to [0, 1] (``uint8`` by 255, ``uint16`` by 65535);
        float frames are taken as they are. ``np.ndarray`` input is ``(B, H, W, C)``.
        ``timer`` charges the stages ``upload`` and ``fuse``.
        """
        if isinstance(frames, Tensor) and frames.dim() == 3:
            frames = frames.unsqueeze(0)
        with timer.stage("upload"):
            frames = to_float(frames, self.device, self.dtype)
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
        with timer.stage("fuse"):
            self._rule.fold(frames)

    def result(self, timer: StageTimer = NO_TIMER) -> Tensor:
        """The fused image, ``(C, H, W)`` float32 in [0, 1] on the fusion device.

        ``timer`` charges the stage ``collapse``.
        """
        if self.count < 2:
            raise GpufocusError(f"a stack needs at least 2 frames, got {self.count}")
        with timer.stage("collapse"):
            return self._rule.result()[0].float().clamp_(0, 1)


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
    progress: Progress | None = None,
    timer: StageTimer = NO_TIMER,
) -> Tensor:
    """Fuse a focus stack into one image sharp throughout.

    Args:
        source: an ``(N, C, H, W)`` tensor (``uint8``, ``uint16`` or float in [0, 1]),
            a ``FrameStack``, a directory, or a list of image files.
        method, levels, kernel_size, per_channel, device, dtype: see ``StackFuser``.
        chunk: frames folded in at once; ``None`` chooses from free memory. The
            result does not depend on it.
        progress: called as ``progress(frames_done, frames_total)`` after each chunk.
        timer: charges the stages ``decode``, ``upload``, ``fuse``, ``collapse`` and
            ``download`` (see ``gpufocus.timing``).

    Returns:
        The fused image, ``(C, H, W)`` float32 in [0, 1], on the CPU.

    Raises:
        GpufocusError: bad input (fewer than 2 frames, unreadable files, frames of
            different sizes, ...) or settings.
    """
    fuser = StackFuser(
        method, levels=levels, kernel_size=kernel_size, per_channel=per_channel, device=device, dtype=dtype
    )
    if isinstance(source, Tensor):
        if source.dim() != 4:
            raise GpufocusError(f"expected an (N, C, H, W) stack, got shape {tuple(source.shape)}")
        total, (channels, height, width) = source.shape[0], source.shape[1:]
    else:
        if not isinstance(source, FrameStack):
            source = FrameStack(source)
        total, (height, width), channels = len(source), source.size, 3
    if chunk is None:
        chunk = default_chunk(fuser.device, channels, height, width, fuser.dtype)
    elif chunk < 1:
        raise GpufocusError(f"--chunk {chunk}: must be at least 1")
    chunks = _tensor_chunks(source, chunk) if isinstance(source, Tensor) else source.chunks(chunk, timer=timer)
    for frames in chunks:
        fuser.add(frames, timer)
        if progress is not None:
            progress(fuser.count, total)
    image = fuser.result(timer)
    with timer.stage("download"):
        return image.cpu()
