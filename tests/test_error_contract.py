"""The error contract, case by case: one line naming the file, exit code 1, nothing
written, inputs never touched; interrupts end with ``interrupted`` and 130."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from gpufocus import GpufocusError, read_image, write_image
from gpufocus.cli import app
from gpufocus.options import FuseOptions
from gpufocus.synth import make_stack, write_stack
from gpufocus.write import Outputs, check_distinct
from conftest import interruptible
from test_write import _unwritable_folder


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def one_error(result, *parts: str) -> None:
    assert result.exit_code == 1, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for part in parts:
        assert part in lines[0], (part, lines[0])


@pytest.fixture
def stack(tmp_path) -> Path:
    write_stack(make_stack(48, 64, 3, max_blur=3.0, seed=2), tmp_path / "S")
    return tmp_path / "S"


# -- outputs never replace an input, nor each other ---------------------------------


def _same_path(s, t):
    return s / "frame_000.png"


def _symlink_to_input(s, t):
    (t / "link.png").symlink_to(s / "frame_000.png")
    return t / "link.png"


def _hard_link_to_input(s, t):
    os.link(s / "frame_001.png", t / "hard.png")
    return t / "hard.png"


def _relative_spelling(s, t):
    return s / ".." / s.name / "frame_002.png"


@pytest.mark.parametrize("make_output", [_same_path, _symlink_to_input, _hard_link_to_input, _relative_spelling])
@pytest.mark.parametrize("option", ["-o", "--depth-map", "--save-transforms"])
def test_an_output_that_is_an_input_is_refused(stack, tmp_path, make_output, option):
    target = make_output(stack, tmp_path)
    before = digests(stack)
    others = {"-o": tmp_path / "out.png"}
    others[option] = target
    args = [a for pair in others.items() for a in pair]
    result = run("fuse", stack, *args, "--overwrite", "-q")
    one_error(result, str(target), "is the same file as the input")
    assert digests(stack) == before
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("other", ["--depth-map", "--save-transforms"])
def test_two_outputs_on_one_file_are_refused(stack, tmp_path, other):
    out = tmp_path / "out.png"
    one_error(run("fuse", stack, "-o", out, other, out, "-q"), "is the same file as another output")
    assert not out.exists()


def test_align_command_never_writes_over_its_frames(stack, tmp_path):
    before = digests(stack)
    one_error(run("align", stack, "-o", stack, "--overwrite", "-q"), "is the same file as the input")
    one_error(
        run("align", stack, "-o", tmp_path / "A", "--save-transforms", stack / "frame_001.png", "--overwrite"),
        "is the same file as the input",
    )
    assert digests(stack) == before and not (tmp_path / "A").exists()


def test_synth_never_writes_over_its_scene(tmp_path):
    scene = tmp_path / "S" / "frame_000.png"
    scene.parent.mkdir()
    write_image(scene, np.full((40, 56, 3), 128, np.uint8))
    before = scene.read_bytes()
    one_error(run("synth", tmp_path / "S", "--image", scene, "--frames", "2", "--overwrite"), "same file as the input")
    assert scene.read_bytes() == before


def test_check_distinct_compares_real_files(tmp_path):
    a = tmp_path / "a.png"
    a.write_bytes(b"x")
    check_distinct([tmp_path / "b.png", tmp_path / "c.png"], [a])  # distinct: no error
    with pytest.raises(GpufocusError, match="same file as another output"):
        check_distinct([tmp_path / "b.png", tmp_path / "sub" / ".." / "b.png"])


# -- every check before any file is written ----------------------------------------


def test_save_transforms_without_alignment_writes_nothing(stack, tmp_path):
    result = run("fuse", stack, "-o", tmp_path / "out.png", "--no-align", "--save-transforms", tmp_path / "t.json")
    one_error(result, "t.json", "needs alignment")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S"]


def test_unwritable_transforms_path_writes_nothing(stack, tmp_path):
    folder = _unwritable_folder(tmp_path)
    if folder is None:
        pytest.skip("found no folder that this user cannot write")
    try:
        result = run("fuse", stack, "-o", tmp_path / "out.png", "--save-transforms", folder / "t.json")
        one_error(result, "t.json", "not writable")
        assert not (tmp_path / "out.png").exists()
    finally:
        (tmp_path / "locked").chmod(0o755)


@pytest.mark.parametrize(
    "damage, message",
    [
        (None, "cannot be read"),
        (lambda t: "{not json", "not JSON"),
        (lambda t: json.dumps([1, 2]), "not a file of per-frame transforms"),
        (lambda t: json.dumps({**t, "width": 65}), "transforms of 65x48 frames, not 64x48"),
        (lambda t: json.dumps({**t, "frames": t["frames"][:2]}), "transforms of 2 frames, for a stack of 3"),
        (lambda t: json.dumps({**t, "frames": [{**t["frames"][0], "matrix": [[1, 0], [0, 1]]}, *t["frames"][1:]]}),
         "frame 0: no 3x3 matrix of numbers"),
        (lambda t: json.dumps({**t, "frames": [{**t["frames"][0], "gain": ["x"]}, *t["frames"][1:]]}),
         "frame 0: its gain is not a list of numbers"),
    ],
)
def test_eval_names_a_transforms_file_it_cannot_use(stack, tmp_path, damage, message):
    saved = tmp_path / "t.json"
    assert run("fuse", stack, "-o", tmp_path / "out.png", "--save-transforms", saved).exit_code == 0
    given = tmp_path / "given.json"
    if damage is not None:
        given.write_text(damage(json.loads(saved.read_text())))
    before = digests(tmp_path)
    one_error(run("eval", stack, "-r", tmp_path / "out.png", "--transforms", given), "given.json", message)
    assert digests(tmp_path) == before


def test_a_failed_second_output_leaves_no_first(stack, tmp_path, monkeypatch):
    # The depth map's write fails after the fused image was encoded: neither appears.
    real = Outputs.write

    def failing(self, path, data=None, *, encode=None):
        if Path(path).name == "depth.png":
            raise GpufocusError(f"{path}: cannot write (No space left on device)")
        return real(self, path, data, encode=encode)

    monkeypatch.setattr(Outputs, "write", failing)
    result = run("fuse", stack, "-o", tmp_path / "out.png", "--depth-map", tmp_path / "depth.png", "-q")
    one_error(result, "depth.png: cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S"]


def test_paths_that_cannot_be_used_are_named(stack, tmp_path):
    (tmp_path / "afile").write_text("x")
    one_error(run("fuse", stack, "-o", tmp_path / "afile" / "out.png"), "afile is a file, not a folder")
    (tmp_path / "loop1").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop1")
    one_error(run("fuse", tmp_path / "loop1", stack, "-o", tmp_path / "out.png"), "loop1: a loop of symbolic links")
    one_error(run("fuse", stack, "-o", tmp_path / "loop1"), "loop1")  # an output path that loops
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    one_error(run("fuse", stack, tmp_path / "dangling.png", "-o", tmp_path / "o.png"), "broken symbolic link")


# -- frames too small to align; frames too small to fuse ----------------------------


@pytest.mark.parametrize("side", [8, 9, 31])
def test_frames_too_small_to_align_are_fused_as_they_are(tmp_path, side):
    rng = np.random.default_rng(side)
    paths = write_stack_files(tmp_path / "tiny", rng.integers(0, 256, (3, side, side, 3), dtype=np.uint8))
    aligned, plain = tmp_path / "aligned.png", tmp_path / "plain.png"
    result = run("fuse", *paths, "-o", aligned)
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: {side}x{side} frames are too small to align (at least 32x32); fusing them as they are"]
    assert run("fuse", *paths, "-o", plain, "--no-align", "-q").exit_code == 0
    assert np.array_equal(read_image(aligned), read_image(plain))


def test_frames_too_small_to_fuse_are_named(tmp_path):
    paths = write_stack_files(tmp_path / "tiny", np.zeros((2, 7, 9, 3), np.uint8))
    one_error(run("fuse", *paths, "-o", tmp_path / "o.png"), "frame_0.png: 9x7 is too small to fuse")


def write_stack_files(folder: Path, frames: np.ndarray) -> list[Path]:
    folder.mkdir(parents=True)
    paths = [folder / f"frame_{i}.png" for i in range(len(frames))]
    for path, frame in zip(paths, frames):
        Image.fromarray(frame).save(path)
    return paths


# -- decoders' failures --------------------------------------------------------------


def _png_with_bad_chunk(path: Path) -> None:
    """A PNG whose IDAT length is zeroed: Pillow opens it, then raises ``SyntaxError``
    ("broken PNG file") when it reads on into the image data as if it were chunks."""
    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    idat = 8 + 12 + 13  # after the signature and IHDR
    assert data[idat + 4 : idat + 8] == b"IDAT"
    data[idat : idat + 4] = bytes(4)
    path.write_bytes(bytes(data))


def _png_with_short_header(path: Path) -> None:
    """IHDR shorter than 13 bytes (Pillow: ValueError)."""
    chunk = b"IHDR" + b"\x00" * 6
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + (6).to_bytes(4, "big") + chunk + zlib.crc32(chunk).to_bytes(4, "big"))


def _jpeg_with_zeroed_app1(path: Path) -> None:
    """A JPEG whose EXIF segment length is 0: Pillow would read the embedded thumbnail."""
    from mutate import seed_files

    data = bytearray(seed_files()["jpeg_thumb"])
    at = data.find(b"\xff\xe1")
    data[at + 2 : at + 4] = b"\x00\x00"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "damage, message",
    [
        (_png_with_bad_chunk, "broken PNG file"),
        (_png_with_short_header, "Truncated IHDR chunk"),
        (_jpeg_with_zeroed_app1, "marker 0xE1 has a segment length of 0"),
    ],
)
def test_decoder_exceptions_are_one_line_errors(tmp_path, damage, message):
    bad = tmp_path / "bad.png"
    damage(bad)
    with pytest.raises(GpufocusError, match=message) as caught:
        read_image(bad)
    assert str(caught.value).startswith(f"{bad}: ") and "\n" not in str(caught.value)


def test_a_thumbnail_is_never_taken_for_the_image(tmp_path):
    from mutate import seed_files

    good = tmp_path / "good.jpg"
    good.write_bytes(seed_files()["jpeg_thumb"])
    assert read_image(good).shape == (40, 48, 3)  # the thumbnail (12x10) is not what is read


# -- batch: one broken stack is that stack's failure ---------------------------------


@pytest.fixture
def twelve_stacks(tmp_path) -> Path:
    root = tmp_path / "root"
    for i in range(12):
        write_stack(make_stack(40, 48, 3, max_blur=2.0, seed=i), root / f"s{i:02d}")
    _png_with_bad_chunk(root / "s03" / "frame_001.png")  # Pillow: SyntaxError
    (root / "s07" / "frame_002.png").write_bytes((root / "s07" / "frame_002.png").read_bytes()[:150])
    Image.new("RGB", (20, 20)).save(root / "s10" / "frame_002.png")  # another size
    return root


def test_a_batch_with_broken_stacks_goes_on(twelve_stacks, tmp_path):
    out, report = tmp_path / "out", tmp_path / "report.json"
    result = run("batch", twelve_stacks, "-o", out, "--no-align", "--report", report)
    assert result.exit_code == 1, result.stderr
    assert "Traceback" not in result.stderr
    written = sorted(p.stem for p in out.iterdir())
    assert written == [f"s{i:02d}" for i in range(12) if i not in (3, 7, 10)]
    summary = json.loads(report.read_text())
    failed = {r["name"]: r["error"] for r in summary["results"] if r["status"] == "failed"}
    assert sorted(failed) == ["s03", "s07", "s10"]
    assert "frame_001.png: corrupt" in failed["s03"] and "frame_002.png" in failed["s07"]
    assert "frame_002.png: 20x20, where the other frames are 48x40 (frame_000.png, ...)" in failed["s10"]
    assert [line for line in result.stderr.splitlines() if line.startswith("failed: ")] == [
        f"failed: {name}: {failed[name]}" for name in ("s03", "s07", "s10")
    ]


def test_any_exception_fails_only_its_stack(twelve_stacks, tmp_path, monkeypatch):
    import gpufocus.batch as batch
    from gpufocus.job import FusionJob

    real_fuse, real_write = FusionJob.fuse, FusionJob.write

    def fuse(job, *args, **kwargs):
        if job.stack.paths[0].parent.name == "s01":
            raise RuntimeError("a bug in fusing")
        return real_fuse(job, *args, **kwargs)

    def write(job):
        if job.targets.image.stem == "s02":
            raise ValueError("an encoder's bug")
        return real_write(job)

    monkeypatch.setattr(FusionJob, "fuse", fuse)
    monkeypatch.setattr(FusionJob, "write", write)
    results = batch.run_batch(batch.find_stacks(twelve_stacks), FuseOptions(align=None), batch.BatchOutput(tmp_path / "out"))
    status = {r.name: (r.status, r.error) for r in results}
    assert status["s01"] == ("failed", "RuntimeError: a bug in fusing")
    assert status["s02"] == ("failed", "ValueError: an encoder's bug")
    assert sum(s == "written" for s, _ in status.values()) == 7


def test_an_unwritable_report_is_refused_before_any_work(twelve_stacks, tmp_path):
    folder = _unwritable_folder(tmp_path)
    if folder is None:
        pytest.skip("found no folder that this user cannot write")
    try:
        result = run("batch", twelve_stacks, "-o", tmp_path / "out", "--report", folder / "r.json")
        one_error(result, "r.json", "not writable")
        assert not (tmp_path / "out").exists()
    finally:
        (tmp_path / "locked").chmod(0o755)


def test_results_may_not_land_in_a_stack(twelve_stacks):
    one_error(run("batch", twelve_stacks, "-o", twelve_stacks / "s00" / "fused"), "is inside the stack folder")


# -- temporaries and interrupts ------------------------------------------------------


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    from gpufocus.write import _HOST

    stale = tmp_path / f".old.jpg.gpufocus-{_HOST}-{_dead_pid()}-x1y2.part"
    live = tmp_path / f".other.jpg.gpufocus-{_HOST}-{os.getppid()}-a1b2.part"  # its writer is still running
    foreign = tmp_path / ".notes.txt.part"  # not ours
    for path in (stale, live, foreign):
        path.write_bytes(b"half a file")
    write_image(tmp_path / "new.png", np.zeros((8, 8, 3), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, foreign.name, "new.png"])


_SLOW_CHILD = """
import sys, time
import gpufocus.job, gpufocus.write
def slow(*args, **kwargs):
    print("working", flush=True)
    time.sleep(60)
