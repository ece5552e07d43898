"""Batch throughput: 20 small stacks through `gpufocus batch`, in one process and over workers.

    python bench/batch.py [--stacks 20] [--frames 6] [--size 640x480]

Makes the stacks once with gpufocus.synth (JPEG frames, some breathing and shift) in
bench/out/batch/, then fuses them all with defaults (alignment on), three times each
way after a warm-up: in this process (stacks pipelined), and with two worker
processes (`--device cpu,cpu`). Prints the median wall time and stacks per minute.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gpufocus.benchmark import machine_description
from gpufocus.synth import make_stack, write_stack

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", type=int, default=20)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    root = HERE / "out" / "batch" / f"{args.stacks}x{args.frames}_{args.size}"
    if not root.is_dir():
        for i in range(args.stacks):
            stack = make_stack(height, width, args.frames, breathing=0.002, shift=1.0, noise=1.0, seed=100 + i)
            write_stack(stack, root / f"stack_{i:02d}", fmt="jpg")
    gpufocus = shutil.which("gpufocus", path=str(Path(sys.executable).parent)) or "gpufocus"
    print(f"machine: {machine_description()}\n")
    print(f"{args.stacks} stacks of {args.frames} JPEG frames of {width}x{height}; whole `gpufocus batch` command\n")
    print("| how | median s | runs (s) | stacks per minute |\n|---|---|---|---|")
    for label, extra in [("one process, pipelined", []), ("2 worker processes", ["--device", "cpu,cpu"])]:
        runs = []
        for attempt in range(args.repeat + 1):
            out = HERE / "out" / "batch" / "results"
            shutil.rmtree(out, ignore_errors=True)
            start = time.perf_counter()
            subprocess.run([gpufocus, "batch", str(root), "-o", str(out), "-q", *extra], check=True)
            if attempt:
                runs.append(time.perf_counter() - start)
        median = statistics.median(runs)
        print(f"| {label} | {median:.1f} | {' '.join(f'{r:.1f}' for r in runs)} | {args.stacks / median * 60:.1f} |")


if __name__ == "__main__":
    main()
