"""Choosing the device, the dtype and a chunk size that fits in memory."""

from __future__ import annotations

import torch

from .memory import host_room
from .options import DTYPES, OptionError

__all__ = [
    "arrived",
    "resolve_device",
    "resolve_dtype",
    "free_memory",
    "frame_budget",
    "tile_budget",
    "working_bytes",
    "default_chunk",
    "fusion_chunk",
]

_TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPES}

# Working memory of one frame in flight, in units of its float samples: the frame,
# its pyramid (4/3 of it) and the temporaries of building and selecting. A generous
# estimate: bench/RESULTS.md's memory run (chunk 2, 6 MP) peaked at about 6 units.
_WORK_BYTES_PER_SAMPLE_AND_BYTE = 8
# Use at most this share of the free memory for frames in flight.
_MEMORY_SHARE = 0.25
# Frames read and aligned at once. The motion of a chunk is estimated as one batch, whose
# thousands of small operations cost about the same for 2 frames as for 4: on the CPU 4
# make the align stage 7 % cheaper (bench/RESULTS.md), fused 2 at a time (``fusion_chunk``).
_MAX_CHUNK = {"cpu": 4, "cuda": 16, "meta": 16}  # meta: shapes only, planning what CUDA runs
# Frames fused at once: on the CPU more than 2 only cost memory (bench/RESULTS.md).
_MAX_FUSION_CHUNK = {"cpu": 2}


def arrived(tensor: torch.Tensor, done: torch.cuda.Event) -> torch.Tensor:
    """``tensor``, made on another CUDA stream, for the current stream's work: the current
    stream waits for ``done`` (an event recorded after it was made), and the allocator
    keeps its memory until the current stream's work on it is done."""
    current = torch.cuda.current_stream(tensor.device)
    current.wait_event(done)
    tensor.record_stream(current)
    return tensor


def resolve_device(name: str | torch.device) -> torch.device:
    """``'auto'`` (CUDA when available), ``'cpu'``, ``'cuda'`` or ``'cuda:N'``.

    Raises:
        OptionError: unknown name, or CUDA asked for but not available.
    """
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OptionError("device", name, "not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no CUDA device found"
            raise OptionError("device", name, f"CUDA is not available ({why})")
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise OptionError("device", name, f"there are {torch.cuda.device_count()} CUDA devices")
        device = torch.device("cuda", index)
    elif device.type not in ("cpu", "meta"):
        raise OptionError("device", name, "only cpu and cuda are supported")
    return device


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """``'float32'``, ``'float16'`` or ``'bfloat16'`` (or the torch dtype itself)."""
    name = str(name).removeprefix("torch.")
    if name not in _TORCH_DTYPES:
        raise OptionError("dtype", name, f"use one of {', '.join(DTYPES)}")
    return _TORCH_DTYPES[name]


def free_memory(device: torch.device) -> int:
    """Bytes that can still be allocated on ``device``: for the CPU, ``host_room``."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "meta":  # planning the CUDA path: a card as large as the H200's
        return 140 << 30
    return host_room()


# Of an explicit memory budget, what frames in flight may take: the rest is for the
# running result (about 53 bytes a pixel, 32 of them the halo guard's), the frames
# decoding ahead and the program.
_BUDGET_SHARE = 0.6


def frame_budget(device: torch.device, memory_budget: int | None) -> int:
    """Bytes that frames in flight may take: a share of ``memory_budget`` if given, and
    never more than a share of the free memory."""
    budget = int(free_memory(device) * _MEMORY_SHARE)
    return budget if memory_budget is None else min(budget, int(memory_budget * _BUDGET_SHARE))


# Of the free memory, what one tile may take where tiles are fused one after the other:
# the frames in flight and the tile's running result are then all that is held.
_TILE_SHARE = 0.5


def tile_budget(device: torch.device, memory_budget: int | None) -> int:
    """Bytes one tile may take, its frames in flight and its running result together,
    where the tiles are fused one after the other: a share of the free memory, and of
    ``memory_budget`` if given (as ``frame_budget``)."""
    budget = int(free_memory(device) * _TILE_SHARE)
    return budget if memory_budget is None else min(budget, int(memory_budget * _BUDGET_SHARE))


def working_bytes(dtype: torch.dtype) -> int:
    """Working memory per sample (pixel and channel) of one frame in flight."""
    return torch.finfo(dtype).bits // 8 * _WORK_BYTES_PER_SAMPLE_AND_BYTE


def fusion_chunk(device: torch.device, chunk: int) -> int:
    """How many of a chunk's frames are fused at once on ``device`` (the result does not
    depend on it)."""
    return min(chunk, _MAX_FUSION_CHUNK.get(device.type, chunk))


def default_chunk(
    device: torch.device, channels: int, height: int, width: int, dtype: torch.dtype, memory_budget: int | None
) -> int:
    """How many frames to fold in at once so that they fit in the budget for frames."""
    fits = frame_budget(device, memory_budget) // max(channels * height * width * working_bytes(dtype), 1)
    return max(1, min(fits, _MAX_CHUNK[device.type]))