def crash(*args, **kwargs):
    raise RuntimeError("a bug")
def slow_encode(out, *args, **kwargs):
    out.write(b"half")
    out.flush()
    print("writing", flush=True)
    time.sleep(60)
if sys.argv[1] in ("fuse", "crash"):
    gpufocus.job.FusionJob.fuse = slow if sys.argv[1] == "fuse" else crash
if sys.argv[1] == "write":
    gpufocus.write.encode_image = slow_encode
sys.argv = ["gpufocus", *sys.argv[2:]]
from gpufocus.__main__ import main
main()
"""


def _start_child(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _SLOW_CHILD, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=interruptible,
    )


@pytest.mark.parametrize("delay", [0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0])
def test_ctrl_c_while_starting(tmp_path, delay):
    write_stack(make_stack(480, 640, 6, max_blur=3.0, seed=2), tmp_path / "S")  # seconds of work after start-up
    child = subprocess.Popen(
        [sys.executable, "-m", "gpufocus", "fuse", str(tmp_path / "S"), "-o", str(tmp_path / "out.png")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible,
    )
    time.sleep(delay)  # torch alone takes over a second to import here
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130 and stderr == "interrupted\n", stderr
    assert not (tmp_path / "out.png").exists()


def test_ctrl_c_while_working(stack, tmp_path):
    child = _start_child("fuse", "fuse", str(stack), "-o", str(tmp_path / "out.png"))
    assert child.stdout.readline() == "working\n"
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130 and stderr == "interrupted\n", stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S"]


def test_ctrl_c_while_writing_leaves_no_temporary(stack, tmp_path):
    child = _start_child("write", "fuse", str(stack), "-o", str(tmp_path / "out.png"), "--no-align")
    assert child.stdout.readline() == "writing\n"
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 130 and stderr == "interrupted\n", stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S"]


def test_a_writer_killed_mid_write_is_cleaned_up_by_the_next(stack, tmp_path):
    child = _start_child("write", "fuse", str(stack), "-o", str(tmp_path / "out.png"), "--no-align")
    assert child.stdout.readline() == "writing\n"
    child.kill()
    child.communicate(timeout=60)
    assert [p.name for p in tmp_path.glob(".out.png.gpufocus-*.part")], "the kill should leave a temporary"
    assert run("fuse", stack, "-o", tmp_path / "other.png", "--no-align", "-q").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["S", "other.png"]


def test_a_bug_is_one_line_and_a_report_file(stack, tmp_path):
    child = _start_child("crash", "fuse", str(stack), "-o", str(tmp_path / "out.png"))
    _, stderr = child.communicate(timeout=60)
    assert child.returncode == 70 and len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("error: internal error (RuntimeError: a bug); details in ")
    report = Path(stderr.split("details in ")[1].split(";")[0])
    assert "Traceback" in report.read_text() and "a bug" in report.read_text()
    report.unlink()


def test_native_library_chatter_stays_off_stderr(tmp_path):
    # A 16-bit TIFF whose deflate stream is broken: native decoders may print about it.
    good = tmp_path / "a.tif"
    write_image(good, np.random.default_rng(0).integers(0, 65535, (40, 48, 3), dtype=np.uint16), bits=16)
    data = bytearray(good.read_bytes())
    data[-200:-100] = bytes(100)
    bad = tmp_path / "b.tif"
    bad.write_bytes(bytes(data))
    done = subprocess.run(
        [sys.executable, "-m", "gpufocus", "fuse", str(good), str(bad), "-o", str(tmp_path / "o.png")],
        capture_output=True, text=True,
    )
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith(f"error: {bad}: corrupt image data ("), done.stderr


def test_a_frame_found_broken_late_is_one_line_even_after_warnings(tmp_path):
    # Frames of unrelated noise make alignment warn; the last one is cut short inside
    # its pixel data, so only decoding it (in the second chunk) finds out. The warnings
    # drawn before must not come out with the error.
    noise = np.random.default_rng(3).integers(0, 256, (4, 64, 96, 3), dtype=np.uint8)
    for i, frame in enumerate(noise):
        Image.fromarray(frame).save(tmp_path / f"f{i}.png")
    data = (tmp_path / "f3.png").read_bytes()
    (tmp_path / "f3.png").write_bytes(data[: len(data) // 2])
    result = run("fuse", tmp_path, "-o", tmp_path / "out.png", "--chunk", "2")
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [result.stderr.splitlines()[0]] and "f3.png" in result.stderr, result.stderr
    good = run("fuse", *[tmp_path / f"f{i}.png" for i in range(3)], "-o", tmp_path / "out.png", "--chunk", "2")
    assert good.exit_code == 0 and "warning: frame 1 (f1.png): alignment failed" in good.stderr, good.stderr


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["fuse", "--nonsense"], "error: --nonsense: no such option"),
        (["batch", "x", "-o", "y", "--devices", "cpu"], "error: --devices: no such option"),
        (["fuse"], "error: missing argument INPUTS"),
        (["fuse", "x", "-o", "y.jpg", "--levels", "0"], "error: --levels 0: "),
        (["fuse", "x", "-o", "y.jpg", "--levels", "abc"], "error: --levels abc: "),
        (["fuse", "x", "-o", "y.jpg", "--chunk=0"], "error: --chunk 0: "),
        (["fuse", "x", "-o", "y.jpg", "--dtype", "float64"], "error: --dtype float64: "),
        (["fuse", "x", "-o", "y.jpg", "--memory-budget", "lots"], "error: --memory-budget lots: "),
        (["frobnicate"], "error: no such command"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args, line):
    # Typer's own copy of Click raises exceptions that are not click's: they must still
    # end as one usage line, not as an internal error or Click's four-line message.
    done = subprocess.run([sys.executable, "-m", "gpufocus", *args], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith(line), done.stderr


def test_the_installed_command_needs_no_click():
    """typer 0.29 carries its own copy of Click and does not depend on it: the command
    must not import a ``click`` that no dependency declares."""
    script = (
        "import sys\nsys.modules['click'] = None  # not installed\n"
        "sys.argv = ['gpufocus', 'fuse', '--levels', 'abc']\nfrom gpufocus.__main__ import main\nmain()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("error: "), done.stderr


def _bomb(path: Path, side: int) -> None:
    """A small file whose header claims ``side`` x ``side`` RGB pixels: a JPEG and a TIFF
    of 16x16 with their size fields rewritten, a PNG whose zlib stream holds that many
    zero rows (valid: it would decode, into gigabytes)."""
    import io
    import struct

    if path.suffix == ".png":
        packer = zlib.compressobj(9)
        row = bytes(1 + 3 * side)
        data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()

        def chunk(kind: bytes, body: bytes) -> bytes:
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

        header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
        return
    small = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    if path.suffix == ".jpg":
        buffer = io.BytesIO()
        Image.fromarray(small).save(buffer, "JPEG")
        data = bytearray(buffer.getvalue())
        struct.pack_into(">HH", data, data.index(b"\xff\xc0") + 5, side, side)
    else:
        import tifffile

        buffer = io.BytesIO()
        tifffile.imwrite(buffer, small)
        data = bytearray(buffer.getvalue())
        ifd = struct.unpack_from("<I", data, 4)[0]
        for k in range(struct.unpack_from("<H", data, ifd)[0]):
            entry = ifd + 2 + 12 * k
            tag, kind = struct.unpack_from("<HH", data, entry)
            if tag in (256, 257):
                struct.pack_into("<H" if kind == 3 else "<I", data, entry + 8, side)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif"])
def test_a_frame_claiming_more_than_memory_holds_is_refused_from_its_header(tmp_path, suffix):
    """A few bytes claiming 13000x13000: refused before any decode, under a 4 GB
    address-space limit, in one line, with nothing written."""
    if not Path("/usr/bin/prlimit").exists():
        pytest.skip("needs prlimit")
    for name in ("a", "b"):
        _bomb(tmp_path / f"{name}{suffix}", 13000)
    out = tmp_path / "out.png"
    command = ["/usr/bin/prlimit", "--as=4294967296", sys.executable, "-m", "gpufocus", "fuse",
               str(tmp_path / f"a{suffix}"), str(tmp_path / f"b{suffix}"), "-o", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    line = done.stderr.strip()
    assert len(done.stderr.splitlines()) == 1 and f"a{suffix}: 13000x13000 (169 megapixels) needs at least" in line
    assert "refused before decoding" in line and "--max-megapixels" in line
    assert not out.exists()


@pytest.mark.parametrize("stage", ["writing the results", "making the depth map"])
def test_running_out_of_memory_after_the_fusion_is_one_line_and_writes_nothing(tmp_path, monkeypatch, stage):
    import gpufocus.engine
    import gpufocus.write

    write_stack(make_stack(40, 48, 3, max_blur=2.0, seed=1), tmp_path / "s")

    def scarce(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 288000000 bytes. Error code 12 (Cannot allocate memory)")

    if stage == "writing the results":
        monkeypatch.setattr(gpufocus.write, "quantize", scarce)
    else:
        monkeypatch.setattr(gpufocus.engine.StackFuser, "depth_map", scarce)
    result = run("fuse", tmp_path / "s", "-o", tmp_path / "out.png", "--depth-map", tmp_path / "depth.png")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: out of host memory while {stage} (an allocation of 0.27 GiB failed)"
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "depth.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_max_megapixels_refuses_before_anything_decodes(tmp_path, monkeypatch):
    import gpufocus.load

    write_stack(make_stack(40, 48, 3, max_blur=2.0, seed=1), tmp_path / "s")
    decoded = []
    real = gpufocus.load.read_image
    monkeypatch.setattr(gpufocus.load, "read_image", lambda *a, **k: decoded.append(1) or real(*a, **k))
    result = run("fuse", tmp_path / "s", "-o", tmp_path / "out.png", "--max-megapixels", "0.001")
    assert result.exit_code == 1 and decoded == []
    assert "48x40 (0 megapixels) is more than --max-megapixels 0.001; refused before decoding" in result.stderr
    assert run("fuse", tmp_path / "s", "-o", tmp_path / "out.png", "--max-megapixels", "0.002").exit_code == 0
    import gpufocus.load
    from gpufocus import fuse

    assert fuse(tmp_path / "s", device="cpu", memory_budget="1K").shape == (3, 40, 48)  # a budget sizes, never refuses
    monkeypatch.setattr(gpufocus.load, "host_room", lambda: 1000)  # a machine with no memory to spare
    with pytest.raises(GpufocusError, match="needs at least .* GiB of the memory to fuse, and this run may use 0.0 GiB"):
        fuse(tmp_path / "s", device="cpu")


class _Frame:
    """Enough of a Python frame for ``gpufocus.__main__._unsafe``."""

    def __init__(self, filename: str, module: str, back=None) -> None:
        self.f_code = type("Code", (), {"co_filename": filename})()
        self.f_globals = {"__name__": module}
        self.f_back = back


def test_an_interrupt_in_an_import_or_a_lock_is_held_until_it_is_left(monkeypatch):
    import gpufocus.__main__ as entry

    armed = []
    monkeypatch.setattr(signal, "setitimer", lambda which, seconds: armed.append(seconds))
    monkeypatch.setattr(entry, "_HELD", [False])
    ours = _Frame("/x/gpufocus/engine.py", "gpufocus.engine")
    for unsafe in (_Frame("<frozen importlib._bootstrap>", "importlib._bootstrap", ours),
                   _Frame("/x/torch/__init__.py", "torch", _Frame("<frozen importlib._bootstrap_external>", "x", ours)),
                   _Frame("/usr/lib/threading.py", "threading", ours),
                   _Frame("/usr/lib/concurrent/futures/_base.py", "concurrent.futures._base", ours),
                   # typer parses options in pydantic validators, which lost an interrupt raised there
                   _Frame("/x/typer/_adapters.py", "typer._adapters",
                          _Frame("/x/pydantic/type_adapter.py", "pydantic.type_adapter", ours))):
        entry._on_interrupt(signal.SIGINT, unsafe)  # held: no exception
        assert entry._HELD == [True] and armed[-1] == 0.02
    entry._on_interrupt(signal.SIGALRM, _Frame("/usr/lib/threading.py", "threading", ours))  # still unsafe
    assert entry._HELD == [True]
    with pytest.raises(KeyboardInterrupt):  # the timer finds the main thread back in our code
        entry._on_interrupt(signal.SIGALRM, ours)
    assert entry._HELD == [False]
    entry._on_interrupt(signal.SIGALRM, ours)  # a late timer with nothing held: nothing
    with pytest.raises(KeyboardInterrupt):
        entry._on_interrupt(signal.SIGINT, _Frame("/x/queueing.py", "queueing", ours))  # not the stdlib's queue


def _tiff_with_tags(path: Path, frame: np.ndarray, tags: dict[int, int], rows: int | None = None) -> None:
    """A TIFF of ``frame`` whose tags (every value of each) are then rewritten: what a
    damaged writer leaves, and tifffile reads anyway."""
    import io
    import struct

    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, frame, rowsperstrip=rows, metadata=None)
    data = bytearray(buffer.getvalue())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for k in range(struct.unpack_from("<H", data, ifd)[0]):
        entry = ifd + 2 + 12 * k
        tag, kind, count = struct.unpack_from("<HHI", data, entry)
        if tag in tags:
            size = 2 if kind == 3 else 4
            at = entry + 8 if count * size <= 4 else struct.unpack_from("<I", data, entry + 8)[0]
            for j in range(count):
                struct.pack_into("<H" if kind == 3 else "<I", data, at + size * j, tags[tag])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("tags", "rows", "said"),
    [
        ({279: 1000}, None, "its strips hold 1000 bytes, the image needs 9216"),  # StripByteCounts too short
        ({284: 2}, 8, "incorrect Strip"),  # PlanarConfiguration against the strips there are
    ],
)
def test_a_damaged_tiff_that_still_reads_is_said_to_be_damaged(tmp_path, tags, rows, said):
    frames = make_stack(48, 64, 3, max_blur=2.0, seed=4).frames.mul(255).round().byte().permute(0, 2, 3, 1).numpy()
    paths = []
    for i, frame in enumerate(frames):
        paths.append(tmp_path / f"f{i}.tif")
        if i == 1:
            _tiff_with_tags(paths[-1], frame, tags, rows)
        else:
            Image.fromarray(frame).save(paths[-1])
    result = run("fuse", *paths, "-o", tmp_path / "out.png", "--no-align")
    warned = [line for line in result.stderr.splitlines() if "f1.tif: damaged" in line]
    if result.exit_code == 0:
        assert len(warned) == 1 and said in warned[0] and warned[0].startswith("warning: "), result.stderr
    else:  # tifffile could not read past it: an error, as any corrupt file
        assert result.exit_code == 1 and "f1.tif" in result.stderr and len(result.stderr.splitlines()) == 1
    strict = run("fuse", *paths, "-o", tmp_path / "strict.png", "--no-align", "--strict")
    assert strict.exit_code == 1 and not (tmp_path / "strict.png").exists()
    assert strict.stderr.startswith(f"error: {paths[1]}: damaged (") and said in strict.stderr
    assert "refused under --strict" in strict.stderr and len(strict.stderr.splitlines()) == 1


def test_a_batch_lists_a_damaged_file_in_its_report(tmp_path):
    root = tmp_path / "root"
    write_stack(make_stack(48, 64, 3, max_blur=2.0, seed=5), root / "s0")
    frame = np.asarray(Image.open(root / "s0" / "frame_001.png"))
    _tiff_with_tags(root / "s0" / "frame_001.tif", frame, {279: 1000})
    (root / "s0" / "frame_001.png").unlink()
    report = tmp_path / "report.json"
    result = run("batch", root, "-o", tmp_path / "out", "--no-align", "--report", report)
    assert result.exit_code == 0, result.stderr
    [entry] = json.loads(report.read_text())["results"]
    assert any("frame_001.tif: damaged (its strips hold 1000 bytes" in w for w in entry["warnings"]), entry
