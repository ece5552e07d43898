"""The Triton kernels against their torch twins, on the CPU under Triton's interpreter,
and compiled ahead of time for the GPUs (no GPU needed).

Tiny tensors only: the interpreter runs a kernel at about 100k elements a second.
"""

import importlib
import logging
import subprocess
import sys
import time
import warnings

import pytest
import torch

pytest.importorskip("triton")

from gpufocus.kernels import DETAIL, LUMA, MEAN, KernelFallbackWarning, Level, dispatch  # noqa: E402
from gpufocus.kernels import filters, select  # noqa: E402
from gpufocus.kernels.filters import binomial_taps  # noqa: E402

# 1x1, 2x3, a level smaller than the 9-tap window, odd sizes, a prime width.
SHAPES = [(1, 1, 1, 1), (1, 3, 2, 3), (2, 3, 3, 5), (2, 3, 17, 31), (1, 2, 9, 29)]


@pytest.fixture
def interpreted(monkeypatch, request):
    """Triton's interpreter on, and the kernel modules imported under it; a kernel that
    fails (and falls back to its twin, which would make any comparison pass) fails the test."""
    monkeypatch.setattr(dispatch, "_failed", [])
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pyramid = importlib.import_module("gpufocus.kernels._triton_pyramid")
    chosen = importlib.import_module("gpufocus.kernels._triton_select")
    if not type(pyramid._pyr_down_kernel).__name__.startswith("Interpreted"):
        pyramid = importlib.reload(pyramid)
        chosen = importlib.reload(chosen)
    yield pyramid, chosen
    if "falls_back" not in request.node.name:
        assert not dispatch._failed, f"a kernel fell back to its twin: {dispatch._failed}"


