"""The depth map against a slow reference, its filling and smoothing, and the 3-D view."""

import numpy as np
import pytest
import torch

from gpufocus import StackFuser
from gpufocus.color import luminance
from gpufocus.depth import DepthMap, finish
from gpufocus.pyramid import Decomposition, binomial_taps, separable_filter
from gpufocus.synth import make_stack


def _reference(frames: torch.Tensor, level: int) -> tuple[np.ndarray, np.ndarray]:
    """Depth and confidence the obvious way: every frame's energy at once, the arg-max,
    a parabola through the logarithms of it and its neighbours, at the level's size."""
    parts = Decomposition(frames, None, level + 1)
    detail = parts.luma(level)
    energy = separable_filter(detail * detail, binomial_taps(9))[:, 0].double().numpy()  # (N, h, w)
    n, h, w = energy.shape
    index = energy.argmax(axis=0)  # the first of equal maxima, as the stream keeps the lower index
    depth = index.astype(float)
    log = np.log(np.maximum(energy, 1e-7))
    for y in range(h):
        for x in range(w):
            i = index[y, x]
            if 0 < i < n - 1:
                before, centre, after = log[i - 1, y, x], log[i, y, x], log[i + 1, y, x]
                curvature = before - 2 * centre + after
                if curvature < 0:
                    depth[y, x] += np.clip(0.5 * (before - after) / curvature, -0.5, 0.5)
    best, mean = energy.max(axis=0), energy.mean(axis=0)
    confidence = np.clip((np.maximum(best, 1e-7) - mean) / (np.maximum(best, 1e-7) + mean + 1e-7), 0, 1)
    return depth, np.where(best <= 1e-7, 0, confidence)


@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_depth_between_frames_matches_the_reference_whatever_the_chunks(chunk):
    frames = make_stack(64, 80, 8, family="objects", max_blur=6.0, seed=2).frames.double()
    depth_map = DepthMap(64, 80)
    depth_map.size = (16, 20)  # compare at the measuring level, before enlarging
    for start in range(0, 8, chunk):
        depth_map.fold(Decomposition(frames[start : start + chunk], None, 3), start)
    depth, confidence = depth_map.result()
    expected_depth, expected_confidence = _reference(frames, depth_map.level)
    assert np.allclose(depth.numpy(), expected_depth, atol=1e-9)
    assert np.allclose(confidence.numpy(), expected_confidence, atol=1e-9)
    assert 0.05 < (depth.numpy() % 1).mean()  # really between frames, not whole ones


def test_unsure_pixels_are_filled_from_sure_ones_and_edges_stay():
    # Left half at frame 2, right half at frame 6; two holes with no confidence (and
    # wrong measured depth): one far from the step, one next to it; a guide with the step.
    depth = torch.full((64, 96), 2.0)
    depth[:, 48:] = 6.0
    confidence = torch.ones(64, 96)
    confidence[24:40, 4:16] = 0
    confidence[20:44, 56:88] = 0
    measured = depth.clone()
    measured[24:40, 4:16] = 7.0  # what noise would say
    measured[20:44, 56:88] = 0.0
    guide = torch.where(torch.arange(96) < 48, 0.2, 0.8).expand(64, 96)
    filled = finish(measured, confidence, guide, threshold=0.5, smooth=4)
    assert torch.allclose(filled[24:40, 4:16], depth[24:40, 4:16], atol=0.1)  # far from the step: its side's depth
    hole = filled[20:44, 56:88]
    assert hole.min() > 2 and hole.max() <= 6.01 and hole.mean() > 4.5  # from around it, mostly its own side
    assert filled[:, 40:48].max() < 2.2 and filled[:8, 49:].min() > 5.8  # the step stays sharp along the guide
    plain = finish(measured, confidence, guide, threshold=0.0, smooth=0)
    assert torch.equal(plain, measured)  # threshold 0 and no smoothing: the measured map


def test_depth_map_is_smooth_in_flat_areas_and_follows_the_truth(tmp_path):
    # A textured plane, tilted: depth changes smoothly; the map must not be blocks.
    stack = make_stack(128, 160, 6, family="plane", max_blur=6.0, seed=3)
    fuser = StackFuser(device="cpu", depth_map=True, align=False)
    fuser.run(stack.frames)
    depth = fuser.depth_map()
    truth = stack.focus_index.float()
    assert (depth - truth).abs().mean() < 0.6
    # 4x4 blocks show as steps every fourth pixel: the steps between neighbours are no
    # larger at block borders than inside blocks.
    steps = (depth[:, 1:] - depth[:, :-1]).abs().mean(dim=0)
    at_borders, inside = steps[3::4].mean(), torch.cat([steps[0::4], steps[1::4], steps[2::4]]).mean()
    assert at_borders < 2 * inside + 1e-3


def test_depth_layers_and_the_guide_need_the_result_first():
    from gpufocus import GpufocusError

    fuser = StackFuser(device="cpu", depth_map=True, align=False)
    frames = make_stack(32, 48, 3, seed=1).frames
    fuser.add(frames)
    with pytest.raises(GpufocusError, match="call result.. first"):
        fuser.depth_map()
    image = fuser.result()
    depth, confidence = fuser.depth_layers()
    assert depth.shape == confidence.shape == image.shape[-2:]
    assert luminance(image).shape == (1, 32, 48)


def test_relief_raises_the_near_and_hides_what_is_behind():
    from gpufocus.relief import render_relief

    image = np.zeros((60, 80, 3), np.uint8)
    image[20:40, 30:50] = (255, 0, 0)  # a red square...
    depth = np.ones((60, 80))
    depth[20:40, 30:50] = 0  # ...nearer than the rest
    flat = render_relief(image, np.ones((60, 80)), angle=45, relief=0.25)
    raised = render_relief(image, depth, angle=45, relief=0.25)
    assert flat.shape[1] == raised.shape[1] == 80 and raised.shape[0] > 40
    red = lambda picture: np.nonzero((picture[..., 0] > 100) & (picture[..., 1] < 60))[0]  # noqa: E731
    # relative to the surface around it, the square stands higher on screen
    assert red(raised).min() < red(flat).min() - 5
    assert len(red(raised)) > 0.8 * len(red(flat))  # and is still seen, not lost behind anything


def test_view_command(tmp_path, small_stack):
    from typer.testing import CliRunner

    from gpufocus.cli import app

    out, depth, view = tmp_path / "out.png", tmp_path / "depth.png", tmp_path / "view.png"
    runner = CliRunner()
    assert runner.invoke(app, ["fuse", *map(str, small_stack), "-o", str(out), "--depth-map", str(depth), "-q"]).exit_code == 0
    result = runner.invoke(app, ["view", str(out), str(depth), "-o", str(view)])
    assert result.exit_code == 0, result.stderr
    from gpufocus import probe_image, read_image

    picture = read_image(view)
    assert picture.shape[1] == 56 and picture.std() > 10 and probe_image(view).software.endswith("(3-D view)")
    result = runner.invoke(app, ["view", str(out), str(small_stack[0]), "-o", str(tmp_path / "v2.png")])
    assert result.exit_code == 0  # any grey or colour image of the same size serves as depth
    wrong = tmp_path / "small.png"
    from PIL import Image

    Image.new("L", (10, 10)).save(wrong)
    result = runner.invoke(app, ["view", str(out), str(wrong), "-o", str(tmp_path / "v3.png")])
    assert result.exit_code == 1 and "small.png: 10x10 differs from the image's 56x40" in result.stderr
    assert not (tmp_path / "v3.png").exists()
