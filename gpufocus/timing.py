"""Per-stage wall-clock timing for benchmarks; a no-op unless asked for."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import torch

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


class _NoTimer:
    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        yield


#: The default: times nothing, synchronises nothing.
NO_TIMER = _NoTimer()
