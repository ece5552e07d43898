"""The Triton kernels against their torch twins, on the CPU under Triton's interpreter.

Tiny tensors only: the interpreter runs a kernel at about 100k elements a second.
"""

import importlib

import pytest
import torch

pytest.importorskip("triton")


@pytest.fixture
def interpreted(monkeypatch):
    """Triton's interpreter on, and the kernel modules imported under it."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pyramid = importlib.import_module("gpufocus.kernels._triton_pyramid")
    select = importlib.import_module("gpufocus.kernels._triton_select")
    if not getattr(pyramid._pyr_down_kernel, "__class__", None).__name__.startswith("Interpreted"):
        pyramid, select = importlib.reload(pyramid), importlib.reload(select)
    return pyramid, select


@pytest.mark.parametrize("shape", [(1, 1, 8, 8), (1, 3, 9, 13), (2, 3, 16, 20), (1, 2, 17, 33)])
def test_pyramid_level_is_the_torch_twin_bit_for_bit(interpreted, shape):
    from gpufocus.pyramid import pyr_down, pyr_up

    pyramid, _ = interpreted
    g = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
    detail, coarser = pyramid.laplacian_level(g)
    expected = pyr_down(g)
    assert torch.equal(coarser, expected)
    assert torch.equal(detail, g - pyr_up(expected, g.shape[-2:]))


@pytest.mark.parametrize("planes", [1, 3])
@pytest.mark.parametrize("taps", [(0.25, 0.5, 0.25), (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)])
def test_energy_fold_is_the_torch_twin_bit_for_bit(interpreted, monkeypatch, planes, taps):
    from gpufocus.kernels import select

    _, fused = interpreted
    gen = torch.Generator().manual_seed(planes * 10 + len(taps))
    values = torch.rand(5, 3, 12, 18, generator=gen) - 0.5
    values[3] = values[1]  # an exact tie: the earlier frame must keep it
    measured = values if planes == 3 else values.mean(1, keepdim=True)
    usable = torch.rand(5, 1, 12, 18, generator=gen) > 0.2
    expected = None
    monkeypatch.setenv("GPUFOCUS_TRITON", "0")  # the torch twin
    for start in range(0, 5, 2):
        expected = select.energy_fold(expected, measured[start : start + 2], values[start : start + 2], taps,
                                      usable[start : start + 2], start)
    monkeypatch.delenv("GPUFOCUS_TRITON")
    got = None
    for start in range(0, 5, 3):
        got = select.energy_fold(got, measured[start : start + 3], values[start : start + 3], taps,
                                 usable[start : start + 3], start)
    assert torch.equal(got.score, expected.score) and torch.equal(got.value, expected.value)


def test_the_engine_through_triton_is_the_engine_through_torch(interpreted, monkeypatch):
    from gpufocus import fuse
    from gpufocus.synth import make_stack

    stack = make_stack(24, 32, 3, max_blur=3.0, seed=1)
    monkeypatch.setenv("GPUFOCUS_TRITON", "0")
    expected = fuse(stack.frames, device="cpu", levels=2, align=False)
    monkeypatch.delenv("GPUFOCUS_TRITON")
    assert torch.equal(fuse(stack.frames, device="cpu", levels=2, align=False), expected)


def test_the_torch_twin_is_the_default_on_the_cpu(monkeypatch):
    from gpufocus.kernels.dispatch import use_triton

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not use_triton(torch.zeros(2))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert use_triton(torch.zeros(2)) and not use_triton(torch.zeros(2, dtype=torch.float16))
