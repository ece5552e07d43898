"""Batch throughput: 20 small stacks through `gpufocus batch`, in one process and over workers.

    python bench/batch.py [--stacks 20] [--frames 6] [--size 640x480] [--repeat 3]

Makes the stacks once with gpufocus.synth (JPEG frames, some breathing and shift) in
bench/out/batch/, then fuses them all with defaults (alignment on), ``--repeat`` times
each way after a warm-up: on a CUDA device where there is one (one process, one CUDA
context, the stacks pipelined), in one process on the CPU, and with two worker processes
(`--device cpu,cpu`). Prints the median wall time and stacks per minute, and the stages
of one more run with `-v` (added up over the stacks; for decode and write, waited and
busy).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from gpufocus.benchmark import machine_description, time_command
from gpufocus.synth import make_stack, write_stack

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", type=int, default=20)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "out" / "batch", help="where the stacks and results go")
    args = parser.parse_args(argv)
    width, height = map(int, args.size.split("x"))
    root = args.out / f"{args.stacks}x{args.frames}_{args.size}"
    if not root.is_dir():
        for i in range(args.stacks):
            stack = make_stack(height, width, args.frames, breathing=0.002, shift=1.0, noise=1.0, seed=100 + i)
            write_stack(stack, root / f"stack_{i:02d}", fmt="jpg")
    gpufocus = shutil.which("gpufocus", path=str(Path(sys.executable).parent)) or "gpufocus"
    print(f"machine: {machine_description()}\n")
    print(f"{args.stacks} stacks of {args.frames} JPEG frames of {width}x{height}; whole `gpufocus batch` command\n")
    print("| how | median s | runs (s) | stacks per minute | stages of a -v run (s) |\n|---|---|---|---|---|")
    cases = [("one process on the CPU, pipelined", "cpu"), ("2 worker processes", "cpu,cpu")]
    if torch.cuda.is_available():
        cases.insert(0, ("one process on CUDA (one context), pipelined", "cuda"))
    out = args.out / "results"
    for label, device in cases:
        runs = []
        for attempt in range(args.repeat + 1):
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            subprocess.run([gpufocus, "batch", str(root), "-o", str(out), "-q", "--device", device], check=True)
            if attempt:
                runs.append(time.perf_counter() - start)
        shutil.rmtree(out, ignore_errors=True)
        _, stages = time_command(["batch", str(root), "-o", str(out), "-v", "--device", device])
        staged = ", ".join(f"{name} {value:.2f}" for name, value in stages.items()) or "(workers: not added up)"
        median = statistics.median(runs)
        print(f"| {label} | {median:.1f} | {' '.join(f'{r:.1f}' for r in runs)} | {args.stacks / median * 60:.1f} "
              f"| {staged} |")


if __name__ == "__main__":
    main()
