"""One settings model: defaults defined once, checked in the library's words, named by
their flags on the command line; the engine drives its own passes."""

import ast
import dataclasses
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gpufocus import GpufocusError, StackFuser, fuse
from gpufocus.cli import app
from gpufocus.options import AlignOptions, FuseOptions, OptionError
from gpufocus.synth import make_stack

ROOT = Path(__file__).resolve().parent.parent
# The fusion settings, and JPEG quality. (``bits``: the writer's 8 is its own default
# for an array, which has no input depth to follow; OutputOptions.bits=None means "as
# the input".)
SETTINGS = {f.name for cls in (FuseOptions, AlignOptions) for f in dataclasses.fields(cls)} | {"quality"}


def test_every_setting_has_its_default_in_one_definition():
    # No parameter or field named after a setting, outside gpufocus/options.py, has a
    # literal default of its own: defaults come from the options classes.
    found = []
    for path in sorted([*ROOT.glob("gpufocus/*.py"), *ROOT.glob("kernels/*.py")]):
        if path.name == "options.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                positional = args.posonlyargs + args.args
                pairs = list(zip(positional[len(positional) - len(args.defaults) :], args.defaults))
                pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
                found += [f"{path.name}:{node.lineno} {a.arg}" for a, d in pairs
                          if a.arg in SETTINGS and isinstance(d, ast.Constant)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.value, ast.Constant):
                if isinstance(node.target, ast.Name) and node.target.id in SETTINGS:
                    found.append(f"{path.name}:{node.lineno} {node.target.id}")
    assert found == []


@pytest.mark.parametrize(
    "settings, field, words",
    [
        ({"method": "median"}, "method", "use one of max-energy, wang-chang, max-log"),
        ({"kernel_size": 4}, "kernel_size", "must be odd, from 1 to 15"),
        ({"levels": 0}, "levels", "must be at least 1"),
        ({"chunk": 0}, "chunk", "must be at least 1"),
        ({"dtype": "float64"}, "dtype", "use one of float32, float16, bfloat16"),
        ({"device": "tpu"}, "device", "use auto, cpu, cuda or cuda:N"),
        ({"tile": -1}, "tile", "must be 0 (never) or a size in pixels"),
        ({"tile": 64, "method": "wang-chang"}, "tile", "wang-chang cannot be tiled"),
        ({"consistency": 3}, "consistency", "use one of 0, 1, 2"),
        ({"consistency": 1, "method": "max-log"}, "consistency", "halo control is for max-energy"),
        ({"memory_budget": "lots"}, "memory_budget", "use a size such as 4G"),
        ({"align": {"reference": -1}}, "align.reference", "must be a frame index"),
        ({"align": {"model": "warp"}}, "align.model", "use one of translation, similarity, affine, homography"),
    ],
)
def test_settings_are_checked_in_the_library_s_words(settings, field, words):
    with pytest.raises(OptionError) as caught:
        FuseOptions(**settings) if "align" not in settings else AlignOptions(**settings["align"])
    assert caught.value.field == field and words in caught.value.problem
    assert str(caught.value).startswith(f"{field}=")


def test_conveniences():
    assert FuseOptions(align=True).align == AlignOptions() and FuseOptions(align=False).align is None
    assert FuseOptions(dtype=torch.float16).dtype == "float16" and FuseOptions(device=torch.device("cpu")).device == "cpu"
    assert FuseOptions(memory_budget="2G").memory_budget == 2 * 2**30
    assert FuseOptions.of(None, method="max-log").method == "max-log"
    with pytest.raises(TypeError, match="unknown fusion settings: colour"):
        FuseOptions.of(colour=True)
    assert FuseOptions(kernel_size=None).window == 9 and FuseOptions(method="wang-chang").window == 5


