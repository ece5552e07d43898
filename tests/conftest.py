import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))  # tests/reference.py

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def interruptible() -> None:
    """``preexec_fn`` for a child that a test interrupts: Ctrl-C's default disposition,
    whatever this process inherited (a job started with ``&`` ignores SIGINT, and a
    Python child would then never see its KeyboardInterrupt)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextmanager
def tensor_operations_off_the_main_thread() -> Iterator[set]:
    """The tensor operations that gpufocus' own threads (``gpufocus-*``), started in the
    block, make: ``(pool, operation)`` pairs. A thread that runs torch's CPU operations
    gets an OpenMP team of its own, which slows the fusion's parallel operations while
    it lives (bench/RESULTS.md, Batch)."""
    import threading

    seen = set()

    def watch(frame, event, arg) -> None:
        thread = threading.current_thread().name
        if event == "c_call" and thread.startswith("gpufocus-"):
            name = getattr(arg, "__qualname__", "")
            if isinstance(getattr(arg, "__self__", None), torch.Tensor) or name.startswith("_VariableFunctionsClass."):
                seen.add((thread.rsplit("_", 1)[0], name))

    threading.setprofile(watch)
    try:
        yield seen
    finally:
        threading.setprofile(None)


def write_frames(folder: Path, frames: np.ndarray, suffix: str = ".png", **save_options) -> list[Path]:
    """Write (N, H, W, 3) uint8 frames as files named frame_0, frame_1, ..."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames):
        path = folder / f"frame_{i}{suffix}"
        Image.fromarray(frame).save(path, **save_options)
        paths.append(path)
    return paths


def exif_of(info) -> Image.Exif:
    """The EXIF tags of a probed image."""
    exif = Image.Exif()
    exif.load(info.exif)
    return exif


@pytest.fixture
def small_stack(tmp_path, rng) -> list[Path]:
    """Three 8-bit PNG frames of 40x56 with different sharp regions."""
    from gpufocus.synth import make_stack

    stack = make_stack(height=40, width=56, frames=3, max_blur=4.0, seed=3)
    frames = (stack.frames.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return write_frames(tmp_path / "stack", frames)
