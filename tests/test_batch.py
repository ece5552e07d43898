import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import interruptible, tensor_operations_off_the_main_thread

from gpufocus.cli import app
from gpufocus.batch import BatchOutput, find_stacks, run_batch
from gpufocus.options import FuseOptions
from gpufocus.load import FrameStack
from gpufocus.synth import make_stack, write_stack
from gpufocus.timing import NO_TIMER


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


def test_prefetched_frames_are_the_frames(root, monkeypatch):
    stack = FrameStack([root / "s1"])
    stack.prefetch(2, None)
    prefetched = np.concatenate(list(stack.chunks(2)))
    assert np.array_equal(prefetched, np.concatenate(list(FrameStack([root / "s1"]).chunks(1))))
    # a frame the prefetch could not decode (memory held by the stack before) is decoded in its turn
    import threading

    load = FrameStack._load

    def short_of_memory_ahead(stack, index):
        if threading.current_thread().name.startswith("gpufocus-prefetch"):
            raise MemoryError("out of memory")
        return load(stack, index)

    monkeypatch.setattr(FrameStack, "_load", short_of_memory_ahead)
    stack.prefetch(2, None)
    assert np.array_equal(np.concatenate(list(stack.chunks(2))), prefetched)


def test_the_next_stack_is_read_ahead_by_the_engines_chunks(root, tmp_path, monkeypatch):
    """The stack after this one decodes its first two chunks ahead, as the engine will
    read them (with the chunk left to the engine: 4 frames on the CPU, not 1)."""
    import gpufocus.load

    prefetch, asked = FrameStack.prefetch, []

    def recorded(stack, chunk, device, timer):
        asked.append(chunk)
        prefetch(stack, chunk, device, timer)
        assert len(stack._early) == min(len(stack), 2 * chunk)

    monkeypatch.setattr(FrameStack, "prefetch", recorded)
    results = run_batch([root / "s1", root / "s2"], FuseOptions(device="cpu"), BatchOutput(tmp_path / "out", "png"))
    assert [r.status for r in results] == ["written"] * 2 and asked == [4, 4]
    stack = FrameStack([root / "s1"])
    monkeypatch.setattr(gpufocus.load, "host_room", lambda: 48 * 64 * 3 * 8 * 2)  # two frames in an eighth
    prefetch(stack, 4, None, NO_TIMER)
    assert len(stack._early) == 2
    assert np.array_equal(np.concatenate(list(stack.chunks(2))), np.concatenate(list(FrameStack([root / "s1"]).chunks(3))))


def test_in_one_process_only_the_fusing_thread_runs_tensor_operations(root, tmp_path):
    """The threads that read the next stack, write and encode make no tensor operations
    on the CPU (see ``tensor_operations_off_the_main_thread``): the writer's made every
    stack after the first fuse 2-3 times slower. The depth map too is scaled and made
    integers on the fusing thread."""
    with tensor_operations_off_the_main_thread() as seen:
        results = run_batch([root / "s1", root / "s2", root / "s3"], FuseOptions(device="cpu", depth_map=True),
                            BatchOutput(tmp_path / "out", "png"))
    assert [r.status for r in results] == ["written"] * 3
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "s1.depth.png", "s1.png", "s2.depth.png", "s2.png", "s3.depth.png", "s3.png"]
    assert not seen, seen


def test_a_stack_too_large_is_refused_before_its_frames_are_read_ahead(root, tmp_path, monkeypatch):
    """The batch reads the next stack ahead only once its headers passed the checks
    that refuse frames before decoding (``--max-megapixels``, memory)."""
    load, decoded = FrameStack._load, []
    monkeypatch.setattr(FrameStack, "_load", lambda stack, index: decoded.append(index) or load(stack, index))
    options = FuseOptions(device="cpu", max_megapixels=0.002)  # the frames are 64x48: 0.003
    results = run_batch([root / "s1", root / "s2"], options, BatchOutput(tmp_path / "out", "png"))
    assert [r.status for r in results] == ["failed"] * 2 and decoded == []
    assert all("is more than --max-megapixels 0.002" in r.error for r in results)
    # refused while the stack before it held the memory: not read ahead, and fused in its turn
    import threading

    from gpufocus import GpufocusError, engine

    check, refused = engine.check_fits, []

    def busy_now(stack, options, device):
        if threading.current_thread().name.startswith("gpufocus-next"):
            refused.append(stack)
            raise GpufocusError("needs more memory than this run may use")
        check(stack, options, device)

    monkeypatch.setattr(engine, "check_fits", busy_now)
    decoded.clear()
    results = run_batch([root / "s1", root / "s2"], FuseOptions(device="cpu"), BatchOutput(tmp_path / "ok", "png"))
    assert [r.status for r in results] == ["written"] * 2 and len(refused) == 2
    assert sorted(decoded) == [0, 0, 1, 1, 2, 2]  # each frame once, by its stack's run


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_a_manifest_names_each_stacks_frames_and_output(root, tmp_path, kind):
    from gpufocus.batch import read_manifest

    s1 = sorted((root / "s1").glob("frame_*.png"))
    rows = [
        {"name": "whole", "frames": [str(root / "s2")], "output": "results/whole.png"},
        {"name": "picked", "frames": [str(s1[0]), str(s1[2])]},
        {"frames": [str(root / "s3" / "frame_*.png")]},  # a pattern; named after its first file
    ]
    manifest = tmp_path / f"stacks.{kind}"
    if kind == "json":
        manifest.write_text(json.dumps({"stacks": rows}))
    else:
        lines = ["name,frames,output"] + [f"{r.get('name', '')},{';'.join(r['frames'])},{r.get('output', '')}" for r in rows]
        manifest.write_text("\n".join(lines) + "\n")
    stacks = read_manifest(manifest)
    assert [s.name for s in stacks] == ["whole", "picked", "frame_000"]
    assert len(stacks[2].inputs) == 3 and stacks[0].output == tmp_path / "results" / "whole.png"
    result = CliRunner().invoke(app, ["batch", str(manifest), "-o", str(tmp_path / "out"), "--no-align", "-q"])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "results" / "whole.png").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["frame_000.jpg", "picked.jpg"]
    # the picked frames, and only those, were fused
    from gpufocus import fuse

    expected = (fuse(s1[::2], device="cpu", align=False) * 255).round().permute(1, 2, 0).byte().numpy()
    direct = tmp_path / "direct.png"
    Image.fromarray(expected).save(direct)
    assert np.abs(pixels(tmp_path / "out" / "picked.jpg").astype(int) - pixels(direct).astype(int)).mean() < 3


