import math

import numpy as np
import pytest
import torch
from conftest import write_frames
from PIL import Image

from gpufocus.metrics import average_gradient, border_crop, evaluate, psnr, qabf, ssim


@pytest.fixture
def image() -> torch.Tensor:
    return torch.rand(3, 20, 24, generator=torch.Generator().manual_seed(0))


def test_average_gradient_is_numpys(image):
    array = image.double().numpy() * 255
    per_channel = []
    for channel in array:
        gy, gx = np.gradient(channel)
        per_channel.append(np.sqrt(gx**2 + gy**2).mean())
    assert average_gradient(image) == pytest.approx(np.mean(per_channel), rel=1e-12)


def test_average_gradient_of_a_ramp():
    ramp = torch.arange(10.0).repeat(3, 4, 1) / 255  # rises 1 grey level per column
    assert average_gradient(ramp) == pytest.approx(1.0)
    assert average_gradient(torch.full((3, 5, 5), 0.5)) == 0.0


def test_psnr_and_ssim(image):
    assert psnr(image, image) == math.inf
    assert ssim(image, image) == pytest.approx(1.0)
    noisy = (image + 0.1).clamp(0, 1)
    mse = ((noisy.double() - image.double()) ** 2).mean().item()
    assert psnr(noisy, image) == pytest.approx(10 * math.log10(1 / mse), rel=1e-9)
    assert ssim(noisy, image) < 1


def test_qabf_of_a_source_against_itself(image):
    # Perfect transfer: G = 1 and A = 1 wherever the source has an edge.
    expected = 0.9994 / (1 + math.exp(-15 * 0.5)) * 0.9879 / (1 + math.exp(-22 * 0.2))
    assert qabf(image[None], image) == pytest.approx(expected, rel=1e-9)
    assert qabf(torch.stack([image, image]), image) == pytest.approx(expected, rel=1e-9)


def test_qabf_prefers_the_fusion_that_keeps_edges(image):
    flat = torch.full_like(image, 0.5)
    left, right = image.clone(), image.clone()
    left[:, :, 12:], right[:, :, :12] = 0.5, 0.5
    assert qabf(torch.stack([left, right]), image) > qabf(torch.stack([left, right]), flat)


def test_border_crop():
    assert border_crop(torch.zeros(3, 100, 50)).shape == (3, 96, 48)


def test_evaluate_a_stack_on_disk(tmp_path, rng):
    sharp = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    blurred = np.asarray(Image.fromarray(sharp).resize((25, 20)).resize((50, 40)))
    paths = write_frames(tmp_path / "stack", np.stack([blurred, blurred]))
    Image.fromarray(sharp).save(tmp_path / "fused.png")
    scores = evaluate(paths, tmp_path / "fused.png", ground_truth=tmp_path / "fused.png")
    assert scores["frames"] == 2 and scores["sharpness_gain"] > 1.5
    assert scores["psnr"] == math.inf and scores["ssim"] == pytest.approx(1.0)
    assert 0 < scores["qabf"] < 1


def test_evaluate_scores_the_frames_as_aligned_when_given_the_transforms(tmp_path):
    """Q^AB/F compares edges where they lie: against a result in the reference's
    geometry, frames that moved score low as they are, and as the fusion aligned them
    they score as frames that did not move."""
    from gpufocus import StackFuser
    from gpufocus.synth import make_stack, write_stack
    from gpufocus.write import write_image

    stack = make_stack(192, 256, 4, breathing=0.01, shift=3.0, max_blur=2.0, seed=5)
    paths = write_stack(stack, tmp_path / "stack")
    fuser = StackFuser(device="cpu")
    write_image(tmp_path / "fused.png", fuser.run(paths))
    assert len(fuser.transforms) == 4
    as_they_are = evaluate(paths, tmp_path / "fused.png")
    aligned = evaluate(paths, tmp_path / "fused.png", transforms=fuser.transforms)
    assert aligned["qabf"] > as_they_are["qabf"] + 0.1, (aligned["qabf"], as_they_are["qabf"])
    assert evaluate(paths, tmp_path / "fused.png", transforms=[]) == as_they_are
