import json

import numpy as np
import pytest
import torch

from gpufocus import read_image
from gpufocus.synth import FAMILIES, make_stack, write_stack


def local_sharpness(frames: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, H, W) local energy of the Laplacian, over 9x9 windows."""
    grey = frames.mean(1, keepdim=True)
    laplace = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).view(1, 1, 3, 3)
    energy = torch.nn.functional.conv2d(grey, laplace, padding=1) ** 2
    return torch.nn.functional.avg_pool2d(energy, 9, 1, 4)[:, 0]


def test_same_seed_same_stack_other_seed_other_stack():
    a = make_stack(48, 64, 4, breathing=0.003, shift=1.0, noise=2.0, exposure_jitter=0.02, seed=5)
    b = make_stack(48, 64, 4, breathing=0.003, shift=1.0, noise=2.0, exposure_jitter=0.02, seed=5)
    c = make_stack(48, 64, 4, breathing=0.003, shift=1.0, noise=2.0, exposure_jitter=0.02, seed=6)
    assert torch.equal(a.frames, b.frames) and a.params == b.params
    assert not torch.equal(a.frames, c.frames)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_frame_is_sharpest_where_it_is_focused(family):
    stack = make_stack(160, 200, 5, family=family, max_blur=8.0, seed=1)
    sharpest = local_sharpness(stack.frames).argmax(0)
    index = stack.focus_index
    # Away from depth edges (where windows mix depths) the frame focused at a pixel's
    # depth is the sharpest there, or its neighbour in focus.
    steady = torch.nn.functional.max_pool2d(index[None, None].float(), 15, 1, 7)[0, 0] == torch.nn.functional.max_pool2d(
        -index[None, None].float(), 15, 1, 7
    ).neg()[0, 0]
    within_one = ((sharpest - index).abs() <= 1)[steady]
    exact = (sharpest == index)[steady]
    assert within_one.float().mean() > 0.97 and exact.float().mean() > 0.7


def test_frame_zero_is_the_ground_truth_geometry():
    stack = make_stack(64, 80, 3, breathing=0.01, shift=2.0, seed=2)
    info = stack.params["frame_info"]
    assert info[0]["magnification"] == 1 and info[0]["shift_yx_px"] == [0, 0] and info[0]["gain"] == 1
    assert info[2]["magnification"] == pytest.approx(1.01**2)
    assert all(abs(v) <= 2.0 for f in info for v in f["shift_yx_px"])


def test_breathing_magnifies_about_the_centre():
    still = make_stack(101, 101, 2, max_blur=0.0, seed=3)
    moved = make_stack(101, 101, 2, max_blur=0.0, breathing=0.1, seed=3)
    # Frame 1's pixel p shows the scene point c + (p - c) / 1.1, c = (50, 50).
    ys, xs = torch.meshgrid(torch.arange(101.0), torch.arange(101.0), indexing="ij")
    source = torch.stack(((50 + (xs - 50) / 1.1) / 50 - 1, (50 + (ys - 50) / 1.1) / 50 - 1), dim=-1)[None]
    expected = torch.nn.functional.grid_sample(still.frames[1:2], source, mode="bicubic", align_corners=True).clamp(0, 1)
    assert (moved.frames[1:2] - expected)[..., 10:90, 10:90].abs().max() < 1e-3


def test_written_stack_files(tmp_path):
    stack = make_stack(40, 56, 3, family="plane", seed=4)
    paths = write_stack(stack, tmp_path / "syn", fmt="jpg", quality=90)
    assert [p.name for p in paths] == ["frame_000.jpg", "frame_001.jpg", "frame_002.jpg"]
    depth = read_image(tmp_path / "syn" / "depth.png")
    assert depth.dtype == np.uint16 and depth.shape == (40, 56, 1)
    index = read_image(tmp_path / "syn" / "focus_index.png")[:, :, 0]
    assert np.array_equal(index, stack.focus_index.numpy())
    params = json.loads((tmp_path / "syn" / "params.json").read_text())
    assert params["frames"] == 3 and len(params["frame_info"]) == 3
    truth = read_image(tmp_path / "syn" / "ground_truth.png")
    assert np.array_equal(truth, (stack.ground_truth * 255).round().permute(1, 2, 0).byte().numpy())


def test_scene_from_an_image():
    scene = torch.rand(3, 30, 40)
    stack = make_stack(frames=2, scene=scene)
    assert stack.frames.shape == (2, 3, 30, 40) and torch.equal(stack.ground_truth, scene)
