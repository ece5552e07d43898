"""bench/gpu_check.py, the one script a lent GPU runs, kept alive as a dry run on the CPU."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_on_the_cpu_and_prints_every_row(tmp_path):
    """As on the GPU machine, without imagecodecs (not carried there): a package of that
    name that fails to import comes first on the path, the commands' processes too."""
    blocked = tmp_path / "blocked" / "imagecodecs"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text('raise ImportError("no imagecodecs on the GPU machine")\n')
    out = tmp_path / "rows.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(blocked.parent), os.environ.get("PYTHONPATH")]))},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = dict(json.loads(out.read_text()))
    assert not [name for name, value in rows.items() if str(value).startswith("ERROR")], rows
    assert "all kernels compiled" in rows["compile check, sm_90"]
    assert rows["copy bandwidth"].endswith("TB/s (a copy of 64 MiB on cpu, read + written; median of 5 runs of 5)")
    for source in ("synthetic 512x384 x6 (moving)", "synthetic 512x384 x6 (moving), TIFF files", "synthetic_4x320x240"):
        assert rows[f"cpu vs CPU, defaults: {source} (1/255)"] == "max 0.000, mean 0.0000"
    for kind in ("core", "e2e"):
        for align in ("aligned", "no-align"):
            assert "Gpix-frames/s" in rows[f"{kind} 320x240 x4 float32 {align}"]
        bytes_row = rows.get(f"core 320x240 x4 float32 {align}: bytes against time", "")
        assert kind == "e2e" or (" TB/s (row 1a): upload " in bytes_row and "; fuse " in bytes_row), bytes_row
    aligned = rows["core 320x240 x4 float32 aligned: bytes against time"]
    assert "; align " in aligned and "no-align: bytes" not in aligned
    assert rows["alignment as a CUDA graph"] == "graphs captured: 0; transforms equal; image max difference 0.000 (1/255)"
    assert "Gpix-frames/s" in rows["core 320x240 x4 float32 aligned, CUDA graphs off"]
    assert "Gpix-frames/s" in rows["core 320x240 x4 float32 no-align, kernels in 8 warps"]
    sixteen = rows["e2e: 4 16-bit TIFF (deflate) 320x240 to a 16-bit TIFF, aligned"]
    assert "(median of 1); stages: decode " in sixteen and "s (busy " in sixteen and "align " in sixteen
    assert rows["floor: import torch"].endswith("s (median of 1)")
    for command in ("4 JPEG 320x240 aligned", "4 JPEG 320x240 no-align", "synthetic_4x320x240, defaults"):
        assert "= floor + " in rows[f"command: {command}"]
        assert "with -v (stages synchronised) " in rows[f"command: {command}"]
        assert "fuse " in rows[f"command: {command}"]  # the stages' busy times
    assert "stacks per minute" in rows["command: batch of 3 x synthetic_4x320x240"]
    goals = {name: value for name, value in rows.items() if name.startswith("goal: ")}
    assert list(goals) == ["goal: 4 JPEG files of 320x240 to a JPEG in the library, aligned",
                           "goal: the align stage of 4 still frames of 320x240",
                           "goal: the whole command on the 4 files, over the floor",
                           "goal: synthetic_4x320x240's command, over the floor"], goals
    assert all(re.fullmatch(r"\d+\.\d{3} s, at most [\d.]+ s: (met|NOT met) \(--quick\)", v) for v in goals.values())
    library = float(goals["goal: 4 JPEG files of 320x240 to a JPEG in the library, aligned"].split(" s")[0])
    assert f"{library:.3f} s (median of 1)" in rows["e2e 320x240 x4 float32 aligned"]
    assert "operators by own time" in rows["where the time goes"]
    small = rows["start-up of a small stack's command"]
    assert "with Triton's kernels" in small and "with their torch twins" in small and "gpufocus" in small
    assert "(median of 1; a note in 0 of 2 runs); " in small  # no kernel to compile on the CPU
    assert " s with an empty Triton cache, said nothing; " in small
    assert re.search(r"Triton's key to its cache, once a process \(its library hashed\): \d+\.\d{3} s; ", small), small
    tiles = rows["fuse stage by tiles"]
    assert tiles.startswith("4 x 320x240, tiles / column-pass tiles: 8x64 / 16x64 ") and tiles.count(" ms") == 5
    assert "DIFFERENT" not in tiles
    pytest.importorskip("nvidia.nvimgcodec")
    assert "against Pillow: max 0 levels" in rows["JPEG decoder"]  # its CPU-only backend here
    assert "the same bytes; decoded against Pillow's: max 0 levels" in rows["JPEG encoder"]
