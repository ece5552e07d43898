import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from conftest import exif_of, tensor_operations_off_the_main_thread
from gpufocus import probe_image, read_image, write_image
from gpufocus.cli import app
from gpufocus.synth import make_stack, write_stack
from test_write import _unwritable_folder

ROOT = Path(__file__).resolve().parent.parent


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def digest(paths) -> dict:
    return {p: hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def test_fuse_a_directory(small_stack, tmp_path):
    out = tmp_path / "fused.jpg"
    result = run("fuse", small_stack[0].parent, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "wrote" in result.stderr and "3 frames" in result.stderr
    with Image.open(out) as image:
        assert image.size == (56, 40) and image.format == "JPEG"


def test_fuse_makes_tensor_operations_on_its_own_thread_alone(small_stack, tmp_path):
    """The decoders' and encoders' threads make no tensor operations on the CPU (see
    ``tensor_operations_off_the_main_thread``)."""
    with tensor_operations_off_the_main_thread() as seen:
        result = run("fuse", *small_stack, "-o", tmp_path / "out.png", "--depth-map", tmp_path / "depth.png",
                     "--save-transforms", tmp_path / "t.json", "--save-steps", tmp_path / "steps", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out.png").is_file() and (tmp_path / "depth.png").is_file() and any((tmp_path / "steps").iterdir())
    assert not seen, seen


def test_the_librarys_notices_are_shown_as_they_come_unless_quiet(small_stack, tmp_path, monkeypatch):
    """A first run that compiles the GPU kernels says so in a line (``note: ...``, from
    ``gpufocus.kernels.dispatch``); ``-q`` does not; ``-v`` shows it in its log; the
    demo, which has neither, shows it too. Made to happen here as on a GPU: each chunk
    tells of a launch that took 2 s."""
    from gpufocus.engine import StackFuser
    from gpufocus.kernels import dispatch

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    add = StackFuser.add

    def slow_first_launch(self, *args, **kwargs):
        dispatch._tell_if_compiled(2.0)
        return add(self, *args, **kwargs)

    monkeypatch.setattr(StackFuser, "add", slow_first_launch)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    said = f"compiling the GPU kernels for this card: once, later runs find them in Triton's cache ({tmp_path / 'cache'})"
    for flags, shown in (([], f"note: {said}"), (["-q"], None), (["-v"], f"gpufocus.kernels.dispatch: {said}")):
        monkeypatch.setattr(dispatch, "_told", [])
        result = run("fuse", *small_stack, "-o", tmp_path / "out.png", "--overwrite", "--no-align", *flags)
        assert result.exit_code == 0, result.stderr
        lines = result.stderr.splitlines()
        assert (shown in lines) if shown else not any("compiling" in line for line in lines), lines
        assert sum("compiling" in line for line in lines) == (1 if shown else 0)
    monkeypatch.setattr(dispatch, "_told", [])  # the quick start's first command, on a GPU the first run there
    result = run("demo", tmp_path / "demo")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.splitlines()[0] == f"note: {said}"


def test_original_spellings_are_aliases(small_stack, tmp_path):
    pairs = [(["--naive"], ["--method", "max-log"]), (["-d", "2"], ["--levels", "2"]), (["-k", "3"], ["--kernel-size", "3"])]
    for i, (short, long) in enumerate(pairs):
        a, b = tmp_path / f"a{i}.png", tmp_path / f"b{i}.png"
        assert run("fuse", *small_stack, "-o", a, *short).exit_code == 0
        assert run("fuse", *small_stack, "-o", b, *long).exit_code == 0
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_options_reach_the_engine(small_stack, tmp_path):
    base = tmp_path / "base.png"
    assert run("fuse", *small_stack, "-o", base, "--chunk", "1").exit_code == 0
    same = tmp_path / "chunked.png"
    assert run("fuse", *small_stack, "-o", same, "--chunk", "3", "--device", "cpu").exit_code == 0
    assert np.array_equal(np.asarray(Image.open(base)), np.asarray(Image.open(same)))
    other = tmp_path / "wang.png"
    assert run("fuse", *small_stack, "-o", other, "--method", "wang-chang", "--per-channel").exit_code == 0
    assert not np.array_equal(np.asarray(Image.open(base)), np.asarray(Image.open(other)))


def test_bits_and_quiet(small_stack, tmp_path):
    out = tmp_path / "fused.tif"
    result = run("fuse", *small_stack, "-o", out, "--bits", "16", "--quiet", "--no-align")
    assert result.exit_code == 0 and result.stderr == ""
    with Image.open(out) as image:
        assert image.tile[0][3][0].startswith("RGB;16")


def _corrupt(stack, tmp_path):
    bad = tmp_path / "stack" / "frame_9.png"
    bad.write_bytes(stack[0].read_bytes()[:200])
    return [*stack, bad], "frame_9.png"


def _odd_size(stack, tmp_path):
    odd = tmp_path / "stack" / "frame_odd.png"
    Image.new("RGB", (50, 40)).save(odd)
    return [*stack, odd], "frame_odd.png"


def _not_image(stack, tmp_path):
    text = tmp_path / "stack" / "readme.png"
    text.write_text("hello")
    return [*stack, text], "readme.png: not an image"


BAD_INPUTS = {
    "one frame": (lambda s, t: ([s[0]], "at least 2 frames"), "out.jpg"),
    "missing dir": (lambda s, t: ([t / "nowhere"], "nowhere: no such file"), "out.jpg"),
    "empty dir": (lambda s, t: ([t / "empty"], "empty: no image files"), "out.jpg"),
    "not an image": (_not_image, "out.jpg"),
    "truncated": (_corrupt, "out.jpg"),
    "odd size": (_odd_size, "out.jpg"),
    "bad extension": (lambda s, t: (s, "unsupported output extension"), "out.gif"),
    "missing folder": (lambda s, t: (s, "does not exist"), "no/such/dir/out.jpg"),
    "jpeg 16 bits": (lambda s, t: ([*s, "--bits", "16"], "JPEG holds 8 bits"), "out.jpg"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gives_one_line_and_no_output(case, small_stack, tmp_path):
    (tmp_path / "empty").mkdir()
    make, out_name = BAD_INPUTS[case]
    inputs, message = make(small_stack, tmp_path)
    before = digest(p for p in (tmp_path / "stack").iterdir())
    out = tmp_path / out_name
    result = run("fuse", *inputs, "-o", out)
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output
    assert not out.exists()
    assert digest(p for p in (tmp_path / "stack").iterdir()) == before
    assert not list(tmp_path.glob("*.part")) and not list(tmp_path.glob(".*"))


def test_existing_output_is_kept(small_stack, tmp_path):
    out = tmp_path / "fused.png"
    out.write_bytes(b"previous result")
    result = run("fuse", *small_stack, "-o", out)
    assert result.exit_code == 1 and "already exists" in result.stderr
    assert out.read_bytes() == b"previous result"
    assert run("fuse", *small_stack, "-o", out, "--overwrite").exit_code == 0
    assert Image.open(out).size == (56, 40)


def test_unwritable_output_folder(small_stack, tmp_path):
    folder = _unwritable_folder(tmp_path)
    if folder is None:
        pytest.skip("found no folder that this user cannot write")
    try:
        result = run("fuse", *small_stack, "-o", folder / "gpufocus-out.jpg")
        assert result.exit_code == 1 and "not writable" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    finally:
        (tmp_path / "locked").chmod(0o755)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_without_cuda(small_stack, tmp_path):
    result = run("fuse", *small_stack, "-o", tmp_path / "out.jpg", "--device", "cuda")
    assert result.exit_code == 2 and result.stderr.startswith("error: --device cuda: CUDA is not available")
    assert not (tmp_path / "out.jpg").exists()


def test_decompression_bomb(small_stack, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    result = run("fuse", *small_stack, "-o", tmp_path / "out.jpg")
    assert result.exit_code == 1 and "frame_0.png: too many pixels" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out.jpg").exists()


def test_demo_writes_frames_result_and_comparison(tmp_path):
    result = run("demo", tmp_path / "demo", "--device", "cpu")
    assert result.exit_code == 0, result.stderr
    demo = tmp_path / "demo"
    assert len(list((demo / "frames").glob("frame_*.png"))) == 6
    for name in ("fused.png", "ground_truth.png", "comparison.png"):
        assert (demo / name).is_file()
    fused_db, frame_db = [float(x.split(" dB")[0]) for x in result.stderr.split("fused ")[2].split("frame ")]
    assert fused_db > frame_db + 3


def test_info(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    result = run("info")
    assert result.exit_code == 0 and "torch" in result.stdout and "gpufocus" in result.stdout
    from importlib.metadata import PackageNotFoundError, version

    try:
        triton = f"triton {version('triton')}: the GPU kernels, compiled once per card into {tmp_path}"
    except PackageNotFoundError:
        assert "triton not installed: on CUDA, the kernels' torch twins run" in result.stdout.splitlines()
        return
    assert triton in result.stdout.splitlines(), result.stdout
    monkeypatch.setenv("GPUFOCUS_TRITON", "0")
    assert f"{triton}; off (GPUFOCUS_TRITON=0)" in run("info").stdout.splitlines()


def test_script_in_a_checkout_reports_errors_without_traceback(small_stack, tmp_path):
    bad = tmp_path / "stack" / "frame_9.png"
    bad.write_bytes(small_stack[0].read_bytes()[:300])
    done = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), "fuse", *map(str, small_stack), str(bad), "-o", str(tmp_path / "o.jpg")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0 and "frame_9.png" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_console_command_is_installed():
    command = Path(sys.executable).parent / "gpufocus"
    if not command.exists():
        pytest.skip("gpufocus is not installed in this environment")
    done = subprocess.run([str(command), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "fuse" in done.stdout and "demo" in done.stdout


def test_synth_then_fuse_then_eval(tmp_path):
    stack = tmp_path / "syn"
    result = run("synth", stack, "--size", "96x64", "--frames", "4", "--family", "plane", "--seed", "3")
    assert result.exit_code == 0, result.stderr
    assert {p.name for p in stack.iterdir()} >= {"frame_000.png", "frame_003.png", "ground_truth.png", "params.json"}
    out = tmp_path / "fused.png"
    assert run("fuse", stack, "-o", out, "-q").exit_code == 0  # side files are not frames
    scored = run("eval", stack, "--result", out, "--json")
    assert scored.exit_code == 0, scored.stderr
    scores = json.loads(scored.stdout)
    assert scores["frames"] == 4 and scores["psnr"] > 25 and scores["sharpness_gain"] > 1
    table = run("eval", stack, "-r", out)
    assert "average of source images" in table.stdout and "final result" in table.stdout


def test_fuse_eval_prints_the_sharpness_table(small_stack, tmp_path):
    result = run("fuse", *small_stack, "-o", tmp_path / "out.png", "--eval")
    assert result.exit_code == 0 and "average of source images" in result.stdout and "Q^AB/F" in result.stdout


def test_fuse_eval_scores_the_frames_as_they_were_fused(tmp_path):
    """Frames that move: ``fuse --eval`` scores them aligned (as fused); ``eval`` on its
    own, as they are on disk, where their edges miss the result's (a lower Q^AB/F)."""
    stack, out = tmp_path / "syn", tmp_path / "fused.png"
    made = run("synth", stack, "--size", "256x192", "--frames", "4", "--breathing", "0.01", "--shift", "3",
               "--max-blur", "2", "--seed", "5")
    assert made.exit_code == 0, made.stderr
    fused = run("fuse", stack, "-o", out, "--eval", "--save-transforms", tmp_path / "t.json")
    assert fused.exit_code == 0, fused.stderr
    as_fused = float(re.search(r"Q\^AB/F ([\d.]+)", fused.stdout).group(1))
    as_they_are = json.loads(run("eval", stack, "-r", out, "--json").stdout)["qabf"]
    assert as_fused > as_they_are + 0.1, (as_fused, as_they_are)
    # the transforms saved, read back: the frames scored aligned again
    aligned = json.loads(run("eval", stack, "-r", out, "--json", "--transforms", tmp_path / "t.json").stdout)["qabf"]
    assert f"{aligned:.4f}" == f"{as_fused:.4f}"


def test_synth_refuses_bad_settings(tmp_path):
    result = run("synth", tmp_path / "s", "--size", "big")
    assert result.exit_code == 1 and "--size big" in result.stderr
    assert not (tmp_path / "s").exists()


def test_bench_quick_writes_every_field(tmp_path):
    report_path, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    result = run(
        "bench", "--quick", "--frames", "4", "--device", "cpu", "--json", report_path, "--chart", chart,
        "--markdown", tmp_path / "bench.md", "--cache", tmp_path / "cache",
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(report_path.read_text())
    assert set(report) == {"machine", "date", "torch", "results", "cuda_vs_cpu"}
    assert {r["kind"] for r in report["results"]} == {"core", "e2e"}
    for r in report["results"]:
        assert set(r) == {
            "kind", "device", "width", "height", "frames", "dtype", "chunk", "method", "align", "repeat", "seconds", "runs",
            "staged_seconds",
            "mpix_frames_per_s", "stages", "peak_cuda_bytes", "peak_host_bytes",
        }
        assert r["seconds"] > 0 and r["mpix_frames_per_s"] > 0 and r["peak_host_bytes"] > 0
        assert set(r["stages"]) == {"decode", "upload", "align", "fuse", "collapse", "download", "encode"}
        assert r["stages"]["fuse"] > 0
        assert (r["stages"]["decode"] is None) == (r["kind"] == "core")
    with Image.open(chart) as image:
        assert image.format == "PNG"
    assert "| kind |" in (tmp_path / "bench.md").read_text()


def test_alignment_options(tmp_path):
    stack = make_stack(120, 160, 4, breathing=0.01, shift=1.0, max_blur=4.0, seed=8)
    write_stack(stack, tmp_path / "moving")
    plain, aligned = tmp_path / "plain.png", tmp_path / "aligned.png"
    assert run("fuse", tmp_path / "moving", "-o", plain, "--no-align", "-q").exit_code == 0
    transforms = tmp_path / "t.json"
    result = run("fuse", tmp_path / "moving", "-o", aligned, "--reference", "1", "--save-transforms", transforms, "-q")
    assert result.exit_code == 0, result.stderr
    report = json.loads(transforms.read_text())
    assert report["reference"] == 1 and len(report["frames"]) == 4
    assert np.allclose(report["frames"][1]["matrix"], np.eye(3))
    scale = np.sqrt(abs(np.linalg.det(np.array(report["frames"][3]["matrix"])[:2, :2])))
    assert scale == pytest.approx(1.01**2, abs=1e-3)  # frame 3 is magnified 1.01 twice over frame 1
    assert not np.array_equal(np.asarray(Image.open(plain)), np.asarray(Image.open(aligned)))
    cropped = tmp_path / "cropped.png"
    assert run("fuse", tmp_path / "moving", "-o", cropped, "--crop", "-q").exit_code == 0
    assert Image.open(cropped).size < (160, 120)


def test_align_command_writes_aligned_frames(tmp_path):
    stack = make_stack(96, 128, 3, shift=2.0, max_blur=3.0, seed=9)
    write_stack(stack, tmp_path / "moving")
    result = run("align", tmp_path / "moving", "-o", tmp_path / "aligned", "--save-transforms", tmp_path / "t.json")
    assert result.exit_code == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "aligned").iterdir())
    assert names == ["frame_000.png", "frame_001.png", "frame_002.png"]
    frame0 = np.asarray(Image.open(tmp_path / "moving" / "frame_000.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "aligned" / "frame_000.png")), frame0)
    assert json.loads((tmp_path / "t.json").read_text())["frames"][2]["file"] == "frame_002.png"
    again = run("align", tmp_path / "moving", "-o", tmp_path / "aligned")
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_alignment_warnings_are_single_lines(tmp_path):
    stack = make_stack(160, 200, 4, max_blur=3.0, seed=10)
    stack.frames[2] = torch.rand(stack.frames[2].shape, generator=torch.Generator().manual_seed(0))  # another scene
    write_stack(stack, tmp_path / "bad")
    result = run("fuse", tmp_path / "bad", "-o", tmp_path / "out.png", "-q")
    assert result.exit_code == 0
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("warning: frame ") for line in lines)
    # Frame 2 shows something else: neither its step nor the next one can be read.
    assert [line.split(": alignment failed")[0] for line in lines] == [
        "warning: frame 2 (frame_002.png)", "warning: frame 3 (frame_003.png)"
    ]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bits_end_to_end(tmp_path, suffix):
    import imagecodecs
    import tifffile
    from PIL import ImageCms

    # A smooth 16-bit gradient with detail: 8 bits anywhere on the way would leave <= 256 levels.
    height, width = 64, 1024
    ramp = np.linspace(0, 1, width)[None, :, None] * np.ones((height, 1, 3))
    stack = make_stack(height, width, 3, max_blur=3.0, seed=13)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    folder = tmp_path / "stack16"
    folder.mkdir()
    for i, frame in enumerate(stack.frames):
        pixels = (0.85 * ramp + 0.15 * frame.permute(1, 2, 0).numpy()) * 65535
        pixels = pixels.round().astype(np.uint16)  # written by other programs' libraries
        if suffix == ".png":
            (folder / f"f{i}{suffix}").write_bytes(imagecodecs.png_encode(pixels))
        else:
            tifffile.imwrite(folder / f"f{i}{suffix}", pixels, photometric="rgb")
    first = folder / f"f0{suffix}"
    with Image.open(first) as image:  # give frame 0 a profile and a camera, through our writer
        exif = image.getexif()
    exif[0x010F] = "gpufocus-16"
    write_image(first, read_image(first), bits=16, exif=exif.tobytes(), icc=icc, overwrite=True)
    out = tmp_path / f"fused{suffix}"
    assert run("fuse", folder, "-o", out, "-q", "--no-align").exit_code == 0
    fused = read_image(out)
    assert fused.dtype == np.uint16 and len(np.unique(fused[:, :, 1])) > 4 * 256
    info = probe_image(out)
    assert info.bits == 16 and info.icc == icc and exif_of(info)[0x010F] == "gpufocus-16"


def test_depth_map_follows_the_known_focus(tmp_path):
    stack = make_stack(240, 320, 8, family="objects", max_blur=8.0, seed=4)
    write_stack(stack, tmp_path / "syn")
    depth = tmp_path / "depth.png"
    result = run("fuse", tmp_path / "syn", "-o", tmp_path / "out.jpg", "--depth-map", depth, "-q")
    assert result.exit_code == 0, result.stderr
    with Image.open(depth) as image:
        assert image.mode == "I;16" and image.size == (320, 240)
        frames = np.asarray(image).astype(float) / 65535 * 7  # documented scale: 65535 = the last frame
    within_one = np.abs(frames - stack.focus_index.numpy()) <= 1
    assert within_one.mean() >= 0.9


def test_tile_option(small_stack, tmp_path):
    whole, tiled = tmp_path / "whole.png", tmp_path / "tiled.png"
    assert run("fuse", *small_stack, "-o", whole, "-q", "--no-align", "--tile", "0").exit_code == 0
    assert run("fuse", *small_stack, "-o", tiled, "-q", "--no-align", "--tile", "16").exit_code == 0
    assert np.array_equal(np.asarray(Image.open(whole)), np.asarray(Image.open(tiled)))


def test_save_steps_writes_pictures_of_every_step(tmp_path):
    stack = make_stack(96, 128, 4, family="objects", max_blur=6.0, breathing=0.004, seed=6)
    write_stack(stack, tmp_path / "syn")
    steps = tmp_path / "steps"
    result = run("fuse", tmp_path / "syn", "-o", tmp_path / "out.png", "--depth-map", tmp_path / "d.png", "--save-steps", steps, "-q")
    assert result.exit_code == 0, result.stderr
    names = sorted(p.name for p in steps.iterdir())
    aligned = [n for n in names if n.startswith("1-aligned-")]
    assert aligned == [f"1-aligned-{i:03d}-frame_{i:03d}.jpg" for i in range(4)]
    assert {"2-decisions-level0.png", "2-decisions-legend.png", "3-base.png", "4-depth-measured.png",
            "4-depth-confidence.png", "4-depth-final.png", "5-fused.png"} <= set(names)
    decisions = np.asarray(Image.open(steps / "2-decisions-level0.png").convert("RGB")).reshape(-1, 3)
    assert len(np.unique(decisions, axis=0)) >= 3  # several frames won somewhere: not a blank map
    for name in ("4-depth-final.png", "3-base.png", aligned[-1]):
        assert np.asarray(Image.open(steps / name)).std() > 2, name
    # the last frame, aligned to the first, is nearer to it than the frame as shot
    first, last = (np.asarray(Image.open(steps / n).convert("L"), float) for n in (aligned[0], aligned[-1]))
    as_shot = np.asarray(Image.open(tmp_path / "syn" / "frame_003.png").convert("L"), float)
    assert np.abs(last - first)[8:-8, 8:-8].mean() < np.abs(as_shot - first)[8:-8, 8:-8].mean()
    # and a later run over the folder never takes the step pictures for frames
    assert run("fuse", steps, "-o", tmp_path / "again.png", "-q").exit_code == 1


def test_batch_saves_each_stacks_steps(tmp_path):
    for i in range(2):
        write_stack(make_stack(48, 64, 3, max_blur=3.0, seed=i), tmp_path / "root" / f"s{i}")
    result = run("batch", tmp_path / "root", "-o", tmp_path / "out", "--save-steps", tmp_path / "steps", "-q")
    assert result.exit_code == 0, result.stderr
    for i in range(2):
        names = {p.name for p in (tmp_path / "steps" / f"s{i}").iterdir()}
        assert {"1-aligned-000-frame_000.jpg", "2-decisions-level0.png", "3-base.png", "5-fused.png"} <= names


def test_batch_verbose_times_the_stages_of_all_stacks(tmp_path, monkeypatch):
    """``batch -v`` adds up every stack's stages: the next stack opened ahead and the
    writes in a thread each report the time waited for them and their busy time."""
    from gpufocus.timing import StageTimer

    for i in range(3):
        write_stack(make_stack(48, 64, 3, max_blur=3.0, seed=i), tmp_path / "root" / f"s{i}")
    charged = []
    real = StageTimer.stage

    def stage(self, name):  # the stages the batch charged, as they were
        charged.append(name)
        return real(self, name)

    monkeypatch.setattr(StageTimer, "stage", stage)
    result = run("batch", tmp_path / "root", "-o", tmp_path / "out", "-v", "-q")
    assert result.exit_code == 0, result.stderr
    stages = next(line for line in result.stderr.splitlines() if line.startswith("gpufocus.cli: time per stage: "))
    assert re.search(r"decode [\d.]+ s \(busy [\d.]+ s\)", stages) and re.search(r"write [\d.]+ s \(busy [\d.]+ s\)", stages)
    assert all(f"{stage} " in stages for stage in ("align", "fuse", "collapse"))
    # each stack's: its results made integers on this thread, then the thread's write waited for once
    assert charged.count("collapse") == 3 and charged.count("write") == 6
    assert "time per stage" not in run("batch", tmp_path / "root", "-o", tmp_path / "out2", "-q").stderr


def test_verbose_says_what_is_decided_and_times_the_stages(small_stack, tmp_path):
    result = run("fuse", *small_stack, "-o", tmp_path / "out.png", "-v")
    assert result.exit_code == 0, result.stderr
    lines = result.stderr.splitlines()
    assert any(line.startswith("gpufocus.engine: 3 frames of 56x40; max-energy on cpu") for line in lines), lines
    assert any(line.startswith("gpufocus.align: frame 2 (frame_2.png): step ") for line in lines), lines
    stages = next(line for line in lines if line.startswith("gpufocus.cli: time per stage: "))
    assert all(f"{stage} " in stages for stage in ("decode", "align", "fuse", "collapse", "write"))
    assert re.search(r"decode [\d.]+ s \(busy [\d.]+ s\)", stages)  # waited for, and the decoders' own time
    assert re.search(r"write [\d.]+ s \(busy [\d.]+ s\)", stages)  # and the encoders'
    quiet = run("fuse", *small_stack, "-o", tmp_path / "out2.png", "-q")
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_process_hooks_run_once_the_fusion_is_imported(small_stack, tmp_path, monkeypatch):
    """``gpufocus.__main__`` freezes the collector there (torch's objects live as long
    as the process); inside another program nothing is registered."""
    import gpufocus.cli

    seen = []
    monkeypatch.setattr(gpufocus.cli, "PROCESS_HOOKS", [lambda: seen.append("torch" in sys.modules)])
    assert run("fuse", *small_stack, "-o", tmp_path / "out.png", "-q").exit_code == 0
    assert seen == [True] and gpufocus.cli.PROCESS_HOOKS == []
    assert run("fuse", *small_stack, "-o", tmp_path / "again.png", "-q").exit_code == 0
    assert seen == [True]  # once
