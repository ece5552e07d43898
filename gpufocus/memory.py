"""How much memory a run may take and a frame needs, from numbers alone (no torch):
the stack's headers are checked against it before anything heavy is imported."""

from __future__ import annotations

__all__ = ["RESULT_BYTES_PER_PIXEL", "host_room", "frame_needs", "out_of_memory", "failed_allocation"]

#: The least a frame in flight needs beside its samples, per pixel: the running result
#: with the halo guard's winner (about 53 bytes, 32 of them the guard's).
RESULT_BYTES_PER_PIXEL = 53


def host_room() -> int:
    """Bytes this process can still take on the host: MemAvailable, and no more than its
    address-space limit leaves (``ulimit -v``, ``prlimit --as``)."""
    import resource

    room = 4 << 30  # no /proc: assume a modest machine
    try:
        with open("/proc/meminfo") as meminfo:
            room = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        pass
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    if limit != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/status") as status:
                used = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
        except (OSError, StopIteration):
            used = 0
        room = min(room, max(limit - used, 0))
    return room


def frame_needs(pixels: int, samples: int, sample_bytes: int, on_gpu: bool) -> dict[str, int]:
    """The least memory fusing frames of ``pixels`` needs, tiled as small as it goes
    (tile after tile, ``StackFuser.run``: a tile's own work is what tiling makes small):
    ``{"host": ..., "device": ...}`` in bytes (only ``"host"`` on the CPU). On the host:
    the decoded frame and the next one decoding, and the result as it is written (float32,
    its scaled copy and the integers). Where the fusion runs on a GPU: the result as the
    tiles make it (float32)."""
    decoded = pixels * samples * sample_bytes * 2
    written = pixels * samples * (4 + 4 + sample_bytes)
    made = pixels * samples * 4
    return {"host": decoded + written, "device": made} if on_gpu else {"host": decoded + written}


def out_of_memory(error: BaseException) -> bool:
    """An allocation that failed: Python's, torch's CPU allocator's or CUDA's."""
    return (
        isinstance(error, MemoryError)
        or type(error).__name__ == "OutOfMemoryError"  # torch.cuda's, a RuntimeError
        or (isinstance(error, RuntimeError) and "can't allocate memory" in str(error))
    )


def failed_allocation(error: BaseException) -> str:
    """`` (an allocation of 0.27 GiB failed)``, where the allocator's message says how
    much it was asked for, else nothing."""
    import re

    asked = re.search(r"(?:tried to allocate|Tried to allocate) ([\d.]+) ?(bytes|[KMGT]iB)", str(error))
    if not asked:
        return ""
    scale = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}[asked.group(2)]
    return f" (an allocation of {float(asked.group(1)) * scale / 2**30:.2f} GiB failed)"