def test_manifest_errors(tmp_path):
    from gpufocus import GpufocusError
    from gpufocus.batch import read_manifest

    cases = {
        "a.json": ("[{\"name\": \"x\"}]", "stack 1 has no frames"),
        "b.json": ("{oops", "not JSON"),
        "c.csv": ("frames\nnowhere/*.png\n", "nowhere/\\*.png matches no file"),
        "d.csv": ("name,frames\nx,a\nx,b\n", "two stacks are named 'x'"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(GpufocusError, match=message):
            read_manifest(tmp_path / name)


def _arrive(folder, frames, delay: float, marker: str | None = None) -> None:
    """Frames written into ``folder`` one by one, ``delay`` seconds apart (a camera
    tethered to the computer), then the marker file."""
    import time

    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        partial = folder / f".frame_{i:03d}.png.part"
        Image.fromarray(frame).save(partial, format="PNG")
        partial.rename(folder / f"frame_{i:03d}.png")
        time.sleep(delay)
    if marker:
        (folder / marker).write_text("")


def _frames(seed: int) -> np.ndarray:
    stack = make_stack(48, 64, 4, max_blur=3.0, seed=seed)
    return (stack.frames.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


@pytest.mark.parametrize("marker", [None, "DONE"])
def test_watch_fuses_each_stack_once_complete_and_resumes(tmp_path, marker):
    import threading
    import time

    from gpufocus.batch import watch_stacks

    watched, out = tmp_path / "shoot", tmp_path / "out"
    watched.mkdir()
    output = BatchOutput(out, "png")
    stop, results = threading.Event(), []
    options = FuseOptions(align=None, device="cpu")
    watcher = threading.Thread(
        target=lambda: results.extend(
            watch_stacks(watched, options, output, settle=0.8, marker=marker, poll=0.1, stop=stop)
        )
    )
    watcher.start()
    try:
        for n in range(2):  # the second stack starts arriving while the first may be fused
            _arrive(watched / f"stack{n}", _frames(n), delay=0.3, marker=marker)
        deadline = time.time() + 60
        while len(list(out.glob("*.png"))) < 2 and time.time() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        watcher.join(60)
    assert [(r.name, r.status, r.frames) for r in results] == [("stack0", "written", 4), ("stack1", "written", 4)]
    for n in range(2):  # every frame went in: the result is the whole stack's
        whole = run_batch([watched / f"stack{n}"], options, BatchOutput(tmp_path / "check", "png"))[0]
        assert whole.status == "written"
        assert np.array_equal(pixels(out / f"stack{n}.png"), pixels(tmp_path / "check" / f"stack{n}.png"))
    # a second watch over the same folders finds them done
    stop = threading.Event()
    timer = threading.Timer(1.5, stop.set)
    timer.start()
    assert watch_stacks(watched, options, output, settle=0.2, marker=marker, poll=0.1, stop=stop) == []


def test_watch_command_finishes_the_stack_in_hand_on_ctrl_c(tmp_path):
    import signal
    import subprocess
    import sys

    watched = tmp_path / "shoot"
    _arrive(watched / "stack0", _frames(0), delay=0)
    child = subprocess.Popen(
        [sys.executable, "-m", "gpufocus", "batch", str(watched), "-o", str(tmp_path / "out"), "--watch",
         "--settle", "0", "--no-align"],
        stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, preexec_fn=interruptible,
    )
    lines = []
    for line in child.stderr:
        lines.append(line)
        if line.startswith("written: stack0"):
            break
    child.send_signal(signal.SIGINT)
    _, rest = child.communicate(timeout=60)
    assert child.returncode == 0, lines + [rest]
    assert "stopping once the stack in hand is done" in rest and "1 written, 0 skipped, 0 failed" in rest
    assert (tmp_path / "out" / "stack0.jpg").exists()
