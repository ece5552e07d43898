"""Which implementation of a kernel runs: Triton where it can, the torch twin elsewhere,
and the torch twin for good once a Triton kernel has failed to compile or launch."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

__all__ = ["use_triton", "triton_or_torch", "launch", "planning", "triton_cache_dir", "KernelFallbackWarning"]

T = TypeVar("T")

log = logging.getLogger(__name__)

_failed: list[str] = []  # the kernel that failed, once one has
# A kernel's first launch that takes longer than this compiled it (a launch is
# asynchronous; Triton compiled 21 of the 22 specializations in 0.1 to 1 s each on
# this project's 2-core CPU, and found them in its cache in 1 to 4 ms: bench/RESULTS.md).
# The process's first launch is not judged: it carries Triton's set-up (0.4 s here,
# cache or not, most of it hashing its own library to key the cache).
COMPILING_SECONDS = 0.05
_launched: set[tuple] = set()  # each kernel and its constants, once launched in this process
_told: list[bool] = []  # once it was told
# While planning (``planning``): who hears of each launch, instead of the GPU.
_planner: list[Callable[[str, int, int], None]] = []


class KernelFallbackWarning(RuntimeWarning):
    """A Triton kernel could not run here; the torch path runs instead. Shown to users
    (``for_users``), as ``gpufocus.errors.GpufocusWarning`` is, which this layer below
    the package does not import."""

    for_users = True


@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(tensor: torch.Tensor) -> bool:
    """Whether the Triton kernels handle ``tensor``.

    On CUDA float32 tensors when Triton is installed; on any device under Triton's
    interpreter (``TRITON_INTERPRET=1``, which the tests use on the CPU).
    ``GPUFOCUS_TRITON=0`` turns them off, and so does a kernel that failed before.
    While ``planning``, on any device (the meta device: shapes, no data).
    """
    if _failed or os.environ.get("GPUFOCUS_TRITON") == "0" or tensor.dtype != torch.float32:
        return False
    if _planner:
        return _triton_importable()
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    return (tensor.is_cuda or interpreted) and _triton_importable()


def triton_or_torch(name: str, fused: Callable[[], T], twin: Callable[[], T]) -> T:
    """``fused()``, or where it fails (a kernel that does not compile or launch with this
    Triton or on this card), one warning and ``twin()``, now and for the rest of the
    process. Kernels write their outputs only once launched, so nothing is half done.

    Running out of GPU memory is not a kernel failure: it is raised as it is, for the
    engine to retry with fewer frames.
    """
    try:
        return fused()
    except torch.cuda.OutOfMemoryError:
        raise
    except Exception as error:  # noqa: BLE001 - any compile or launch error means: not here
        _failed.append(name)
        first = (str(error).strip().splitlines() or [""])[-1][:200]
        warnings.warn(
            f"the Triton kernel {name} cannot run here ({type(error).__name__}: {first}); "
            "using the torch path (slower) from now on",
            KernelFallbackWarning,
            stacklevel=3,
        )
        return twin()


@contextlib.contextmanager
def planning(hear: Callable[[str, int, int], None]) -> Iterator[None]:
    """Run the Triton path without running a kernel: every launch is reported as
    ``hear(name, bytes_read, bytes_written)`` (the kernel's own loads and stores, the halo
    it re-reads counted) and skipped. Made for tensors on the meta device, to count what
    the CUDA path moves on a machine without a GPU (``gpufocus.traffic``)."""
    _planner.append(hear)
    try:
        yield
    finally:
        _planner.remove(hear)


def launch(
    name: str, kernel, grid: tuple, args: tuple, constexprs: dict, traffic: Callable[[], tuple[int, int]], warps: int = 4,
) -> None:
    """Launch ``kernel[grid](*args, **constexprs)`` in programs of ``warps`` warps with
    floating-point contraction off (the twins' roundings), or while ``planning`` report
    ``traffic()``, ``(bytes read, bytes written)``, instead. ``GPUFOCUS_TRITON_WARPS``
    sets the warps of every kernel instead (a benchmark setting: no kernel reduces
    across its program, so the results do not depend on it)."""
    if _planner:
        _planner[-1](name, *traffic())
        return
    warps = int(os.environ.get("GPUFOCUS_TRITON_WARPS", warps))
    key = (name, warps, *sorted(constexprs.items()))
    started = time.perf_counter()
    kernel[grid](*args, **constexprs, num_warps=warps, enable_fp_fusion=False)
    if key not in _launched:
        judged = bool(_launched)
        _launched.add(key)
        if judged:
            _tell_if_compiled(time.perf_counter() - started)


def _tell_if_compiled(seconds: float) -> None:
    """Say once (a ``logging`` warning) that the kernels are being compiled, when a
    kernel's first launch (not the process's first) took ``COMPILING_SECONDS`` or more:
    on a new card, Triton or gpufocus version, a run starts with some seconds of
    compiling, which would otherwise look like a hang. Not under Triton's interpreter,
    whose launches are slow anyway."""
    if _told or seconds < COMPILING_SECONDS or os.environ.get("TRITON_INTERPRET") == "1":
        return
    _told.append(True)
    log.warning("compiling the GPU kernels for this card: once, later runs find them in Triton's cache (%s)",
                triton_cache_dir())


def triton_cache_dir() -> str:
    """Where Triton keeps what it compiled: ``TRITON_CACHE_DIR``, else ``.triton/cache``
    under ``TRITON_HOME`` or the user's home (Triton's own rule, without importing it)."""
    home = os.environ.get("TRITON_HOME") or os.path.expanduser("~")
    return os.environ.get("TRITON_CACHE_DIR") or os.path.join(home, ".triton", "cache")
