"""Speed and memory of gpufocus on this machine: fusion core, end to end, peak memory.

    python bench/bench_fusion.py core   [--device cpu cuda] [--size 2000x1500] [--frames 10] [--repeat 5]
    python bench/bench_fusion.py e2e    [--frames 10] [--size 2000x1500] [--repeat 5]
    python bench/bench_fusion.py memory [--frames 100] [--size 3000x2000]

core:   frames already in memory (uint8, made on the device), fuse() timed alone; the
        median of --repeat runs after one warm-up, CUDA synchronised.
e2e:    a JPEG stack (synthetic, written once to bench/out/) fused by the `gpufocus`
        command in a new process each time (start-up, reading, fusing and writing
        included), against the peers found on PATH (enfuse; focus-stack) in the same
        run, runs interleaved.
memory: a child process streams --frames frames made on the fly into StackFuser and
        reports its peak resident memory (ru_maxrss).
Prints a markdown table with the machine's description.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{model}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, Python {platform.python_version()}"


def parse_size(text: str) -> tuple[int, int]:
    width, height = map(int, text.lower().split("x"))
    return height, width


def median_time(run, repeat: int, sync) -> tuple[float, list[float]]:
    run()  # warm-up
    times = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def bench_core(args) -> None:
    from gpufocus import fuse

    height, width = parse_size(args.size)
    print(f"| device | dtype | chunk | frames | size | median s | Mpix-frames/s |\n|---|---|---|---|---|---|---|")
    for device in args.device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            continue
        gen = torch.Generator(device).manual_seed(0)
        frames = torch.randint(0, 256, (args.frames, 3, height, width), dtype=torch.uint8, device=device, generator=gen)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        for dtype in args.dtype:
            for chunk in args.chunk:
                seconds, _ = median_time(
                    lambda: fuse(frames, device=device, dtype=dtype, chunk=chunk), args.repeat, sync
                )
                rate = args.frames * height * width / seconds / 1e6
                print(f"| {device} | {dtype} | {chunk} | {args.frames} | {width}x{height} | {seconds:.3f} | {rate:.1f} |")


def make_jpeg_stack(frames: int, height: int, width: int) -> Path:
    folder = OUT / f"stack_{width}x{height}_{frames}"
    if len(list(folder.glob("frame_*.jpg"))) == frames:
        return folder
    from gpufocus.synth import make_stack
    from gpufocus.write import write_image

    folder.mkdir(parents=True, exist_ok=True)
    stack = make_stack(height=height, width=width, frames=frames, seed=1)
    for i, frame in enumerate(stack.frames):
        write_image(folder / f"frame_{i:02d}.jpg", frame, quality=95, overwrite=True)
    return folder


def bench_e2e(args) -> None:
    height, width = parse_size(args.size)
    stack = make_jpeg_stack(args.frames, height, width)
    frames = sorted(map(str, stack.glob("frame_*.jpg")))
    out = OUT / "e2e"
    out.mkdir(exist_ok=True)
    gpufocus = shutil.which("gpufocus", path=str(Path(sys.executable).parent)) or "gpufocus"
    commands = {"gpufocus (max-energy)": [gpufocus, "fuse", *frames, "-o", str(out / "gpufocus.jpg"), "--overwrite", "-q"]}
    if shutil.which("focus-stack"):  # its documented options have no switch for alignment
        commands["focus-stack (defaults)"] = ["focus-stack", f"--output={out / 'focus-stack.jpg'}", *frames]
    if shutil.which("enfuse"):
        commands["enfuse (contrast, hard mask)"] = [
            "enfuse", "--exposure-weight=0", "--saturation-weight=0", "--contrast-weight=1", "--hard-mask",
            f"--output={out / 'enfuse.jpg'}", *frames,
        ]
    times: dict[str, list[float]] = {name: [] for name in commands}
    for name, command in commands.items():  # warm-up: file cache, first start
        subprocess.run(command, check=True, capture_output=True)
    for _ in range(args.repeat):
        for name, command in commands.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    ours = statistics.median(times["gpufocus (max-energy)"])
    print(f"{args.frames} JPEG frames of {width}x{height}, read + fuse + write, {args.repeat} runs each, interleaved\n")
    print("| program | median s | runs (s) | gpufocus / program |\n|---|---|---|---|")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"| {name} | {median:.2f} | {' '.join(f'{t:.2f}' for t in runs)} | {ours / median:.2f} |")


def memory_child(frames: int, height: int, width: int, chunk: int) -> None:
    import numpy as np

    from gpufocus import StackFuser

    fuser = StackFuser(device="cpu")
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    for start in range(0, frames, chunk):
        count = min(chunk, frames - start)
        fuser.add(np.stack([np.roll(base, i, axis=1) for i in range(start, start + count)]))
    fuser.result()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def bench_memory(args) -> None:
    from gpufocus.device import default_chunk, resolve_device

    height, width = parse_size(args.size)
    chunk = args.chunk[0] if args.chunk else default_chunk(resolve_device("cpu"), 3, height, width, torch.float32)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "memory-child", str(args.frames), str(height), str(width), str(chunk)],
        check=True, capture_output=True, text=True,
    )
    seconds = time.perf_counter() - start
    peak = int(done.stdout.split()[-1])
    print("| device | frames | size | chunk | peak RSS | wall s |\n|---|---|---|---|---|---|")
    print(f"| cpu | {args.frames} | {width}x{height} | {chunk} | {peak / 2**30:.2f} GiB | {seconds:.1f} |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "memory-child":
        memory_child(*map(int, sys.argv[2:6]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["core", "e2e", "memory"])
    parser.add_argument("--device", nargs="+", default=["cpu", "cuda"])
    parser.add_argument("--dtype", nargs="+", default=["float32"])
    parser.add_argument("--chunk", nargs="+", type=int, default=None)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--size", default="2000x1500")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine()}\n")
    if args.mode == "core":
        args.chunk = args.chunk or [1, 2]
        bench_core(args)
    elif args.mode == "e2e":
        bench_e2e(args)
    else:
        bench_memory(args)


if __name__ == "__main__":
    main()
