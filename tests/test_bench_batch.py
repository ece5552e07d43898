"""bench/batch.py, run as it is on tiny stacks: every case prints its row, the one
process with its stages added up over the stacks."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_batch_benchmark_prints_a_row_per_case(tmp_path):
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "batch.py"), "--stacks", "2", "--frames", "3", "--size", "96x64",
         "--repeat", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    one, workers = rows[-2:]
    assert one.startswith("| one process on the CPU, pipelined |") and re.search(r"fuse [\d.]+, ", one)
    assert re.search(r"write [\d.]+, write busy [\d.]+", one)
    assert workers.startswith("| 2 worker processes |") and "not added up" in workers
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["stack_00.jpg", "stack_01.jpg"]
