"""A function of tensors replayed as a CUDA graph: its thousands of small operations
launched as one.

The alignment's estimation of a chunk (``gpufocus.align``) is about 3,800 operations on
small tensors (0.51 s for 100 frames of 24 MP on the H200, bench/RESULTS.md: bound by
launching them, not by the bytes they move). It reads nothing back to the host, so it
can be captured once and replayed for every chunk of the same shape.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .errors import GpufocusWarning
from .nvcodec import CODEC_CALLS

__all__ = ["GraphFallbackWarning", "GraphedFunction", "graphs_enabled"]

log = logging.getLogger(__name__)

_SEEN = "seen"  # a shape run once as it is: the next call captures it


def graphs_enabled() -> bool:
    """Whether functions are replayed as CUDA graphs: yes, unless ``GPUFOCUS_CUDA_GRAPHS=0``."""
    return os.environ.get("GPUFOCUS_CUDA_GRAPHS") != "0"


class GraphFallbackWarning(GpufocusWarning):
    """A function could not be captured as a CUDA graph here; its operations run one by one."""


@dataclass
class _Graph:
    graph: Any  # torch.cuda.CUDAGraph, or a stand-in (tests)
    inputs: list[Tensor]  # the captured inputs: each call's are copied into them
    outputs: tuple[Tensor, ...]  # overwritten by every replay


def _capture(fn: Callable[..., tuple[Tensor, ...]], static: Hashable, inputs: list[Tensor]) -> _Graph:
    """``fn`` captured on a side stream, as ``torch.cuda.graph`` does it, without the
    emptying of torch's caches that it starts with (the GPU's and the pinned host
    memory's: the fusion's buffers would be allocated anew)."""
    device = inputs[0].device
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    # thread_local: the threads that read and encode go on meanwhile, but not while a GPU
    # codec works (CODEC_CALLS): what a library does on the GPU is not ours to vouch for
    with torch.cuda.stream(stream), CODEC_CALLS:
        graph.capture_begin(capture_error_mode="thread_local")
        try:
            outputs = fn(static, *inputs)
        except BaseException:
            with contextlib.suppress(Exception):  # the capture is void: its own error says less
                graph.capture_end()
            raise
        graph.capture_end()
    torch.cuda.current_stream(device).wait_stream(stream)
    return _Graph(graph, inputs, outputs)


class GraphedFunction:
    """``fn(static, *tensors)`` (a tuple of tensors; ``static``: hashable settings),
    replayed as a CUDA graph for each ``static`` and input shapes it has met twice.

    The first call with a shape runs ``fn`` as it is (this warms up the libraries it
    calls); the second captures it on inputs of its own, and from then on each call
    copies its inputs into those, replays the graph and copies the outputs out. ``fn``
    must not read anything back to the host, nor depend on anything but its arguments.
    Off CUDA, with ``GPUFOCUS_CUDA_GRAPHS=0``, or once a capture has failed (one
    warning), ``fn`` runs as it is. The last ``keep`` graphs used are kept, with the
    memory they hold (a batch of stacks of one size replays one graph throughout).

    Args:
        fn: the function.
        name: what it does, for the warning.
        keep: how many graphs to keep; the least recently used goes first.
        capture: makes a graph: ``capture(fn, static, inputs) -> _Graph`` (the tests
            give a stand-in that runs on the CPU).
    """

    def __init__(self, fn: Callable[..., tuple[Tensor, ...]], name: str, keep: int = 4, capture=_capture) -> None:
        self.fn, self.name, self.keep, self._make = fn, name, keep, capture
        self._graphs: dict[Hashable, _Graph | str] = {}  # by use, the least recent first
        self._failed = False

    def active(self, device: torch.device) -> bool:
        """Whether calls on ``device`` go through graphs."""
        return graphs_enabled() and not self._failed and (device.type == "cuda" or self._make is not _capture)

    def __call__(self, static: Hashable, *inputs: Tensor) -> tuple[Tensor, ...]:
        if not self.active(inputs[0].device):
            return self.fn(static, *inputs)
        key = (static, tuple((t.shape, t.dtype, t.device) for t in inputs))
        graph = self._graphs.pop(key, None)
        self._graphs[key] = _SEEN if graph is None else graph  # the most recent now
        for old in list(self._graphs)[: -self.keep]:
            del self._graphs[old]
        if graph is None:
            return self.fn(static, *inputs)
        if graph is _SEEN:
            try:
                graph = self._graphs[key] = self._make(self.fn, static, [t.clone() for t in inputs])
            except torch.cuda.OutOfMemoryError:
                raise
            except Exception as error:  # noqa: BLE001 - whatever stops the capture: not here
                self._failed, self._graphs = True, {}
                first = (str(error).strip().splitlines() or [""])[-1][:200]
                warnings.warn(
                    f"{self.name} cannot be captured as a CUDA graph here ({type(error).__name__}: {first}); "
                    "running its operations one by one from now on",
                    GraphFallbackWarning,
                    stacklevel=2,
                )
                return self.fn(static, *inputs)
            log.info("%s captured as a CUDA graph for inputs of %s", self.name, [tuple(t.shape) for t in inputs[:1]])
        for captured, given in zip(graph.inputs, inputs):
            captured.copy_(given)
        graph.graph.replay()
        return tuple(out.clone() for out in graph.outputs)
