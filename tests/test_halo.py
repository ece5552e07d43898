"""The halo guard (gpufocus.halo): its measures and its switch against slow references,
its effect with and without depth edges, and results that do not depend on chunks or tiles."""

import numpy as np
import pytest
import reference
import torch
import torch.nn.functional as F

from gpufocus import fuse
from gpufocus.color import luminance
from gpufocus.halo import (
    HALF_SHARE,
    JUMP_SHARE,
    MIN_JUMP,
    MIN_SHARPNESS,
    NOISE_FACTOR,
    window_energies,
    noise_level,
)
from gpufocus.pyramid import binomial_taps, separable_filter
from gpufocus.rules import MaxEnergy
from gpufocus.synth import make_stack


@pytest.fixture(scope="module")
def edges():
    """Objects over a background: depth edges, and a few px of halo beside them."""
    return make_stack(192, 256, 8, family="objects", max_blur=10, noise=1.0, seed=11)


def edge_band(depth: torch.Tensor, reach: int = 8) -> torch.Tensor:
    steps = torch.zeros_like(depth, dtype=torch.bool)
    steps[1:] |= (depth[1:] - depth[:-1]).abs() > 0.05
    steps[:, 1:] |= (depth[:, 1:] - depth[:, :-1]).abs() > 0.05
    return F.max_pool2d(steps[None, None].float(), 2 * reach + 1, 1, reach)[0, 0] > 0


def test_noise_level_matches_reference(rng):
    frames = rng.random((3, 3, 37, 23))
    ours = noise_level(torch.from_numpy(frames), per_channel=False)
    np.testing.assert_allclose(ours[:, 0].double().numpy(), reference.noise_level(frames), rtol=1e-5)
    # the luminance of the rows read is the luminance of the frame's rows, bit for bit
    assert torch.equal(ours, noise_level(luminance(torch.from_numpy(frames)), per_channel=True))
    # a median is one of the values: a frame's level does not depend on its batch
    single = [noise_level(torch.from_numpy(frames[i : i + 1]), per_channel=False) for i in range(3)]
    assert torch.equal(torch.cat(single), ours)
    # each plane on its own
    per_plane = noise_level(torch.from_numpy(frames), per_channel=True)
    assert per_plane.shape == (3, 3)
    for c in range(3):
        assert torch.equal(per_plane[:, c : c + 1], noise_level(torch.from_numpy(frames[:, c : c + 1]), per_channel=True))


@pytest.mark.parametrize("size", [3, 9])
def test_window_energies_match_reference(rng, size):
    squares = rng.random((2, 1, 13, 11)) ** 2
    energy, half = window_energies(torch.from_numpy(squares), binomial_taps(size))
    assert torch.equal(energy, separable_filter(torch.from_numpy(squares), binomial_taps(size)))
    ours = half.numpy()
    for frame in range(2):
        np.testing.assert_allclose(ours[frame, 0], reference.half_window_energy(squares[frame, 0], size), atol=1e-12)


def test_one_sided_energy_is_small_beside_an_edge_and_whole_on_texture(rng):
    # a step: beside it (on the flat side) the energy comes from one side only
    step = torch.zeros(1, 1, 21, 21, dtype=torch.float64)
    step[..., :, 11:] = 1
    squares = step * step
    taps = binomial_taps(9)
    full, half = window_energies(squares, taps)
    assert full[0, 0, 10, 9] > 0.1 and half[0, 0, 10, 9] < 1e-12  # two pixels beside the step
    texture = torch.from_numpy(rng.random((1, 1, 21, 21)))
    centre = (slice(None), slice(None), slice(6, 15), slice(6, 15))
    full, half = window_energies(texture, taps)
    ratio = half[centre] / full[centre]
    assert ratio.min() > 0.5


def test_guarded_max_energy_matches_reference():
    stack = make_stack(28, 32, 7, family="objects", max_blur=10, noise=1.0, seed=4)
    frames = stack.frames.double()
    rule = MaxEnergy(2, 9, False, 0, track_index=True, halo_guard=True)
    for start in range(0, len(frames), 3):
        rule.fold(frames[start : start + 3])
    image, index = reference.max_energy_guarded(
        frames.numpy(), 2, 9, HALF_SHARE, MIN_JUMP, JUMP_SHARE, MIN_SHARPNESS, NOISE_FACTOR
    )
    np.testing.assert_allclose(rule.result()[0].numpy(), image, atol=1e-9)
    assert np.array_equal(rule.decisions()[0].numpy(), index)
    plain = MaxEnergy(2, 9, False, 0, track_index=True, halo_guard=False)
    plain.fold(frames)
    switched = int((plain.decisions()[0] != rule.decisions()[0]).sum())
    assert 0 < switched < index.size // 10  # the test sees the switch, which stays rare


def test_guard_lowers_the_error_at_depth_edges_and_nowhere_raises_it(edges):
    truth, band = edges.ground_truth, edge_band(edges.depth)
    off = fuse(edges.frames, device="cpu", align=False, halo_guard=False)
    on = fuse(edges.frames, device="cpu", align=False)
    error = lambda image, where: float(((image - truth)[:, where] ** 2).mean())  # noqa: E731
    assert error(on, band) < error(off, band)
    assert error(on, ~band) <= error(off, ~band) * 1.001
    changed = (on != off).any(0)
    assert changed.any() and float(band[changed].float().mean()) > 0.8  # mostly at the edges


@pytest.mark.parametrize("family", ["plane", "smooth"])
def test_guard_changes_nothing_without_depth_edges(family):
    stack = make_stack(128, 160, 8, family=family, max_blur=10, noise=2.0, seed=3)
    off = fuse(stack.frames, device="cpu", align=False, halo_guard=False)
    assert torch.equal(fuse(stack.frames, device="cpu", align=False), off)


def test_guard_does_not_depend_on_chunks_or_tiles(edges):
    off = fuse(edges.frames, device="cpu", align=False, halo_guard=False, levels=4)
    whole = fuse(edges.frames, device="cpu", align=False, levels=4, chunk=8, tile=0)
    assert not torch.equal(whole, off)  # the guard switched coefficients here
    assert torch.equal(fuse(edges.frames, device="cpu", align=False, levels=4, chunk=3, tile=0), whole)
    tiled = fuse(edges.frames, device="cpu", align=False, levels=4, chunk=3, tile=64)
    assert torch.equal(tiled, whole)


def test_guard_decides_each_channel_on_its_own(edges):
    # two grey channels of another kind (not RGB): decided, guard included, each on its
    # own, so the 2-channel fusion is the fusion of each channel alone
    planes = edges.frames[:, 1:]
    both = fuse(planes, device="cpu", align=False)
    alone = torch.cat([fuse(planes[:, c : c + 1], device="cpu", align=False) for c in range(2)])
    assert torch.equal(both, alone)
    off = torch.cat([fuse(planes[:, c : c + 1], device="cpu", align=False, halo_guard=False) for c in range(2)])
    assert not torch.equal(alone, off)  # the guard switched coefficients here
