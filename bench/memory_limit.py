"""What a stack needs, and the command under an address-space limit of a share of it.

    python bench/memory_limit.py STACK [--share 0.5] [--out DIR] [-- FUSE OPTIONS...]

1. ``gpufocus fuse STACK --tile 0`` (untiled) twice: without a limit, and under a limit
   as large as the machine's memory (where the command gives freed memory back at
   once, ``gpufocus.allocator``). Its peak virtual memory (VmPeak, what ``prlimit
   --as`` limits) is what the stack needs; the smaller of the two is taken.
2. Under ``prlimit --as`` of ``--share`` of that: ``--tile 0`` (expected: the one-line
   memory error, exit 1, nothing written), then the defaults (expected: tiles, and the
   untiled run's image, pixel for pixel).

One run each: a table for bench/RESULTS.md (run, limit, tiles, exit code, time, VmPeak, what
it said). Linux only (``/proc``, ``prlimit``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from gpufocus.benchmark import split_at_dashes

# Runs the command as ``python -m gpufocus`` does and then writes its VmPeak to a file:
# the command points descriptor 2 elsewhere, and a poll from outside misses the end.
_LAUNCH = """
import os, sys
sys.argv = ["gpufocus", *sys.argv[1:]]
try:
    from gpufocus.__main__ import main
    main()
finally:
    with open(os.environ["GPUFOCUS_VMPEAK_TO"], "w") as out:
        out.write(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmPeak")))
"""


def fuse(stack: Path, out: Path, limit: int | None, args: list[str]) -> dict:
    """One ``gpufocus fuse`` run: exit code, stderr's last line, seconds, VmPeak bytes."""
    out.unlink(missing_ok=True)
    with tempfile.NamedTemporaryFile("r", suffix=".vmpeak") as peak:
        command = [sys.executable, "-c", _LAUNCH, "fuse", str(stack), "-o", str(out), "-v", *args]
        if limit is not None:
            command = ["prlimit", f"--as={limit}", *command]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "GPUFOCUS_VMPEAK_TO": peak.name})
        seconds = time.perf_counter() - started
        text = peak.read().strip()
    log = [line for line in done.stderr.splitlines() if line.startswith("gpufocus.")]  # -v's
    lines = [line for line in done.stderr.strip().splitlines() if line and line not in log]
    tiles = next((found.group(1) for line in log if (found := re.search(r"; (\d+) tile\(s\)", line))), "?")
    return {"code": done.returncode, "said": lines[-1] if lines else "", "lines": len(lines), "seconds": seconds,
            "peak": int(text) * 1024 if text else None, "written": out.exists(), "tiles": tiles}


def machine_memory() -> int:
    with open("/proc/meminfo") as meminfo:
        return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemTotal:"))


def main(argv: list[str] | None = None) -> list[list[str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stack", type=Path)
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=None, help="where the results go (default: a temporary folder)")
    own, fuse_args = split_at_dashes(argv)
    args = parser.parse_args(own)
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.out or Path(scratch)
        rows = []

        def row(name: str, limit: int | None, result: dict) -> None:
            peak = "" if result["peak"] is None else f"{result['peak'] / 1e9:.2f} GB"
            said = result["said"] if result["code"] else f"written: {result['written']}"
            cells = [name, "none" if limit is None else f"{limit / 2**30:.2f} GiB", result["tiles"], str(result["code"]),
                     f"{result['seconds']:.1f} s", peak, said]
            rows.append(cells)
            print("| " + " | ".join(cells) + " |", flush=True)

        untiled = folder / "untiled.png"
        free = fuse(args.stack, untiled, None, ["--tile", "0", *fuse_args])
        row("--tile 0", None, free)
        limited = fuse(args.stack, folder / "untiled_limited.png", machine_memory(), ["--tile", "0", *fuse_args])
        row("--tile 0", machine_memory(), limited)
        if free["code"] or limited["code"]:
            raise SystemExit("the untiled runs failed: nothing to compare with")
        limit = int(args.share * min(free["peak"], limited["peak"]))
        cut = fuse(args.stack, folder / "tile0.png", limit, ["--tile", "0", *fuse_args])
        row(f"--tile 0, {args.share:.0%} of the need", limit, cut)
        tiled = folder / "tiled.png"
        default = fuse(args.stack, tiled, limit, list(fuse_args))
        row(f"defaults, {args.share:.0%} of the need", limit, default)
        same = default["written"] and np.array_equal(np.asarray(Image.open(tiled)), np.asarray(Image.open(untiled)))
        rows.append(["defaults' image equals the untiled one", "", "", "", "", "", str(same)])
        print(f"| defaults' image equals the untiled one: {same} |")
        if cut["code"] != 1 or cut["lines"] != 1 or cut["written"] or default["code"] or not same:
            print("NOT AS EXPECTED", file=sys.stderr)
            raise SystemExit(1)
    return rows


if __name__ == "__main__":
    main()