@pytest.mark.parametrize(
    "args, line",
    [
        (["-k", "4"], "error: --kernel-size 4: must be odd, from 1 to 15"),
        (["--tile", "64", "-m", "wang-chang"], "error: --tile 64: wang-chang cannot be tiled"),
        (["--memory-budget", "lots"], "error: --memory-budget lots: use a size such as 4G or 512M"),
        (["--device", "tpu"], "error: --device tpu: use auto, cpu, cuda or cuda:N"),
        (["--consistency", "1", "--naive"], "error: --consistency 1: halo control is for max-energy, not max-log"),
        (["--reference", "7"], "error: --reference 7: the stack has 3 frames (0 to 2)"),
        (["--levels", "9"], "error: --levels 9: too deep for 56x40 frames (at most 3)"),
        (["--bits", "12"], "error: --bits 12: use one of 8, 16"),
    ],
)
def test_the_command_line_names_settings_by_their_flags(small_stack, tmp_path, args, line):
    result = CliRunner().invoke(app, ["fuse", *map(str, small_stack), "-o", str(tmp_path / "o.png"), *args])
    assert result.exit_code == 2 and result.stderr.startswith(line) and len(result.stderr.splitlines()) == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _option_names(command: str) -> set[str]:
    text = CliRunner().invoke(app, [command, "--help"], terminal_width=400).stdout
    return set(re.findall(r"(--[a-z][a-z0-9-]*)", text))


def test_batch_takes_every_fusion_option_of_fuse():
    fuse_only = {"--eval"}  # scores the one result; batch writes a report instead
    assert _option_names("fuse") - fuse_only <= _option_names("batch")


def test_the_fusion_options_reach_the_engine(monkeypatch, tmp_path):
    # Every fusion flag, typed once, arrives in the FuseOptions that fuse and batch use.
    import gpufocus.job

    seen = []
    def record(self, stack, targets, options, *args):
        seen.append(options)
        raise GpufocusError("stop here")

    monkeypatch.setattr(gpufocus.job.FusionJob, "__init__", record)
    stack = make_stack(40, 56, 2, seed=1)
    from gpufocus.synth import write_stack

    write_stack(stack, tmp_path / "root" / "s1")
    flags = ["-m", "max-energy", "-d", "3", "-k", "5", "--per-channel", "--device", "cpu", "--dtype", "float16",
             "--chunk", "2", "--align-model", "affine", "--reference", "1", "--no-match-exposure", "--crop",
             "--align-size", "512", "--global-align",
             "--no-halo-guard", "--consistency", "2", "--tile", "512", "--memory-budget", "1G"]
    runner = CliRunner()
    runner.invoke(app, ["fuse", str(tmp_path / "root" / "s1"), "-o", str(tmp_path / "o.png"), *flags])
    runner.invoke(app, ["batch", str(tmp_path / "root"), "-o", str(tmp_path / "out"), *flags])
    expected = FuseOptions(
        levels=3, kernel_size=5, per_channel=True, device="cpu", dtype="float16", chunk=2,
        align=AlignOptions("affine", 1, False, True, 512, True), halo_guard=False, consistency=2, tile=512,
        memory_budget=2**30,
    )
    assert seen == [expected, expected]


# -- the engine drives its own passes ---------------------------------------------------


@pytest.fixture(scope="module")
def frames():
    return make_stack(48, 64, 4, breathing=0.004, max_blur=3.0, seed=5).frames


def test_run_reads_as_often_as_the_settings_need(frames):
    options = FuseOptions(device="cpu", consistency=1, align=AlignOptions(reference=2))
    by_hand = StackFuser(options)
    for step in (by_hand.estimate, by_hand.add, by_hand.refold):
        for frame in frames:
            step(frame)
    once = StackFuser(options)
    assert torch.equal(once.run(frames), by_hand.result().cpu())
    assert torch.equal(fuse(frames, options), by_hand.result().cpu())
    with pytest.raises(GpufocusError, match="has taken frames already"):
        once.run(frames)


def test_a_skipped_second_pass_is_an_error(frames):
    fuser = StackFuser(device="cpu", consistency=1)
    fuser.add(frames)
    with pytest.raises(GpufocusError, match=r"refold\(\) has seen 0 of 4 frames"):
        fuser.result()


def test_a_skipped_first_pass_is_an_error(frames):
    fuser = StackFuser(device="cpu", align=AlignOptions(reference=2))
    with pytest.raises(GpufocusError, match=r"reference frame 2: estimate\(\) must see the stack up to it"):
        fuser.add(frames)


def test_passes_the_settings_do_not_need_are_refused(frames):
    fuser = StackFuser(device="cpu")
    with pytest.raises(GpufocusError, match="only a reference other than frame 0"):
        fuser.estimate(frames)
    with pytest.raises(GpufocusError, match="only halo control"):
        fuser.refold(frames)
    fuser.add(frames)
    with pytest.raises(GpufocusError, match="made without depth_map=True"):
        fuser.depth_map()
