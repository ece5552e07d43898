"""Per-stage wall-clock timing for benchmarks; a no-op unless asked for.

A stage run by the caller's thread is charged the time it takes there (the pipeline
waits for all of it). A stage that runs in worker threads (decoding ahead, encoding the
outputs) is charged twice: ``seconds``, the time the caller waited for it (what it cost
the pipeline), and ``busy``, the time its workers spent on it (what it cost in all).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar


if TYPE_CHECKING:
    import torch

T = TypeVar("T")

__all__ = ["StageTimer", "NO_TIMER"]


class StageTimer:
    """Adds up the wall time spent in named stages.

    With a CUDA device it synchronises at both ends of every stage, so that queued
    kernels are charged to the stage that launched them (this costs some overlap:
    use it to measure, not in production).

    Args:
        device: the device whose work is timed; synchronised if it is CUDA.
    """

    def __init__(self, device: torch.device | str | None) -> None:
        import torch

        device = torch.device(device) if device is not None else None
        self._cuda = device if device is not None and device.type == "cuda" else None
        self.seconds: dict[str, float] = defaultdict(float)
        self.busy: dict[str, float] = defaultdict(float)  # in worker threads
        self._lock = threading.Lock()

    def _sync(self) -> None:
        if self._cuda is not None:
            import torch

            torch.cuda.synchronize(self._cuda)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - start

    def worker(self, name: str, work: Callable[..., T], *args) -> T:
        """``work(*args)`` in a worker thread, its time added to ``busy[name]``."""
        start = time.perf_counter()
        try:
            return work(*args)
        finally:
            with self._lock:
                self.busy[name] += time.perf_counter() - start

    def report(self) -> str:
        """``decode 0.08 s (busy 0.45 s), fuse 1.50 s, ...``"""
        return ", ".join(
            f"{name} {seconds:.2f} s" + (f" (busy {self.busy[name]:.2f} s)" if name in self.busy else "")
            for name, seconds in self.seconds.items()
        )


class _NoTimer:
    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield

    def worker(self, name: str, work: Callable[..., T], *args) -> T:
        return work(*args)


#: The default: times nothing, synchronises nothing.
NO_TIMER = _NoTimer()
