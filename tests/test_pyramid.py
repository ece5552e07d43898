import numpy as np
import pytest
import reference
import torch

from gpufocus.pyramid import (
    auto_levels,
    build_gaussian_pyramid,
    build_laplacian_pyramid,
    collapse_laplacian_pyramid,
    correlate1d,
    level_sizes,
    max_levels,
    pyr_down,
    pyr_up,
)


@pytest.mark.parametrize("size", [(1, 3, 37, 41), (2, 3, 64, 64), (1, 1, 99, 8), (1, 3, 150, 201), (1, 2, 9, 255)])
def test_round_trip_is_exact_for_any_size(size, device):
    x = torch.rand(size, device=device, generator=torch.Generator(device).manual_seed(0))
    levels = max_levels(*size[-2:])
    pyramid = build_laplacian_pyramid(x, levels)
    assert len(pyramid) == levels + 1
    assert (collapse_laplacian_pyramid(pyramid) - x).abs().max().item() <= 1e-6


def test_level_sizes_round_up_like_opencv():
    x = torch.rand(1, 1, 101, 37)
    shapes = [tuple(g.shape[-2:]) for g in build_gaussian_pyramid(x, 3)]
    assert shapes == [(101, 37), (51, 19), (26, 10), (13, 5)] == level_sizes(101, 37, 3)


@pytest.mark.parametrize("shape", [(13, 11), (12, 10), (9, 16)])
def test_pyr_down_and_up_match_the_explicit_reference(shape):
    image = np.random.default_rng(1).random((2,) + shape)
    down = pyr_down(torch.from_numpy(image)[None])[0].numpy()
    np.testing.assert_allclose(down, reference.pyr_down(image), atol=1e-12)
    up = pyr_up(torch.from_numpy(down)[None], shape)[0].numpy()
    np.testing.assert_allclose(up, reference.pyr_up(down, shape), atol=1e-12)


def test_laplacian_pyramid_matches_the_reference():
    image = np.random.default_rng(2).random((3, 21, 18))
    ours = build_laplacian_pyramid(torch.from_numpy(image)[None], 2)
    for a, b in zip(ours, reference.laplacian_pyramid(image, 2)):
        np.testing.assert_allclose(a[0].numpy(), b, atol=1e-12)


@pytest.mark.parametrize("taps", [(0.25, 0.5, 0.25), tuple(np.ones(7) / 7), (1.0, -2.0, 1.0)])
@pytest.mark.parametrize("n", [5, 8, 9, 30])
@pytest.mark.parametrize("stride", [1, 2])
def test_correlate1d_matches_explicit_windows(taps, n, stride):
    x = np.random.default_rng(n).random((2, n))
    got = correlate1d(torch.from_numpy(x), taps, dim=-1, stride=stride).numpy()
    r = len(taps) // 2
    want = [
        [sum(taps[k] * row[reference.reflect(i + k - r, n)] for k in range(len(taps))) for i in range(0, n, stride)]
        for row in x
    ]
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_levels_are_bounded_by_the_image():
    assert max_levels(8, 8) == 1 and max_levels(7, 100) == 0
    assert auto_levels(1536, 2048) == 6
    assert 1 <= auto_levels(40, 56) <= max_levels(40, 56)
    with pytest.raises(ValueError, match="at most"):
        build_laplacian_pyramid(torch.rand(1, 1, 16, 16), 3)
