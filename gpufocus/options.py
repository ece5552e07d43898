"""Every setting of the library, once: the choices, the defaults and their checks.

``FuseOptions`` (with ``AlignOptions`` inside) is the single definition of how a stack
is fused; ``OutputOptions`` of how a result is written. ``StackFuser``, ``fuse``,
``gpufocus.batch`` and the command line all take them. A setting out of range raises
``OptionError``, which names the field as the library spells it (``kernel_size``,
``align.reference``), so that a front end can name it its own way (the command line
says ``--kernel-size``).

This module imports nothing heavy (no torch): the command line builds its options
and their help from it before it knows whether it will fuse anything.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from .errors import GpufocusError

__all__ = [
    "METHODS",
    "DEFAULT_KERNEL_SIZE",
    "MAX_KERNEL_SIZE",
    "ALIGN_MODELS",
    "DTYPES",
    "COMPRESSIONS",
    "SYNTH_FAMILIES",
    "OptionError",
    "AlignOptions",
    "FuseOptions",
    "OutputOptions",
    "parse_size",
]

#: Selection rules (see ``gpufocus.rules``).
METHODS = ("max-energy", "wang-chang", "max-log")
#: Each rule's window of its local measure, when ``kernel_size`` is not given.
DEFAULT_KERNEL_SIZE = {"max-energy": 9, "wang-chang": 5, "max-log": 3}
MAX_KERNEL_SIZE = 15
#: Motion models of the alignment, fewest parameters first (see ``gpufocus.align``).
ALIGN_MODELS = ("translation", "similarity", "affine", "homography")
#: Arithmetic precisions.
DTYPES = ("float32", "float16", "bfloat16")
#: TIFF compressions of the output, all lossless (see ``gpufocus.encode``).
COMPRESSIONS = ("deflate", "lzw", "zstd", "none")
#: Depth maps of ``gpufocus.synth``'s generated stacks.
SYNTH_FAMILIES = ("objects", "plane", "smooth")

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?|meta)$")


class OptionError(GpufocusError):
    """A setting that cannot be used.

    Attributes:
        field: the setting as the library names it (``kernel_size``, ``align.reference``).
        value: what was given.
        problem: what is wrong with it, one line.
    """

    def __init__(self, field: str, value, problem: str) -> None:
        self.field, self.value, self.problem = field, value, problem
        super().__init__(f"{field}={value!r}: {problem}")


def parse_size(text: str | int, field: str = "memory_budget") -> int:
    """Bytes from ``'4G'``, ``'512M'``, ``'2.5GB'`` or a number."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
        number = str(text).strip().upper().removesuffix("B").removesuffix("I")
        unit = number[-1] if number and number[-1] in units else ""
        try:
            value = float(number[: len(number) - len(unit)]) * units[unit]
        except ValueError:
            raise OptionError(field, text, "use a size such as 4G or 512M") from None
    if value <= 0:
        raise OptionError(field, text, "must be more than 0")
    return int(value)


def _one_of(name: str, value, choices) -> None:
    if value not in choices:
        raise OptionError(name, value, f"use one of {', '.join(map(str, choices))}")


@dataclass(frozen=True)
class AlignOptions:
    """How to align a stack.

    Args:
        model: motion model, one of ``ALIGN_MODELS``.
        reference: index of the frame whose grid the output takes (0: the first).
        match_exposure: scale each frame's channels so that their mean brightness
            matches the reference's (exposure flicker must not look like sharpness).
        crop: crop the result to the region that every frame covers (otherwise the
            reference's size, uncovered parts filled from the frames that cover them).
        size: the longer side, in pixels, that motion is estimated at (frames are
            reduced by halves until they fit); 0: full resolution.
        global_align: refine each frame's motion against the reference frame itself,
            starting from the chain of neighbour steps (for stacks that move one way
            and keep much in common with the reference).
    """

    model: str = "similarity"
    reference: int = 0
    match_exposure: bool = True
    crop: bool = False
    size: int = 1024
    global_align: bool = False

    def __post_init__(self) -> None:
        _one_of("align.model", self.model, ALIGN_MODELS)
        if not isinstance(self.reference, int) or self.reference < 0:
            raise OptionError("align.reference", self.reference, "must be a frame index, 0 or more")
        if self.size != 0 and self.size < 64:
            raise OptionError("align.size", self.size, "must be 0 (full resolution) or at least 64 pixels")


