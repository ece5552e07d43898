"""Host memory for processes of our own: freed frame-sized buffers kept for reuse, or,
under an address-space limit, every byte of address space given back."""

from __future__ import annotations

import ctypes
import functools
import sys

__all__ = ["tune_host_allocator"]


@functools.cache
def tune_host_allocator() -> None:
    """Keep freed frame-sized buffers in the process instead of returning them to the OS.

    glibc serves allocations above 32 MB with fresh mmap()s, so every full-size
    temporary of a pyramid costs a page fault per 4 kB: 10 frames of 2000x1500 fuse in
    0.86 s with this and 1.46 s without (bench/RESULTS.md). It is process-wide and the
    memory is never given back, so only processes that gpufocus owns call it (the
    command, batch workers, benchmark children), never the library on a caller's.

    Under an address-space limit (``ulimit -v``, ``prlimit --as``) the opposite: freed
    buffers go back at once, and at most two malloc arenas are made (each thread's
    arena reserves 64 MB of address space), since there the kept buffers and the
    reservations count against the limit in the runs that need every byte: under a
    limit of half what 3 frames of 6000x4000 take untiled, the tiles fit this way and
    not with buffers kept, nor with glibc's arenas (bench/RESULTS.md).
    """
    if not sys.platform.startswith("linux"):
        return
    import resource

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    if resource.getrlimit(resource.RLIMIT_AS)[0] != resource.RLIM_INFINITY:
        libc.mallopt(m_arena_max, 2)
        return
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 31)
