"""One stack to files: every check first, then the fusion, then all outputs together.

``gpufocus fuse`` runs one ``FusionJob``; ``gpufocus batch`` one per stack folder.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .color import linear_to_srgb
from .errors import GpufocusError
from .load import FrameStack
from .memory import failed_allocation, out_of_memory
from .options import FuseOptions, OptionError, OutputOptions
from .timing import NO_TIMER, StageTimer
from .write import Outputs, check_distinct, check_output, check_output_file, output_format, to_array

__all__ = ["Targets", "FusionJob"]


@dataclass(frozen=True)
class Targets:
    """The files a fusion writes: the image, and optionally the depth map (an image) and
    the per-frame transforms (JSON)."""

    image: Path
    depth: Path | None = None
    transforms: Path | None = None

    def paths(self) -> list[Path]:
        return [Path(p) for p in (self.image, self.depth, self.transforms) if p is not None]

    def check(self, options: FuseOptions, output: OutputOptions, overwrite: bool, channels: int = 3) -> None:
        """What can be checked before the stack is read: formats, existing files,
        folders, no two targets on one file, settings that the targets need."""
        if self.transforms is not None and options.align is None:
            raise GpufocusError(f"{self.transforms}: saving the transforms needs alignment")
        if self.depth is not None and not options.depth_map:
            raise OptionError("depth_map", False, f"{self.depth} is asked for, but the fusion makes no depth map")
        check_output(self.image, output.bits or 8, overwrite, channels)
        if self.depth is not None:
            check_output(self.depth, 8, overwrite)
        if self.transforms is not None:
            check_output_file(self.transforms, overwrite)
        check_distinct(self.paths())


class FusionJob:
    """A stack, its targets and its settings, checked before any work.

    Args:
        stack: the frames.
        targets: what to write.
        options: how to fuse (``depth_map`` must be on for a depth-map target).
        output: bits and JPEG quality.
        overwrite: replace existing targets.
        steps: write the intermediate results there as they come (``gpufocus.steps``).

    Raises:
        GpufocusError: a target that cannot be written or that is one of the frames.
    """

    def __init__(
        self,
        stack: FrameStack,
        targets: Targets,
        options: FuseOptions,
        output: OutputOptions,
        overwrite: bool = False,
        steps=None,
    ) -> None:
        targets.check(options, output, overwrite, stack.channels)
        check_distinct(targets.paths(), stack.paths)
        fmt = check_output(targets.image, output.bits or 8, overwrite, stack.channels)
        self.bits = output.bits or (stack.bits if fmt != "JPEG" else 8)  # the input's, where the format holds it
        self.stack, self.targets, self.options, self.output, self.overwrite = stack, targets, options, output, overwrite
        self.steps = steps
        self.fuser = None
        self.image = None
        self.depth = None
        self._written = None  # the image and depth map as written (``settle``)

    def fuse(self, progress=None, timer: StageTimer = NO_TIMER) -> None:
        """Fuse the stack (see ``StackFuser.run``)."""
        from .engine import StackFuser

        self.fuser = StackFuser(self.options, steps=self.steps)
        # left on the GPU: written from there (made integers, or encoded, before it moves)
        self.image = self.fuser.run(self.stack, progress=progress, timer=timer, on_device=True)
        if self.options.depth_map:
            with _memory_for("making the depth map"):
                self.depth = self.fuser.depth_map()

    def settle(self) -> None:
        """Make the results what their files hold, in the calling thread: the sRGB curve
        for RAW frames (fused in linear light), the depth map scaled to [0, 1]; results on
        the CPU made integers (``write`` makes those on a GPU integers there, or encodes
        them there). ``write`` calls it if nobody has.

        ``gpufocus batch`` calls it before it hands ``write`` to a thread: torch's CPU
        operations in a second thread start a second OpenMP team, and while that thread
        lives the fusion's parallel operations in this one ran 2 to 3 times slower
        (bench/RESULTS.md, Batch).
        """
        if self.image is None:
            raise GpufocusError("write(): fuse() first")
        if self._written is not None:
            return
        with _memory_for("writing the results"):
            image = linear_to_srgb(self.image) if self.stack.linear else self.image
            depth = None if self.targets.depth is None else (self.depth / max(len(self.stack) - 1, 1))[None]
            if image.device.type == "cpu":
                image = to_array(image, self.bits)
                depth = None if depth is None else to_array(depth, self._depth_bits())
            self._written = image, depth

    def _depth_bits(self) -> int:
        return 8 if output_format(self.targets.depth) == "JPEG" else 16

    def write(self, timer: StageTimer = NO_TIMER) -> None:
        """Write every target, all or none, with the reference frame's EXIF and ICC profile.

        A stack of RAW frames is fused in linear light and written with the sRGB curve
        (``settle``). ``timer`` charges the encoders' time to the busy time of ``write``
        (``Outputs``).
        """
        self.settle()
        image, depth = self._written
        align = self.options.align
        reference = self.stack.infos[align.reference if align else 0]
        with _memory_for("writing the results"), Outputs(timer) as out:
            out.image(
                self.targets.image, image, bits=self.bits, quality=self.output.quality, exif=reference.exif,
                icc=reference.icc, overwrite=self.overwrite, role="fused image", compression=self.output.compression,
            )
            if depth is not None:
                out.image(
                    self.targets.depth, depth, bits=self._depth_bits(), overwrite=self.overwrite, role="depth map",
                    compression=self.output.compression,
                )
            if self.targets.transforms is not None:
                out.json(self.targets.transforms, self.transforms_report(), self.overwrite)

    def transforms_report(self) -> dict:
        """The per-frame transforms as JSON-ready data (``gpufocus.align.transforms_to_json``)."""
        from .align import transforms_to_json

        height, width = self.stack.size
        names = self.stack.names
        return transforms_to_json(self.fuser.transforms, names, height, width, self.options.align)


@contextmanager
def _memory_for(stage: str):
    """Running out of host memory in ``stage``: one line (the fusion says more of its own)."""
    try:
        yield
    except (MemoryError, RuntimeError) as error:
        if not out_of_memory(error):
            raise
        raise GpufocusError(f"out of host memory while {stage}{failed_allocation(error)}") from None
