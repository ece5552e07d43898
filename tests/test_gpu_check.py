"""bench/gpu_check.py, the one script a lent GPU runs, kept alive as a dry run on the CPU."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_on_the_cpu_and_prints_every_row(tmp_path):
    out = tmp_path / "rows.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--quick", "--json", str(out)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = dict(json.loads(out.read_text()))
    assert not [name for name, value in rows.items() if str(value).startswith("ERROR")], rows
    assert "all kernels compiled" in rows["compile check, sm_90"]
    assert rows["cpu vs CPU, defaults: synthetic 512x384 x6 (moving) (1/255)"] == "max 0.000, mean 0.0000"
    assert rows["cpu vs CPU, defaults: synthetic 512x384 x6 (moving), PNG files (1/255)"] == "max 0.000, mean 0.0000"
    for kind in ("core", "e2e"):
        for align in ("aligned", "no-align"):
            assert "Gpix-frames/s" in rows[f"{kind} 320x240 x4 float32 {align}"]
    assert rows["alignment as a CUDA graph"] == "graphs captured: 0; transforms equal; image max difference 0.000 (1/255)"
    assert "Gpix-frames/s" in rows["core 320x240 x4 float32 aligned, CUDA graphs off"]
    assert "Gpix-frames/s" in rows["core 320x240 x4 float32 no-align, kernels in 8 warps"]
    sixteen = rows["e2e: 4 16-bit TIFF (deflate) 320x240 to a 16-bit TIFF, aligned"]
    assert "(median of 1); stages: decode " in sixteen and "s (busy " in sixteen and "align " in sixteen
    assert rows["floor: import torch"].endswith("s (median of 1)")
    for align in ("aligned", "no-align"):
        assert "= floor + " in rows[f"command: 4 JPEG 320x240 {align}"]
        assert "fuse " in rows[f"command: 4 JPEG 320x240 {align}"]  # the stages' busy times
    assert "stacks per minute" in rows["command: batch of 3 synthetic stacks of 4 x 320x240"]
    pytest.importorskip("nvidia.nvimgcodec")
    assert "against Pillow: max 0 levels" in rows["JPEG decoder"]  # its CPU-only backend here
    assert "the same bytes; decoded against Pillow's: max 0 levels" in rows["JPEG encoder"]
