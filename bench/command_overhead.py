"""The command's own overhead: the whole ``gpufocus fuse``, less ``import torch``, less
its stages.

    python bench/command_overhead.py STACK [--runs 3] [--device cpu] [-- FUSE OPTIONS...]

Each run, in turn: ``python -c "import torch"`` (with ``--device cuda``, and CUDA
initialised), then ``python -m gpufocus fuse STACK -o OUT -v`` (``--no-align`` unless
other options are given), both timed from outside; the stages are what ``-v`` reports
(decode, upload, align, fuse, collapse, write: the time the command spent in each, not
the decoders' and encoders' busy time in their threads). Overhead = the command's
time - torch's - the stages': start-up beyond torch, option parsing, reading headers,
planning, shutting down. Medians of ``--runs``. Then one more run under ``-X
importtime``: the modules that took longest to import (cumulative, what they imported
included).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from gpufocus.benchmark import split_at_dashes, time_command, torch_start_seconds

# ``python -m gpufocus`` with the C libraries' stderr left alone, so that -X importtime reaches us.
_WITH_STDERR = "import sys, gpufocus.__main__ as m; m._native_stderr_off = lambda: None; sys.argv[0] = 'gpufocus'; m.main()"


def import_times(command: list[str], top: int = 12) -> list[tuple[str, float]]:
    """The ``top`` modules by cumulative import time (s) in one run of ``command``
    (``python -X importtime`` lines: self, cumulative, name)."""
    done = subprocess.run([sys.executable, "-X", "importtime", *command], capture_output=True, text=True)
    found = []
    for line in done.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match and not match.group(3).strip() and len(match.group(3)) <= 2:  # top-level imports only
            found.append((match.group(4), int(match.group(2)) / 1e6))
    return sorted(found, key=lambda item: -item[1])[:top]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stack", type=Path)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    own, fuse_args = split_at_dashes(argv)
    args = parser.parse_args(own)
    options = fuse_args or ["--no-align"]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "out.png"
        fuse = ["fuse", str(args.stack), "-o", str(out), "-v", "--overwrite", "--device", args.device, *options]
        for _ in range(args.runs):
            torch_seconds = torch_start_seconds(args.device)
            whole, stages = time_command(fuse)
            spent = sum(seconds for name, seconds in stages.items() if not name.endswith(" busy"))  # the command's own
            rows.append({"torch": torch_seconds, "whole": whole, "stages": spent,
                         "overhead": whole - torch_seconds - spent, "per_stage": stages})
            print(f"whole {whole:.3f} s, import torch {torch_seconds:.3f} s, stages {spent:.3f} s "
                  f"({', '.join(f'{k} {v:.2f}' for k, v in stages.items())}): overhead {rows[-1]['overhead']:.3f} s",
                  flush=True)
        imports = import_times(["-c", _WITH_STDERR, *fuse])
    report = {key: statistics.median(row[key] for row in rows) for key in ("whole", "torch", "stages", "overhead")}
    print(f"median of {args.runs}: whole {report['whole']:.3f} s, import torch {report['torch']:.3f} s, "
          f"stages {report['stages']:.3f} s, overhead {report['overhead']:.3f} s")
    print("slowest top-level imports (cumulative s): " + ", ".join(f"{name} {s:.3f}" for name, s in imports))
    report["imports"] = imports
    return report


if __name__ == "__main__":
    main()