def _rand(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


def _twin(monkeypatch, on: bool) -> None:
    if on:
        monkeypatch.setenv("GPUFOCUS_TRITON", "0")
    else:
        monkeypatch.delenv("GPUFOCUS_TRITON", raising=False)


@pytest.mark.parametrize("shape", SHAPES)
def test_pyramid_kernels_are_the_torch_twins_bit_for_bit(interpreted, shape):
    pyramid, _ = interpreted
    g = _rand(shape, sum(shape))
    coarser = pyramid.pyr_down(g)
    expected = filters.pyr_down(g)
    assert torch.equal(coarser, expected)
    difference = g - filters.pyr_up(expected, g.shape[-2:])
    assert torch.equal(pyramid.detail(g, coarser, DETAIL), difference)
    if shape[1] == 3:
        from gpufocus.color import luminance

        assert torch.equal(pyramid.detail(g, coarser, LUMA), luminance(difference))
    mean = pyramid.detail(g, coarser, MEAN)
    torch.testing.assert_close(mean, difference.mean(1, keepdim=True), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("shape", SHAPES + [(3, 3, 40, 70)])
def test_the_luminance_level_is_its_torch_twin_bit_for_bit(interpreted, shape):
    """``downsample_luminance``: the luminance and its next level in one pass (the
    alignment's first step down), the same numbers as the two made one after the other."""
    from gpufocus.color import luminance
    from gpufocus.kernels import downsample_luminance

    frames = _rand(shape, 7 + sum(shape))
    expected = filters.pyr_down(luminance(frames))
    got = downsample_luminance(frames)
    assert got.shape == (shape[0], 1, (shape[2] + 1) // 2, (shape[3] + 1) // 2)
    assert torch.equal(got, expected)
    if shape[1] == 3:  # the fused kernel itself ran, not the twin
        assert torch.equal(interpreted[0].pyr_down(frames, of_luma=True), expected)


@pytest.mark.parametrize("shape", [(1, 3, 5, 5), (2, 3, 37, 29), (1, 1, 21, 7), (2, 4, 22, 9)])
@pytest.mark.parametrize("per_channel", [False, True])
def test_noise_kernel_is_the_torch_twin_bit_for_bit(interpreted, monkeypatch, shape, per_channel):
    from gpufocus.kernels import noise

    frames = _rand(shape, sum(shape) + per_channel)
    got = noise.noise_samples(frames, per_channel)
    _twin(monkeypatch, True)
    expected = noise.noise_samples(frames, per_channel)
    assert got.shape == expected.shape == (shape[0], shape[1] if per_channel else 1, (shape[2] - 5) // 16 + 1,
                                           shape[3] - 4)
    if shape[1] in (1, 3) or per_channel:
        assert torch.equal(got, expected)
    else:  # the mean of 4 channels: torch's reduction may add them in another order
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)


def _level(frames: torch.Tensor, per_channel: bool) -> Level:
    from gpufocus.color import luminance

    coarser = filters.pyr_down(frames)
    detail = frames - filters.pyr_up(coarser, frames.shape[-2:])
    measured = detail if per_channel or frames.shape[1] == 1 else luminance(detail)
    return Level(frames, coarser, lambda: measured, lambda: detail)


def _chunks(levels: list[Level], usable, size: int):
    for start in range(0, levels[0].gaussian.shape[0], size):
        part = slice(start, start + size)
        level = Level(*(t[part] for t in (levels[0].gaussian, levels[0].coarser)),
                      (lambda p=part: levels[0].measured()[p]), (lambda p=part: levels[0].detail()[p]))
        yield start, level, None if usable is None else usable[part]


@pytest.mark.parametrize("shape", [(5, 3, 12, 18), (5, 1, 7, 11), (4, 3, 3, 5)])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("taps", [binomial_taps(9), binomial_taps(3)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize(("track", "keep"), [(True, True), (False, False), (True, False), (False, True)])
def test_energy_fold_is_the_torch_twin_bit_for_bit(interpreted, monkeypatch, shape, per_channel, taps, masked, track,
                                                   keep):
    """Every specialization of the fold: with and without the winners' index, the
    energies written out and a mask of unusable coefficients."""
    frames = _rand(shape, shape[2] * 10 + len(taps))
    frames[3] = frames[1]  # an exact tie: the earlier frame must keep it
    level = _level(frames, per_channel)
    usable = (_rand((shape[0], 1, *shape[2:]), 7) > 0.2) if masked else None
    results = {}
    for name, twin, size in (("twin", True, 2), ("kernel", False, 3)):
        _twin(monkeypatch, twin)
        state, energies = None, []
        for start, part, mask in _chunks([level], usable, size):
            state, energy = select.energy_fold(state, part, taps, mask, start, track_index=track, keep_energy=keep)
            energies.append(energy)
        results[name] = (state, energies)
    (twin_state, twin_energies), (state, energies) = results["twin"], results["kernel"]
    assert torch.equal(state.score, twin_state.score) and torch.equal(state.value, twin_state.value)
    assert (state.index is None) == (twin_state.index is None) == (not track)
    assert state.index is None or torch.equal(state.index, twin_state.index)
    assert all((e is None) == (not keep) for e in energies + twin_energies)
    if keep:
        assert torch.equal(torch.cat(energies), torch.cat(twin_energies))


@pytest.mark.parametrize("shape", [(5, 3, 14, 22), (4, 1, 9, 13)])
@pytest.mark.parametrize("masked", [False, True])
def test_halo_fold_is_the_torch_twin_bit_for_bit(interpreted, monkeypatch, shape, masked):
    taps = binomial_taps(5)
    frames = _rand(shape, shape[2] + 3)
    frames[2] = frames[0]
    level = _level(frames, False)
    coarse = _level(level.coarser, False)
    coarse_energy = filters.separable_filter(coarse.measured() ** 2, taps)
    usable = (_rand((shape[0], 1, *shape[2:]), 5) > 0.2) if masked else None
    results = {}
    # the twin throughout; the kernel throughout; the kernel's first chunk, then the twin
    # (a kernel that fails in the middle of a stack: its states go on in the twin)
    for name, twin, size in (("twin", True, 2), ("kernel", False, 3), ("fallback", None, 2)):
        _twin(monkeypatch, bool(twin))
        best = alternative = own = None
        for start, part, mask in _chunks([level], usable, size):
            part_energy = coarse_energy[start : start + size]
            best, alternative, own = select.halo_fold(best, alternative, own, part, part_energy, taps, mask, start,
                                                      0.2, 0.5)
            if twin is None:
                _twin(monkeypatch, True)
        results[name] = (best, alternative, own)
    for name in ("kernel", "fallback"):
        for got, expected in zip(results[name], results["twin"]):
            assert torch.equal(got.score, expected.score) and torch.equal(got.value, expected.value), name
            assert (got.index is None) == (expected.index is None)
            assert got.index is None or torch.equal(got.index, expected.index)


@pytest.mark.parametrize("settings", [{}, {"halo_guard": False}, {"per_channel": True}, {"method": "wang-chang"},
                                      {"consistency": 2}, {"chunk": 3}])
def test_the_engine_through_triton_is_the_engine_through_torch(interpreted, monkeypatch, settings):
    from gpufocus import fuse
    from gpufocus.synth import make_stack

    stack = make_stack(24, 32, 4, max_blur=3.0, seed=1)
    settings = {"levels": 2, "align": False, **settings}
    _twin(monkeypatch, True)
    expected = fuse(stack.frames, device="cpu", **settings)
    _twin(monkeypatch, False)
    assert torch.equal(fuse(stack.frames, device="cpu", **settings), expected)


@pytest.mark.parametrize("affine", [True, False])
def test_the_sampling_grid_is_its_torch_twin_bit_for_bit(interpreted, monkeypatch, affine):
    """``sampling_grid``: a breathing frame's grid and coverage in one pass, the same
    numbers as the torch operations (a box of odd size off the frame's corner, a
    transform that takes part of it off the frame)."""
    from gpufocus.kernels import sampling_grid

    fused = importlib.reload(importlib.import_module("gpufocus.kernels._triton_warp"))  # under the interpreter
    matrix = torch.tensor([[1.013, 0.004, -9.7], [-0.003, 0.991, 2.25], [0.0, 0.0, 1.0]])
    if not affine:
        matrix[2, :2] = torch.tensor([2e-4, -1.5e-4])
    box, size = (3, 5, 37, 71), (45, 80)
    calls, kernel = [], fused.sampling_grid
    monkeypatch.setattr(fused, "sampling_grid", lambda *args: calls.append(1) or kernel(*args))
    grid, covered = sampling_grid(matrix, affine, box, size)
    _twin(monkeypatch, True)
    expected_grid, expected_covered = sampling_grid(matrix, affine, box, size)
    assert calls == [1] and grid.shape == (37, 71, 2) and covered.dtype == torch.bool
    assert torch.equal(grid, expected_grid) and torch.equal(covered, expected_covered)
    assert 0 < covered.sum() < covered.numel()  # some of the box falls off the frame


def test_the_alignment_through_triton_is_the_alignment_through_torch(interpreted, monkeypatch):
    """Frames brought to the estimation size by the kernels: the same motion, the same image."""
    from gpufocus import fuse
    from gpufocus.options import AlignOptions
    from gpufocus.synth import make_stack

    stack = make_stack(72, 136, 3, max_blur=3.0, breathing=0.01, shift=1.5, seed=4)
    settings = {"levels": 2, "align": AlignOptions(size=64)}  # estimated at 36x68
    _twin(monkeypatch, True)
    expected = fuse(stack.frames, device="cpu", **settings)
    _twin(monkeypatch, False)
    pyramid, pyr_down, calls = interpreted[0], interpreted[0].pyr_down, []
    monkeypatch.setattr(pyramid, "pyr_down", lambda g, of_luma=False: calls.append(of_luma) or pyr_down(g, of_luma))
    assert torch.equal(fuse(stack.frames, device="cpu", **settings), expected)
    assert calls.count(True) == 1  # the chunk of three frames, at once


def test_the_gpu_checks_kernel_rows_hold_under_the_interpreter(interpreted):
    """bench/gpu_check.py's rows 2 (run on CUDA only), on small frames here: each kernel
    equals its twin, so that the day a GPU runs them, a difference is the GPU's."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    tiles = gpu_check.luma_tiles("cpu", quick=True)
    assert tiles.startswith("2 x 50x34: 4x64 ") and tiles.count(" ms (") == 5, tiles
    rows = dict(gpu_check.kernels_match_twins("cpu", quick=True))
    assert rows["kernel pyr_down[luma] vs twin"] == "equal"
    assert rows["kernel fold[halo] vs the CPU's twin (best, alternative, own values)"] == "equal, equal, equal"
    assert len(rows) == 10 and set(rows.values()) == {"equal", "equal, equal", "equal, equal, equal, equal",
                                                     "equal, equal, equal"}, rows


def test_a_kernel_that_cannot_run_falls_back_with_one_warning(interpreted, monkeypatch):
    from gpufocus import fuse
    from gpufocus.synth import make_stack

    _, chosen = interpreted

    def broken(*args, **kwargs):
        raise RuntimeError("CompilationError: no such instruction")

    stack = make_stack(24, 32, 3, max_blur=3.0, seed=2)
    _twin(monkeypatch, True)
    expected = fuse(stack.frames, device="cpu", levels=2, align=False)
    _twin(monkeypatch, False)
    monkeypatch.setattr(chosen, "fold", broken)
    monkeypatch.setattr(dispatch, "_failed", [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = fuse(stack.frames, device="cpu", levels=2, align=False)
        again = fuse(stack.frames, device="cpu", levels=2, align=False)
    fallbacks = [w for w in caught if issubclass(w.category, KernelFallbackWarning)]
    assert len(fallbacks) == 1 and "no such instruction" in str(fallbacks[0].message)
    assert torch.equal(got, expected) and torch.equal(again, expected)
    assert not dispatch.use_triton(stack.frames.float())  # off for the rest of the process


class _SlowKernel:
    """Stands for a Triton JIT function, ``kernel[grid](*args, **options)``: each call
    recorded, and taking ``seconds`` (as a first launch that compiles does)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.calls = seconds, []

    def __getitem__(self, grid):
        def run(*args, **options):
            self.calls.append((grid, args, options))
            time.sleep(self.seconds)

        return run


def test_a_first_launch_that_compiles_is_told_once(monkeypatch, caplog, tmp_path):
    """A kernel's first launch that takes long (Triton compiling it: a new card, Triton
    or cache) is said once in the process, as a logging warning; the process's first
    launch (Triton's own set-up), fast first launches, launches made before and the
    interpreter's are not."""
    monkeypatch.setattr(dispatch, "_launched", set())
    monkeypatch.setattr(dispatch, "_told", [])
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("GPUFOCUS_TRITON_WARPS", raising=False)
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    caplog.set_level(logging.WARNING, logger=dispatch.log.name)
    fast, slow = _SlowKernel(0.0), _SlowKernel(dispatch.COMPILING_SECONDS + 0.05)

    def launch(kernel, name, **constexprs):
        dispatch.launch(name, kernel, (3, 2), ("x",), constexprs, lambda: (0, 0))

    launch(slow, "setup", A=1)  # the process's first: Triton hashing its library, say
    launch(fast, "fast", A=1)
    assert not caplog.records
    launch(slow, "fast", A=1)  # the same kernel and constants again: not a first launch
    assert not caplog.records
    launch(slow, "slow", A=1)
    assert [r.getMessage() for r in caplog.records] == [
        f"compiling the GPU kernels for this card: once, later runs find them in Triton's cache ({tmp_path})"]
    launch(slow, "slow", A=2)  # another specialization compiles too: told once is enough
    assert len(caplog.records) == 1
    assert all(c == ((3, 2), ("x",), {**c[2], "num_warps": 4, "enable_fp_fusion": False}) for c in fast.calls + slow.calls)
    assert len(fast.calls) == 1 and len(slow.calls) == 4
    monkeypatch.setattr(dispatch, "_launched", {("setup",)})
    monkeypatch.setattr(dispatch, "_told", [])
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # every launch interpreted, slow: nothing compiles
    launch(slow, "slow", A=1)
    assert len(caplog.records) == 1


def test_tritons_cache_is_found_as_triton_finds_it(monkeypatch, tmp_path):
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    monkeypatch.delenv("TRITON_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "me"))
    assert dispatch.triton_cache_dir() == str(tmp_path / "me" / ".triton" / "cache")
    monkeypatch.setenv("TRITON_HOME", str(tmp_path / "home"))
    assert dispatch.triton_cache_dir() == str(tmp_path / "home" / ".triton" / "cache")
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "cache"))
    assert dispatch.triton_cache_dir() == str(tmp_path / "cache")
    knobs = pytest.importorskip("triton.knobs")  # Triton's own answer, where this Triton has its knobs
    assert knobs.cache.dir == dispatch.triton_cache_dir()
    monkeypatch.delenv("TRITON_CACHE_DIR")
    assert knobs.cache.dir == dispatch.triton_cache_dir()


def test_the_torch_twin_is_the_default_on_the_cpu(monkeypatch):
    from gpufocus.kernels.dispatch import use_triton

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not use_triton(torch.zeros(2))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert use_triton(torch.zeros(2)) and not use_triton(torch.zeros(2, dtype=torch.float16))


def test_every_kernel_compiles_for_hopper_and_ampere():
    """What a GPU would compile, without one: a cubin per kernel, specialization and target."""
    from gpufocus.kernels.compile import specializations

    run = subprocess.run([sys.executable, "-m", "gpufocus.kernels.compile", "--target", "sm_90", "--target", "sm_80"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    names = [spec.name for spec in specializations()]
    assert len(names) == len(set(names)) >= 16
    for target in ("sm_90", "sm_80"):
        for name in names:
            assert any(line.startswith(f"{target} ok {name}: ") and "registers" in line for line in lines), (target, name)
    # No kernel spills registers to memory: bytes the traffic count would not see.
    spilled = [line for line in lines if "registers" in line and "spills 0/0 B" not in line]
    assert not spilled, spilled
    assert lines[-1] == "all kernels compiled"


def test_the_compile_check_fails_on_a_kernel_that_does_not_compile(tmp_path):
    """The check itself can fail: a kernel with a Python list, which the interpreter runs."""
    source = tmp_path / "bad_kernel.py"
    source.write_text(
        "import triton\nimport triton.language as tl\n\n@triton.jit\ndef bad(x_ptr, BLOCK: tl.constexpr):\n"
        "    values = []\n    for k in tl.static_range(2):\n        values.append(tl.load(x_ptr + k))\n"
        "    tl.store(x_ptr, values[0])\n"
    )
    script = (
        "import sys, torch; sys.path.insert(0, sys.argv[1]); import bad_kernel\n"
        "from gpufocus.kernels.compile import Specialization, compile_one\n"
        "spec = Specialization('bad', bad_kernel.bad, (torch.empty(4, device='meta'),), {'BLOCK': 4})\n"
        "try:\n    compile_one(spec, 90)\nexcept Exception as e:\n    print('failed', type(e).__name__)\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert "failed CompilationError" in run.stdout, run.stdout + run.stderr
