import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from gpufocus.cli import app
from gpufocus.batch import BatchOutput, find_stacks, run_batch
from gpufocus.options import FuseOptions
from gpufocus.load import FrameStack
from gpufocus.synth import make_stack, write_stack


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """Four good stacks and two broken ones (a truncated frame; no images at all)."""
    root = tmp_path_factory.mktemp("stacks")
    for i, name in enumerate(["s1", "s2", "s10", "s3"]):
        write_stack(make_stack(48, 64, 3, max_blur=3.0, seed=i), root / name)
    write_stack(make_stack(48, 64, 3, max_blur=3.0, seed=9), root / "broken")
    frame = root / "broken" / "frame_001.png"
    frame.write_bytes(frame.read_bytes()[:200])
    (root / "empty").mkdir()
    return root


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image)


def test_batch_writes_the_good_reports_the_bad_and_resumes(root, tmp_path):
    out, report = tmp_path / "out", tmp_path / "report.json"
    runner = CliRunner()
    first = runner.invoke(app, ["batch", str(root), "-o", str(out), "--no-align", "--report", str(report)])
    assert first.exit_code == 1
    assert sorted(p.name for p in out.iterdir()) == ["s1.jpg", "s10.jpg", "s2.jpg", "s3.jpg"]
    summary = json.loads(report.read_text())
    assert (summary["written"], summary["failed"], summary["skipped"]) == (4, 2, 0)
    failed = {r["name"]: r["error"] for r in summary["results"] if r["status"] == "failed"}
    assert "frame_001.png: truncated or corrupt" in failed["broken"] and "no image files" in failed["empty"]
    assert [r["name"] for r in summary["results"]] == ["broken", "empty", "s1", "s2", "s3", "s10"]
    assert "failed: broken:" in first.stderr and "4 written, 0 skipped, 2 failed" in first.stderr
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = runner.invoke(app, ["batch", str(root), "-o", str(out), "--no-align", "--report", str(report)])
    assert again.exit_code == 1
    summary = json.loads(report.read_text())
    assert (summary["written"], summary["failed"], summary["skipped"]) == (0, 2, 4)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # done stacks untouched


def test_the_same_results_in_order_over_workers_and_on_a_cluster(root, tmp_path):
    distributed = pytest.importorskip("distributed")
    good = [f for f in find_stacks(root) if f.name.startswith("s")]
    options = FuseOptions(align=None, device="cpu")
    in_order = run_batch(good, options, BatchOutput(tmp_path / "in_order", "png"))
    workers = run_batch(good, options, BatchOutput(tmp_path / "workers", "png"), devices=["cpu", "cpu"])
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            clustered = run_batch(good, options, BatchOutput(tmp_path / "cluster", "png"), scheduler=client)
            assert len(client.scheduler_info()["workers"]) == 2
    for results, folder in [(workers, "workers"), (clustered, "cluster")]:
        assert [r.status for r in results] == ["written"] * 4
        assert [r.name for r in results] == [r.name for r in in_order]
        for r in results:
            assert np.array_equal(pixels(tmp_path / folder / f"{r.name}.png"), pixels(tmp_path / "in_order" / f"{r.name}.png"))
    assert {r.device for r in workers + clustered} == {"cpu"}  # the option reaches every backend


def test_prefetched_frames_are_the_frames(root):
    stack = FrameStack([root / "s1"])
    stack.prefetch(2)
    prefetched = np.concatenate(list(stack.chunks(2)))
    assert np.array_equal(prefetched, np.concatenate(list(FrameStack([root / "s1"]).chunks(1))))
