"""Whole-command speed against peer programs, and peak memory of a long stack.

    python bench/bench_fusion.py e2e    [--frames 10] [--size 2000x1500] [--repeat 5]
    python bench/bench_fusion.py memory [--frames 100] [--size 3000x2000] [--memory-budget 4G]
    python bench/bench_fusion.py allocator [--frames 10] [--size 2000x1500] [--repeat 5]

(The per-stage matrix, CPU against CUDA, is `gpufocus bench`.)

e2e:    a JPEG stack (synthetic, made once by gpufocus.benchmark.stack_files in
        bench/out/: 8 distinct frames, repeated for longer stacks) fused by the `gpufocus`
        command in a new process each time (start-up, reading, fusing and writing
        included), against the peers found on PATH (enfuse; focus-stack) in the same
        run, runs interleaved; and the start-up alone (`gpufocus --help`, `--version`,
        `fuse --help`). focus-stack's options cannot turn its alignment off: a build
        with a local switch (FOCUS_STACK_NO_ALIGN set: every frame is passed to its
        Task_Align as its own reference, which Task_Align returns unchanged) adds the
        row "focus-stack, alignment off" (`--focus-stack PATH`, or focus-stack on PATH).
allocator: fuse() of frames in memory (gpufocus.benchmark.bench_frames), with and without
        alignment, each run in a child process of its own with and without
        gpufocus.allocator.tune_host_allocator (which the command applies to its own
        process), one warm-up fusion in each child, runs interleaved.
memory: a child process streams --frames frames made on the fly into StackFuser (defaults:
        alignment on; chunk and tiles from --memory-budget, or from free memory) and
        reports its peak resident memory (ru_maxrss).
Prints a markdown table with the machine's description.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from gpufocus.benchmark import machine_description, stack_files

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"


def parse_size(text: str) -> tuple[int, int]:
    width, height = map(int, text.lower().split("x"))
    return height, width


def bench_e2e(args) -> None:
    height, width = parse_size(args.size)
    frames = [str(p) for p in stack_files(OUT, height, width, args.frames)]
    out = OUT / "e2e"
    out.mkdir(exist_ok=True)
    gpufocus = shutil.which("gpufocus", path=str(Path(sys.executable).parent)) or "gpufocus"
    base = [gpufocus, "fuse", *frames, "-o", str(out / "gpufocus.jpg"), "--overwrite", "-q"]
    commands = {
        "gpufocus --help": ([gpufocus, "--help"], None),
        "gpufocus --version": ([gpufocus, "--version"], None),
        "gpufocus fuse --help": ([gpufocus, "fuse", "--help"], None),
        "python -c 'import torch' (for scale)": ([sys.executable, "-c", "import torch"], None),
        "gpufocus --no-align": ([*base, "--no-align"], None),
        "gpufocus (defaults: aligned)": (base, None),
    }
    focus_stack = args.focus_stack or shutil.which("focus-stack")
    if focus_stack:
        command = [focus_stack, f"--output={out / 'focus-stack.jpg'}", *frames]
        commands["focus-stack, alignment off"] = (command, {"FOCUS_STACK_NO_ALIGN": "1"})
        commands["focus-stack (defaults: aligned)"] = (command, None)
    if shutil.which("enfuse"):
        commands["enfuse (contrast, hard mask)"] = ([
            "enfuse", "--exposure-weight=0", "--saturation-weight=0", "--contrast-weight=1", "--hard-mask",
            f"--output={out / 'enfuse.jpg'}", *frames,
        ], None)
    times: dict[str, list[float]] = {name: [] for name in commands}

    def once(command, env) -> float:
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env={**os.environ, **(env or {})})
        return time.perf_counter() - start

    for command, env in commands.values():  # warm-up: file cache, first start
        once(command, env)
    for _ in range(args.repeat):
        for name, (command, env) in commands.items():
            times[name].append(once(command, env))
    ours = statistics.median(times["gpufocus --no-align"])
    print(f"{args.frames} JPEG frames of {width}x{height}, read + fuse + write (start-up included), "
          f"{args.repeat} runs each, interleaved\n")
    print("| command | median s | runs (s) | gpufocus --no-align / command |\n|---|---|---|---|")
    for name, runs in times.items():
        median = statistics.median(runs)
        print(f"| {name} | {median:.2f} | {' '.join(f'{t:.2f}' for t in runs)} | {ours / median:.2f} |")


def memory_child(frames: int, height: int, width: int, chunk: int, budget: int) -> None:
    import numpy as np

    from gpufocus import StackFuser
    from gpufocus.allocator import tune_host_allocator

    tune_host_allocator()  # as the command does
    fuser = StackFuser(device="cpu", memory_budget=budget or None)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    for start in range(0, frames, chunk):
        count = min(chunk, frames - start)
        fuser.add(np.stack([np.roll(base, i, axis=1) for i in range(start, start + count)]))
    fuser.result()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def allocator_child(tuned: int, align: int, frames: int, height: int, width: int) -> None:
    from gpufocus import fuse
    from gpufocus.allocator import tune_host_allocator
    from gpufocus.benchmark import bench_frames

    if tuned:
        tune_host_allocator()
    stack = bench_frames(height, width, frames)
    fuse(stack[:2], device="cpu", align=bool(align))  # warm-up
    start = time.perf_counter()
    fuse(stack, device="cpu", align=bool(align))
    print(time.perf_counter() - start)


def bench_allocator(args) -> None:
    height, width = parse_size(args.size)
    times: dict[tuple[str, str], list[float]] = {}
    for align in (0, 1):
        for _ in range(args.repeat):
            for tuned in (1, 0):
                done = subprocess.run(
                    [sys.executable, __file__, "allocator-child", str(tuned), str(align), str(args.frames), str(height),
                     str(width)], check=True, capture_output=True, text=True,
                )
                key = ("on" if align else "off", "tuned" if tuned else "as glibc has it")
                times.setdefault(key, []).append(float(done.stdout.split()[-1]))
    print(f"fuse() of {args.frames} frames of {width}x{height} in memory, cpu, {args.repeat} runs each, interleaved\n")
    print("| alignment | host allocator | median s | runs (s) |\n|---|---|---|---|")
    for (align, allocator), runs in times.items():
        print(f"| {align} | {allocator} | {statistics.median(runs):.2f} | {' '.join(f'{t:.2f}' for t in runs)} |")


def bench_memory(args) -> None:
    from gpufocus.device import default_chunk, resolve_device
    from gpufocus.options import parse_size as parse_bytes

    height, width = parse_size(args.size)
    budget = parse_bytes(args.memory_budget) if args.memory_budget else 0
    chunk = args.chunk or default_chunk(resolve_device("cpu"), 3, height, width, torch.float32, budget or None)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "memory-child", str(args.frames), str(height), str(width), str(chunk), str(budget)],
        check=True, capture_output=True, text=True,
    )
    seconds = time.perf_counter() - start
    peak = int(done.stdout.split()[-1])
    print("| device | frames | size | memory budget | chunk | peak RSS | wall s |\n|---|---|---|---|---|---|---|")
    print(f"| cpu | {args.frames} | {width}x{height} | {args.memory_budget or '-'} | {chunk} | {peak / 2**30:.2f} GiB "
          f"| {seconds:.1f} |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "memory-child":
        memory_child(*map(int, sys.argv[2:7]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "allocator-child":
        allocator_child(*map(int, sys.argv[2:7]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["e2e", "memory", "allocator"])
    parser.add_argument("--chunk", type=int, default=None)
    parser.add_argument("--memory-budget", default=None)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--size", default="2000x1500")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--focus-stack", default=None, help="focus-stack built with the local switch (see above)")
    args = parser.parse_args()
    print(f"machine: {machine_description()}\n")
    {"e2e": bench_e2e, "memory": bench_memory, "allocator": bench_allocator}[args.mode](args)


if __name__ == "__main__":
    main()
