"""Choosing the device, the dtype and a chunk size that fits in memory."""

from __future__ import annotations

import ctypes
import functools
import sys

import torch

from .errors import GpufocusError

__all__ = [
    "DTYPES",
    "resolve_device",
    "resolve_dtype",
    "free_memory",
    "frame_budget",
    "parse_size",
    "working_bytes",
    "default_chunk",
]

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Working memory of one frame in flight, in units of its float samples: the frame,
# its pyramid (4/3 of it) and the temporaries of building and selecting. A generous
# estimate: bench/RESULTS.md's memory run (chunk 2, 6 MP) peaked at about 6 units.
_WORK_BYTES_PER_SAMPLE_AND_BYTE = 8
# Use at most this share of the free memory for frames in flight.
_MEMORY_SHARE = 0.25
# On the CPU a chunk of more than 2 frames only costs memory (bench/RESULTS.md).
_MAX_CHUNK = {"cpu": 2, "cuda": 16}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``'auto'`` (CUDA when available), ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.

    Raises:
        GpufocusError: unknown name, or CUDA asked for but not available.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise GpufocusError(f"--device {name}: not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device found"
            raise GpufocusError(f"--device {name}: CUDA is not available ({why})")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise GpufocusError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices")
        device = torch.device("cuda", index)
    elif device.type != "cpu":
        raise GpufocusError(f"--device {name}: only cpu and cuda are supported")
    if device.type == "cpu":
        _reuse_freed_host_memory()
    return device


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """``'float32'``, ``'float16'`` or ``'bfloat16'`` (or the torch dtype itself)."""
    if isinstance(name, torch.dtype):
        if name in DTYPES.values():
            return name
        name = str(name).removeprefix("torch.")
    if name not in DTYPES:
        raise GpufocusError(f"--dtype {name}: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def free_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on ``device`` (for the CPU: MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30  # no /proc: assume a modest machine


# Of an explicit memory budget, what frames in flight may take: the rest is for the
# running result (about 21 bytes a pixel), the frames decoding ahead and the program.
_BUDGET_SHARE = 0.6


def frame_budget(device: torch.device, memory_budget: int | None = None) -> int:
    """Bytes that frames in flight may take: a share of ``memory_budget`` if given, and
    never more than a share of the free memory."""
    budget = int(free_memory(device) * _MEMORY_SHARE)
    return budget if memory_budget is None else min(budget, int(memory_budget * _BUDGET_SHARE))


def parse_size(text: str) -> int:
    """``'4G'``, ``'512M'``, ``'2.5GB'`` or a number of bytes."""
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    number = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = number[-1] if number and number[-1] in units else ""
    try:
        value = float(number[: len(number) - len(unit)]) * units[unit]
    except ValueError:
        raise GpufocusError(f"--memory-budget {text}: use a size such as 4G or 512M") from None
    if value <= 0:
        raise GpufocusError(f"--memory-budget {text}: must be more than 0")
    return int(value)


def working_bytes(dtype: torch.dtype) -> int:
    """Working memory per sample (pixel and channel) of one frame in flight."""
    return torch.finfo(dtype).bits // 8 * _WORK_BYTES_PER_SAMPLE_AND_BYTE


def default_chunk(
    device: torch.device, channels: int, height: int, width: int, dtype: torch.dtype, memory_budget: int | None = None
) -> int:
    """How many frames to fold in at once so that they fit in the budget for frames."""
    fits = frame_budget(device, memory_budget) // max(channels * height * width * working_bytes(dtype), 1)
    return max(1, min(fits, _MAX_CHUNK[device.type]))


@functools.cache
def _reuse_freed_host_memory() -> None:
    """Keep freed frame-sized buffers in the process instead of returning them to the OS.

    glibc serves allocations above 32 MB with fresh mmap()s, so every full-size
    temporary of a pyramid costs a page fault per 4 kB: about half the CPU time
    of a fusion. Raising the mmap and trim thresholds lets the heap recycle them.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 31)
