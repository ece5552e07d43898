import numpy as np
import pytest
import reference
import torch

from gpufocus.pyramid import build_laplacian_pyramid
from gpufocus.options import FuseOptions
from gpufocus.rules import MaxEnergy, MaxLoG, WangChang, make_rule


def random_stack(n=3, c=3, h=20, w=24, seed=0) -> np.ndarray:
    """Frames with a different sharp region each: noise blended with its blur."""
    rng = np.random.default_rng(seed)
    sharp = rng.random((c, h, w))
    blurred = sharp.mean(axis=(1, 2), keepdims=True) + 0.1 * rng.random((c, h, w))
    frames = []
    for i in range(n):
        mask = np.zeros((1, h, w))
        mask[:, :, i * w // n : (i + 1) * w // n] = 1
        frames.append(mask * sharp + (1 - mask) * blurred + 0.01 * rng.random((c, h, w)))
    return np.stack(frames)


def fold_in_chunks(rule, frames: np.ndarray, chunk: int) -> np.ndarray:
    tensor = torch.from_numpy(frames)  # float64: the comparison checks the logic, not rounding
    for start in range(0, len(frames), chunk):
        rule.fold(tensor[start : start + chunk])
    return rule.result()[0].numpy()


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("kernel_size", [3, 9])
def test_max_energy_matches_reference(per_channel, kernel_size):
    frames = random_stack(seed=kernel_size)
    ours = fold_in_chunks(MaxEnergy(2, kernel_size, per_channel, 0, halo_guard=False), frames, chunk=2)
    np.testing.assert_allclose(ours, reference.max_energy(frames, 2, kernel_size, per_channel), atol=1e-9)


@pytest.mark.parametrize("per_channel", [False, True])
def test_wang_chang_matches_reference(per_channel):
    frames = random_stack(n=4, h=19, w=22, seed=5)
    ours = fold_in_chunks(WangChang(2, 3, per_channel), frames, chunk=3)
    np.testing.assert_allclose(ours, reference.wang_chang(frames, 2, 3, per_channel), atol=1e-9)


def test_wang_chang_top_level_uses_every_branch():
    # Check that the random test above is not passing on one branch only.
    frames = random_stack(n=4, h=19, w=22, seed=5)
    rule = WangChang(2, 3, False)
    fold_in_chunks(rule, frames, chunk=4)
    top = rule._top
    same_max = (top["max_d"].index == top["max_e"].index)
    same_min = (top["min_d"].index == top["min_e"].index) & ~same_max
    neither = ~(same_max | same_min)
    assert same_max.any() and same_min.any() and neither.any()


@pytest.mark.parametrize("kernel_size", [3, 5])
def test_max_log_matches_reference(kernel_size):
    frames = random_stack(seed=7)
    ours = fold_in_chunks(MaxLoG(kernel_size, False), frames, chunk=1)
    np.testing.assert_allclose(ours, reference.max_log(frames, kernel_size), atol=1e-9)


@pytest.mark.parametrize("method", ["max-energy", "wang-chang", "max-log"])
def test_each_rule_takes_the_sharp_frame(method):
    frames = random_stack(n=3, h=24, w=30, seed=11)
    fused = fold_in_chunks(make_rule(FuseOptions(method=method), levels=2), frames, chunk=3)
    # Column band i is sharp in frame i only; the fused image must follow frame i there.
    for i in range(3):
        band = slice(i * 10 + 2, (i + 1) * 10 - 2)
        errors = [np.abs(fused[:, :, band] - frames[j][:, :, band]).mean() for j in range(3)]
        assert int(np.argmin(errors)) == i


def test_colours_come_from_one_frame_per_pixel():
    # max-log takes whole pixels: every fused pixel equals one frame's pixel exactly.
    frames = random_stack(seed=3)
    fused = fold_in_chunks(make_rule(FuseOptions(method="max-log"), levels=1), frames, chunk=2)
    matches = np.stack([np.all(fused == f, axis=0) for f in frames])
    assert matches.any(axis=0).all()


def test_bad_kernel():
    with pytest.raises(ValueError):
        MaxEnergy(2, 4, False, 0, halo_guard=False)


def test_majority_of_neighbourhoods():
    from gpufocus.rules import _majority

    index = torch.zeros(1, 1, 5, 5, dtype=torch.int32)
    index[0, 0, 2, 2] = 3  # a lone choice among zeros gives way
    index[0, 0, 0, :] = 7  # a row of sevens: the edge row keeps them (replicated border)
    chosen = _majority([index])
    assert chosen[0, 0, 2, 2] == 0 and (chosen[0, 0, 0] == 7).all()
    parent = torch.full_like(index, 5)
    with_parent = _majority([index, parent])
    assert with_parent[0, 0, 2, 2] == 5  # 9 votes of 5 against 8 of 0
    assert with_parent[0, 0, 4, 4] == 0  # 9 against 9: the own choice stays


@pytest.mark.parametrize("consistency", [1, 2])
def test_consistency_reads_twice_and_takes_chosen_frames(consistency):
    frames = torch.from_numpy(random_stack(n=4, h=24, w=30, seed=2))
    rule = make_rule(FuseOptions(consistency=consistency), levels=2)
    rule.fold(frames[:2])
    rule.fold(frames[2:])
    rule.refold(frames[:3])
    rule.refold(frames[3:])
    fused = rule.result()[0]
    plain = make_rule(FuseOptions(), levels=2)
    plain.fold(frames)
    # Mostly the same choices; where they differ, the coefficient is the chosen frame's.
    assert (fused - plain.result()[0]).abs().mean() < 0.02
    for level in range(2):
        chosen, changed = rule._changes[level]
        coefficients = build_laplacian_pyramid(frames, 2)[level]
        picked = coefficients.gather(0, chosen.long().expand(1, 3, *chosen.shape[-2:]))
        assert torch.equal(rule._best[level].value[changed.expand_as(picked)], picked[changed.expand_as(picked)])
