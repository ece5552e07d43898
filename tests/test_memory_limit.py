"""Half of what a stack needs: bench/memory_limit.py run as it is, on a stack that tiles
quickly enough for the suite (the run with every default is in bench/RESULTS.md)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("prlimit") is None or not sys.platform.startswith("linux"), reason="prlimit, /proc")
def test_under_half_of_what_a_stack_needs_tile_0_runs_out_and_the_defaults_tile(tmp_path):
    """Two 6000x4000 JPEG frames (the untiled run takes 5-6 GB: half of it is well above
    what torch itself takes), alignment on, 5 pyramid levels (margins of 256 pixels:
    a few tiles, a minute in all). Under ``prlimit --as`` at half the untiled run's
    peak: ``--tile 0`` ends with the one-line memory error, exit 1, nothing written;
    without it the command tiles by itself and writes the untiled image."""
    from gpufocus.benchmark import bench_frames
    from gpufocus.write import write_image

    stack = tmp_path / "stack"
    stack.mkdir()
    for i, frame in enumerate(bench_frames(4000, 6000, 2)):
        write_image(stack / f"f{i}.jpg", frame.permute(1, 2, 0).numpy(), quality=90)
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "memory_limit.py"), str(stack), "--out", str(tmp_path), "--", "--levels", "5"],
        capture_output=True, text=True, timeout=900,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| ")]
    assert "out of host memory while" in rows[2] and "--tile is 0: tiling is off" in rows[2]
    tiles = int(rows[3].split(" | ")[2])
    assert tiles > 1 and "written: True" in rows[3]
    assert rows[4].endswith("True |")
