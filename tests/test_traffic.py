"""gpufocus.traffic: the bytes a run moves, counted on the meta device."""

import json

import pytest
import torch

from gpufocus.traffic import _Counter, count_traffic


def test_the_counter_counts_reads_and_writes_and_not_views():
    a, b = torch.empty(10, 10, device="meta"), torch.empty(10, 10, device="meta")
    counter = _Counter()
    with counter:
        a + b  # read 2 x 400, write 400
        a.t()[2:5]  # views: nothing
        a.add_(b)  # read a and b, write a
        a.copy_(b)  # read b, write a
        torch.add(a, b, out=b)  # read a and b, write b
    counted = counter.stages["other"]
    assert counted.operations == 4
    assert (counted.read, counted.written) == (800 + 800 + 400 + 800, 400 + 400 + 400 + 400)


def test_the_fuse_stage_of_the_kernels_moves_less_than_its_twins():
    pytest.importorskip("triton")
    kernels = count_traffic(240, 320, 4, 2, triton=True)
    twins = count_traffic(240, 320, 4, 2, triton=False)
    assert kernels["fuse"].launches > 0 and twins["fuse"].launches == 0
    assert kernels["fuse"].bytes * 5 < twins["fuse"].bytes
    # the stages the kernels do not touch move the same (frames this small are aligned
    # at full size: no level of their luminance is made)
    assert kernels["align"].bytes == twins["align"].bytes > 0
    # uint8 to float in one pass: read 1, write 4 bytes a sample
    assert kernels["upload"].bytes == twins["upload"].bytes == 4 * 3 * 240 * 320 * (1 + 4)


def test_the_align_stage_reads_the_frames_once_on_the_kernels():
    """Frames larger than the estimation size: the kernels make the luminance's first
    level in one pass, which reads each float frame once (12 bytes a pixel); frames
    that move are resampled on a grid the kernels write in one pass."""
    pytest.importorskip("triton")
    kernels = count_traffic(1200, 1600, 2, 2, triton=True)["align"]
    twins = count_traffic(1200, 1600, 2, 2, triton=False)["align"]
    pixel_frames = 1200 * 1600 * 2
    assert kernels.by_name["triton:pyr_down[luma]"] > 12 * pixel_frames
    assert kernels.bytes < 24 * pixel_frames < 100 * pixel_frames < twins.bytes
    # frames that move: their sampling grid and coverage written once (8 + 1 bytes a pixel)
    kernels = count_traffic(1200, 1600, 2, 2, triton=True, breathing=True)["align"]
    twins = count_traffic(1200, 1600, 2, 2, triton=False, breathing=True)["align"]
    assert kernels.by_name["triton:sampling_grid"] == pytest.approx(9 * pixel_frames, rel=0.01)
    assert kernels.bytes < 90 * pixel_frames < 250 * pixel_frames < twins.bytes


def test_bench_traffic_writes_a_row_per_stage_and_path(tmp_path):
    pytest.importorskip("triton")
    from typer.testing import CliRunner

    from gpufocus.cli import app

    out = tmp_path / "traffic.json"
    result = CliRunner().invoke(app, ["bench", "--traffic", "--size", "320x240", "--frames", "4", "--chunk", "2",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    rows = {(r["stage"], r["path"], r["frames"]): r for r in report["rows"]}
    for path in ("triton", "torch twins"):
        for stage in ("upload", "align", "fuse", "collapse"):
            assert rows[(stage, path, "still")]["bytes_per_pixel_frame"] > 0
        assert rows[("align", path, "breathing")]["bytes_per_pixel_frame"] > rows[("align", path, "still")][
            "bytes_per_pixel_frame"]
    assert rows[("fuse", "triton", "still")]["bytes_per_pixel_frame"] < 150
    assert "bytes/pixel-frame" in result.output and "| fuse | triton | still |" in result.output