@dataclass(frozen=True)
class FuseOptions:
    """How a stack is fused. Every field has its default here and nowhere else.

    Args:
        method: the selection rule, one of ``METHODS``.
        levels: detail levels of the pyramid; ``None`` chooses from the frame size.
        kernel_size: window of the rule's local measure, odd, 1 to ``MAX_KERNEL_SIZE``;
            ``None`` for the method's default (``DEFAULT_KERNEL_SIZE``).
        per_channel: decide per colour channel instead of once per pixel (images
            whose channels are not red, green and blue always are).
        use_alpha: a frame's alpha channel is a mask: its transparent pixels (below
            half opacity) never win. ``False`` fuses them as image.
        device: ``'auto'`` (CUDA when available), ``'cpu'``, ``'cuda'`` or ``'cuda:N'``;
            ``'meta'`` computes nothing, for ``gpufocus.traffic`` (it plans the CUDA path).
        dtype: arithmetic precision, one of ``DTYPES``.
        chunk: frames read and aligned at once (on the CPU fused at most 2 at a time:
            ``gpufocus.device.fusion_chunk``); ``None`` chooses from free memory. The
            result does not depend on it.
        align: ``AlignOptions``, or ``None`` to fuse the frames as they are (``True``
            and ``False`` are taken for the default alignment and none).
        halo_guard: for ``max-energy``: at depth edges, the finest detail comes from the
            frame in focus there, not from one whose strong edge beside it spills over
            (``gpufocus.halo``); other methods ignore it.
        consistency: halo control for ``max-energy``: 0 off, 1 or 2 (reads the stack twice).
        tile: fuse in tiles of about this many pixels a side (the same result);
            ``None`` tiles only where memory needs it, 0 never. Not for ``wang-chang``.
        memory_budget: bytes the fusion may use (or ``'4G'``); ``None``: a quarter of
            the free memory. It sizes chunks and tiles.
        max_megapixels: frames larger than this are refused from their header, before
            anything is decoded (a few bytes can claim a frame that fills the memory);
            frames that would not fit the memory the run may use are refused too.
        strict: a file its decoder reads although it finds it damaged (TIFF tags that
            contradict the data) is an error; without, a warning.
        depth_map: also work out which frame is in focus where.
        depth_threshold: depth-map pixels whose confidence (0 to 1: how far the
            sharpest frame stands out) is below this are filled from surer ones.
        depth_smooth: radius in pixels of the edge-aware (guided) smoothing of the
            depth map; 0 for none.
    """

    method: str = "max-energy"
    levels: int | None = None
    kernel_size: int | None = None
    per_channel: bool = False
    use_alpha: bool = True
    device: str = "auto"
    dtype: str = "float32"
    chunk: int | None = None
    align: AlignOptions | None = field(default_factory=AlignOptions)
    halo_guard: bool = True
    consistency: int = 0
    tile: int | None = None
    memory_budget: int | None = None
    max_megapixels: float = 200.0
    strict: bool = False
    depth_map: bool = False
    depth_threshold: float = 0.05
    depth_smooth: int = 2

    def __post_init__(self) -> None:
        if self.align is True or self.align is False:
            object.__setattr__(self, "align", AlignOptions() if self.align else None)
        if self.align is not None and not isinstance(self.align, AlignOptions):
            raise OptionError("align", self.align, "use AlignOptions, True, False or None")
        # torch.device and torch.dtype are taken too, as their names.
        object.__setattr__(self, "device", str(self.device))
        object.__setattr__(self, "dtype", str(self.dtype).removeprefix("torch."))
        if self.memory_budget is not None:
            object.__setattr__(self, "memory_budget", parse_size(self.memory_budget))
        _one_of("method", self.method, METHODS)
        _one_of("dtype", self.dtype, DTYPES)
        if not _DEVICE.match(self.device):
            raise OptionError("device", self.device, "use auto, cpu, cuda or cuda:N")
        if self.kernel_size is not None and not (1 <= self.kernel_size <= MAX_KERNEL_SIZE and self.kernel_size % 2):
            raise OptionError("kernel_size", self.kernel_size, f"must be odd, from 1 to {MAX_KERNEL_SIZE}")
        for name in ("levels", "chunk"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise OptionError(name, getattr(self, name), "must be at least 1")
        if not 0 <= self.depth_threshold <= 1:
            raise OptionError("depth_threshold", self.depth_threshold, "must be from 0 to 1")
        if self.depth_smooth < 0:
            raise OptionError("depth_smooth", self.depth_smooth, "must be 0 (none) or a radius in pixels")
        if not self.max_megapixels > 0:
            raise OptionError("max_megapixels", self.max_megapixels, "must be more than 0")
        if self.tile is not None and self.tile < 0:
            raise OptionError("tile", self.tile, "must be 0 (never) or a size in pixels")
        if self.tile and self.method == "wang-chang":
            raise OptionError("tile", self.tile, "wang-chang cannot be tiled (its entropy takes histograms of whole levels)")
        _one_of("consistency", self.consistency, (0, 1, 2))
        if self.consistency and self.method != "max-energy":
            raise OptionError("consistency", self.consistency, f"halo control is for max-energy, not {self.method}")

    @property
    def window(self) -> int:
        """The local measure's window: ``kernel_size``, or the method's default."""
        return self.kernel_size or DEFAULT_KERNEL_SIZE[self.method]

    def replace(self, **changes) -> FuseOptions:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def of(cls, options: FuseOptions | None = None, **changes) -> FuseOptions:
        """``options`` (or the defaults) with ``changes``: what ``fuse(source, options,
        **changes)`` and ``StackFuser(options, **changes)`` take."""
        base = options if options is not None else cls()
        if not isinstance(base, cls):
            raise TypeError(f"options must be FuseOptions, not {type(base).__name__}")
        unknown = set(changes) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown fusion settings: {', '.join(sorted(unknown))}")
        return base.replace(**changes) if changes else base


@dataclass(frozen=True)
class OutputOptions:
    """How a result is written.

    Args:
        bits: 8 or 16 bits per channel; ``None``: the input's where the format holds
            it (8 for JPEG).
        quality: JPEG quality, 1 to 100.
        compression: TIFF compression, lossless: ``deflate`` (every reader has it),
            ``lzw``, ``zstd`` (fastest, newer readers only) or ``none``.
    """

    bits: int | None = None
    quality: int = 95
    compression: str = "deflate"

    def __post_init__(self) -> None:
        _one_of("compression", self.compression, COMPRESSIONS)
        if self.bits is not None:
            _one_of("bits", self.bits, (8, 16))
        if not 1 <= self.quality <= 100:
            raise OptionError("quality", self.quality, "must be from 1 to 100")
