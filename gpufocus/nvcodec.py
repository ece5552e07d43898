"""NVIDIA's nvImageCodec (the ``gpufocus[cuda]`` extra), its decoder or encoder made once
for a device: on the GPU, or on the CPU by its ``CPU_ONLY`` backend, which runs the same
code path without a GPU (the tests use it)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["nvimgcodec_for", "CODEC_CALLS"]

#: Held by every call of a GPU image codec (decoding the next chunk, encoding a result,
#: each in a thread of its own) and by a CUDA graph's capture (``gpufocus.graphs``):
#: nvImageCodec's decoders and encoders are not all made for two threads at once, and a
#: capture is kept clear of what a library does on the GPU from another thread.
CODEC_CALLS = threading.Lock()


def nvimgcodec_for(kind: str, device: torch.device) -> tuple[Any, Any] | None:
    """``(nvimgcodec, nvimgcodec.<kind>(...))`` for ``device``; ``kind``: ``"Decoder"``
    or ``"Encoder"``. ``None`` where it is not installed or cannot serve the device."""
    try:
        from nvidia import nvimgcodec

        make = getattr(nvimgcodec, kind)
        if device.type == "cpu":
            return nvimgcodec, make(
                device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY,
                backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.CPU_ONLY)],
            )
        return nvimgcodec, make(device_id=device.index or 0)
    except Exception:  # noqa: BLE001 - not installed, or nothing for this device
        return None
