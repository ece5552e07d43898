"""What a run moves through device memory, counted without a GPU.

On a GPU this fusion is memory-bound: its time is about the bytes it reads and writes
over the card's bandwidth. ``count_traffic`` runs the CUDA path's sequence of
operations on the meta device (shapes only, nothing computed) and counts, per stage:

- every aten operation (a ``TorchDispatchMode``): its tensor inputs read and its
  outputs written (an in-place operation's tensor both; ``copy_`` and ``out=`` only
  written), views and allocations moving nothing;
- every Triton kernel by its own loads and stores, the halo each tile re-reads
  counted (``gpufocus.kernels.dispatch.planning``: the launches are reported, not run).

A stage's figure is given per frame (operations) and per pixel-frame (bytes), beside
the floor (each 8-bit frame read once: 3 bytes a pixel-frame) and the time the bytes
take at a given bandwidth.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .options import FuseOptions

__all__ = ["StageTraffic", "count_traffic", "H200_BANDWIDTH"]

#: Device-to-device copy bandwidth measured on the H200 (bytes read + written a second).
H200_BANDWIDTH = 4.26e12

# Operations that make or describe tensors without moving their data.
_FREE = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}


@dataclass
class StageTraffic:
    """One stage's count: aten operations and Triton launches, bytes read and written."""

    operations: int = 0
    launches: int = 0
    read: int = 0
    written: int = 0
    by_name: dict[str, int] = field(default_factory=lambda: defaultdict(int))

    @property
    def bytes(self) -> int:
        return self.read + self.written


def _nbytes(value) -> int:
    return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0


class _Counter(TorchDispatchMode):
    """Adds each aten operation's bytes to the current stage."""

    def __init__(self) -> None:
        super().__init__()
        self.stages: dict[str, StageTraffic] = defaultdict(StageTraffic)
        self.stage = "other"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        schema = func._schema
        name = schema.name.split("::")[-1]
        views = any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns)
        if views or name in _FREE:
            return out
        kwargs = dict(kwargs or {})
        kwargs.pop("out", None)  # written, not read
        # copy_ writes its first argument without reading it; in-place operations read it
        read_args = args[1:] if name == "copy_" else args
        read = sum(_nbytes(t) for t in tree_flatten((read_args, kwargs))[0])
        written = sum(_nbytes(t) for t in tree_flatten(out)[0])
        counted = self.stages[self.stage]
        counted.operations += 1
        counted.read += read
        counted.written += written
        counted.by_name[name] += read + written
        return out

    def kernel(self, name: str, read: int, written: int) -> None:
        counted = self.stages[self.stage]
        counted.launches += 1
        counted.read += read
        counted.written += written
        counted.by_name[f"triton:{name}"] += read + written


class _Stages:
    """A ``StageTimer`` that switches the counter's stage instead of timing."""

    def __init__(self, counter: _Counter) -> None:
        self.counter = counter

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        before, self.counter.stage = self.counter.stage, name
        try:
            yield
        finally:
            self.counter.stage = before


def count_traffic(
    height: int, width: int, frames: int, chunk: int, options: FuseOptions | None = None, triton: bool = True,
    breathing: bool = False,
) -> dict[str, StageTraffic]:
    """Count what fusing ``frames`` 8-bit RGB frames of ``height`` x ``width`` moves on the
    CUDA path, ``chunk`` frames at a time, per stage (``upload``, ``align``, ``align, in
    its graph``, ``fuse``, ``collapse``).

    Args:
        options: the settings (defaults: ``FuseOptions()``). The fuse stage does not
            depend on the alignment for still frames (they pass as they are).
        triton: the Triton kernels (``False``: the torch twins, ``GPUFOCUS_TRITON=0``).
        breathing: every frame moves (its resampling is counted in ``align``).

    Returns:
        Each stage's ``StageTraffic``; ``align`` holds the motion estimation of every
        chunk (the op sequence the GPU runs) and, with ``breathing``, the resampling;
        ``align, in its graph`` the part of the estimation that a CUDA graph replays,
        launched as one a chunk (the pairs' steps and their checks, ``gpufocus.graphs``).
    """
    from .align import FrameTransform, StackAligner, apply_transforms
    from .engine import StackFuser
    from .kernels import dispatch

    options = FuseOptions.of(options, device="meta", chunk=chunk)
    counter = _Counter()
    stages = _Stages(counter)
    aligner = None if options.align is None else StackAligner(options.align)
    if aligner is not None:  # what a CUDA graph replays (gpufocus.graphs), counted apart
        steps = aligner._graphed

        def graphed(*args):
            with stages.stage("align, in its graph"):
                return steps(*args)  # not a graph on meta: the operations themselves

        graphed.active = lambda device: True  # the CUDA path
        aligner._graphed = graphed
    fuser = StackFuser(options.replace(align=None))
    moved = FrameTransform(torch.tensor([[1.003, 0.0, 0.2], [0.0, 1.003, -0.1], [0.0, 0.0, 1.0]], dtype=torch.float64))
    planning = dispatch.planning(counter.kernel) if triton else contextlib.nullcontext()
    with counter, planning:
        for start in range(0, frames, chunk):
            raw = torch.empty(min(chunk, frames - start), 3, height, width, dtype=torch.uint8, device="meta")
            if aligner is not None:
                with stages.stage("_input"):  # the engine aligns the frames it uploaded: not counted twice
                    floats = raw.to(torch.float32)
                with stages.stage("align"):
                    chain = aligner._chain_on_device(floats, start, None)[0]
                    if breathing:
                        apply_transforms(floats, [moved] * len(floats), (0, 0, height, width))
                aligner._chain.extend(chain)  # what the host keeps after its one read-back, which meta cannot do
            fuser.add(raw, stages)
        fuser.result(stages)
    return {stage: counted for stage, counted in counter.stages.items() if not stage.startswith("_")}


def report(traffic: dict[str, StageTraffic], height: int, width: int, frames: int,
           bandwidth: float = H200_BANDWIDTH) -> list[dict]:
    """Per stage: operations and launches per frame, bytes per pixel-frame, the floor
    (3 bytes, each 8-bit frame read once) and the time the bytes take at ``bandwidth``."""
    pixel_frames = height * width * frames
    rows = []
    for stage, counted in traffic.items():
        rows.append({
            "stage": stage,
            "operations_per_frame": counted.operations / frames,
            "launches_per_frame": counted.launches / frames,
            "bytes_per_pixel_frame": counted.bytes / pixel_frames,
            "floor_bytes_per_pixel_frame": 3.0,
            "predicted_ms_per_frame": counted.bytes / bandwidth / frames * 1e3,
            "largest": sorted(((name, b / pixel_frames) for name, b in counted.by_name.items()),
                              key=lambda item: -item[1])[:6],
        })
    return rows
