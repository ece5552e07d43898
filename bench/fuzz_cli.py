"""The error contract through the real command: damaged files, batches, interrupts.

    python bench/fuzz_cli.py [--cases 1000] [--interrupts 40] [--seed 0] [--workers 2]

Each case is a fresh ``gpufocus fuse`` process (``python -m gpufocus``): a good
frame and a damaged one (tests/mutate.py: bit flips, truncation, zeroed and random
bytes, broken PNG chunk lengths, JPEG segment lengths, TIFF IFD entries, RIFF sizes;
JPEG, PNG 8/16-bit, TIFF 8/16-bit, a 3-page OME-TIFF z-stack, DNG, WebP), alignment
on for even cases. Counted:

- fused / refused: exit 0 with a readable output, or exit 1 with one ``error:`` line;
- tracebacks: "Traceback" on stderr, or an exit code other than 0, 1 (and 130 for
  the interrupts);
- noisy: a line on stderr that is not ours (native libraries' chatter), or a refusal
  in more than one line (a fused result may warn, a line per frame);
- inputs changed, partial outputs (an output after an error), stale temporaries.

Then ``--interrupts`` runs get SIGINT at a random moment (imports included) and as
many get SIGKILL, each followed by a clean run into the same folder, which must
remove what the killed one left. A SIGINT in the first few dozen milliseconds, while
Python itself starts (site-packages, before any gpufocus code runs), ends in Python's
own traceback: counted on a line of its own. Prints a markdown table for
bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import random
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from mutate import cases, seed_files  # noqa: E402

from gpufocus.benchmark import machine_description  # noqa: E402

COMMAND = [sys.executable, "-m", "gpufocus"]


def _digests(folder: Path, skip: set[str]) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.name not in skip}


def _one(n: int, kind: str, suffix: str, mutation: str, data: bytes, good: bytes, root: Path) -> collections.Counter:
    folder = root / f"case{n:04d}"
    folder.mkdir()
    a, b, out = folder / f"a{suffix}", folder / f"b{suffix}", folder / "out.png"
    a.write_bytes(good)
    b.write_bytes(data)
    before = _digests(folder, set())
    args = ["fuse", str(a), str(b), "-o", str(out), "-q"] + ([] if n % 2 == 0 else ["--no-align"])
    done = subprocess.run(COMMAND + args, capture_output=True, text=True)
    found = collections.Counter()
    lines = done.stderr.strip().splitlines()
    if "Traceback" in done.stderr or done.returncode not in (0, 1) or "internal error" in done.stderr:
        found["tracebacks"] += 1
        print(f"case {n} ({kind}, {mutation}): exit {done.returncode}: {done.stderr[-300:]}", file=sys.stderr)
    foreign = [line for line in lines if not line.startswith(("warning: ", "error: "))]
    if foreign or (done.returncode == 1 and len(lines) != 1):
        found["noisy"] += 1
        print(f"case {n} ({kind}, {mutation}): exit {done.returncode}, {len(lines)} lines: {lines[:3]}", file=sys.stderr)
    if done.returncode == 0:
        found["fused"] += 1
    elif done.returncode == 1:
        found["refused"] += 1
        if out.exists():
            found["partial outputs"] += 1
    if _digests(folder, {"out.png"}) != before:
        found["inputs changed or files left"] += 1
    return found


def _default_sigint() -> None:
    # A shell starts background jobs with Ctrl-C ignored, and children inherit that:
    # give the command the default, as a terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(n: int, how: signal.Signals, rng: random.Random, stack: Path, root: Path) -> collections.Counter:
    folder = root / f"{how.name.lower()}{n:03d}"
    folder.mkdir()
    out = folder / "out.png"
    child = subprocess.Popen(
        COMMAND + ["fuse", str(stack), "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_sigint,
    )
    time.sleep(rng.uniform(0.0, 4.0))  # start-up (imports), reading, fusing or writing
    child.send_signal(how)
    _, stderr = child.communicate()
    found = collections.Counter()
    if how == signal.SIGINT:
        if child.returncode == 130 and stderr == "interrupted\n" and not out.exists():
            found["interrupted cleanly"] += 1
        elif child.returncode == 0 and out.exists():
            found["finished before the signal"] += 1
        elif ("<frozen site>" in stderr or child.returncode == -signal.SIGINT) and not out.exists():
            # Python's own start-up, before gpufocus runs: its traceback, or (before Python
            # installs its handler at all) the signal's default action, silently
            found["interrupted while Python itself started"] += 1
        else:
            found["tracebacks"] += 1
            print(f"SIGINT {n}: exit {child.returncode}: {stderr[-300:]}", file=sys.stderr)
    else:
        again = subprocess.run(COMMAND + ["fuse", str(stack), "-o", str(out), "--overwrite", "-q"], capture_output=True)
        leftover = [p.name for p in folder.iterdir() if p.name != "out.png"]
        found["killed, rerun clean" if again.returncode == 0 and not leftover else "stale temporaries"] += 1
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--interrupts", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    files = seed_files()
    total = collections.Counter()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpufocus-fuzz-") as tmp, ThreadPoolExecutor(args.workers) as pool:
        root = Path(tmp)
        jobs = [
            pool.submit(_one, n, kind, suffix, mutation, data, files[kind], root)
            for n, (kind, suffix, mutation, data) in enumerate(cases(args.cases, seed=args.seed, files=files))
        ]
        for job in jobs:
            total.update(job.result())
        from gpufocus.synth import make_stack, write_stack

        stack = root / "stack"
        write_stack(make_stack(1200, 1600, 10, breathing=0.003, max_blur=4.0, seed=args.seed), stack, fmt="jpg")
        rng = random.Random(args.seed)
        for n in range(args.interrupts):
            total.update(_interrupt(n, signal.SIGINT, rng, stack, root))
            total.update(_interrupt(n, signal.SIGKILL, rng, stack, root))
    keys = ["fused", "refused", "tracebacks", "noisy", "inputs changed or files left", "partial outputs",
            "interrupted cleanly", "finished before the signal", "interrupted while Python itself started",
            "killed, rerun clean", "stale temporaries"]
    print(f"\n{args.cases} damaged files (seed {args.seed}) and {args.interrupts} SIGINT + {args.interrupts} SIGKILL "
          f"runs, {time.perf_counter() - started:.0f} s; {machine_description()}\n")
    print("| outcome | count |\n|---|---|")
    for key in keys:
        print(f"| {key} | {total[key]} |")
    bad = sum(total[k] for k in ("tracebacks", "noisy", "inputs changed or files left", "partial outputs", "stale temporaries"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
