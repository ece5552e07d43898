import math
import warnings

import pytest
import torch

from gpufocus import AlignOptions, StackFuser, fuse
from gpufocus.options import FuseOptions, OptionError
from gpufocus.align import AlignmentWarning, StackAligner, corner_error, inner_rectangle, warp_frame
from gpufocus.metrics import psnr
from gpufocus.rules import make_rule
from gpufocus.synth import make_stack, move_frames, true_matrix


@pytest.fixture(scope="module")
def moving():
    """Frames blurred differently, breathing 0.2 % a frame, shifted and rotated at random."""
    return make_stack(384, 512, 8, breathing=0.002, shift=1.5, rotation=0.3, max_blur=8.0, noise=1.0, seed=3)


def test_known_motion_is_recovered_within_a_tenth_of_a_pixel(moving):
    estimates = StackAligner(AlignOptions("similarity")).estimate(moving.frames, 0)
    errors = [corner_error(m.cpu(), true_matrix(f, 384, 512), 384, 512)
              for m, f in zip(estimates, moving.params["frame_info"])]
    assert max(errors) <= 0.1, errors


@pytest.mark.parametrize("model, limit", [("translation", 0.1), ("affine", 0.2), ("homography", 0.3)])
def test_other_models(model, limit):
    shifted = make_stack(256, 320, 5, shift=2.5, max_blur=6.0, seed=4)
    if model != "translation":
        shifted = make_stack(256, 320, 5, breathing=0.003, shift=2.5, max_blur=6.0, seed=4)
    estimates = StackAligner(AlignOptions(model)).estimate(shifted.frames, 0)
    errors = [corner_error(m.cpu(), true_matrix(f, 256, 320), 256, 320)
              for m, f in zip(estimates, shifted.params["frame_info"])]
    assert max(errors) <= limit, errors


def test_an_implausible_estimate_falls_back_with_a_warning(moving):
    frames = moving.frames[:5].clone()
    # Frame 3 turned by 30 degrees: beyond any focus stack's motion between neighbours.
    frames[3:4] = move_frames(frames[3:4], torch.ones(1), torch.zeros(1, 2), torch.tensor([math.radians(30)]))
    aligner = StackAligner(AlignOptions("similarity"))
    aligner.names = [f"f{i}.png" for i in range(5)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        aligned, valid = aligner.align(frames, 0)
    assert any(str(w.message).startswith("frame 3 (f3.png): alignment failed") for w in caught)
    assert aligned.shape == frames.shape and torch.isfinite(aligned).all()
    assert aligner.results[3].fallback is not None and aligner.results[2].fallback is None
    # The fall-back is the previous frame's motion, or none: nowhere near 30 degrees.
    turn = aligner.results[3].matrix
    assert abs(math.degrees(math.atan2(turn[1, 0], turn[0, 0]))) < 1
    assert all(issubclass(w.category, AlignmentWarning) for w in caught)


def test_alignment_off_is_the_plain_engine_bit_for_bit(moving):
    plain = make_rule(FuseOptions(), levels=5)
    plain.fold(moving.frames)
    expected = plain.result()[0].clamp(0, 1)
    assert torch.equal(fuse(moving.frames, device="cpu", align=False, levels=5, chunk=3), expected)


def test_alignment_is_as_good_as_the_true_motion(moving):
    without = psnr(fuse(moving.frames, device="cpu", align=False), moving.ground_truth)
    aligned = psnr(fuse(moving.frames, device="cpu", align=AlignOptions(match_exposure=False)), moving.ground_truth)
    # The same fusion of the frames warped back with the motion synth applied:
    oracle = [warp_frame(f[None], true_matrix(info, 384, 512)) for f, info in zip(moving.frames, moving.params["frame_info"])]
    rule = make_rule(FuseOptions(), levels=6)
    rule.fold(torch.cat([w for w, _ in oracle]), torch.cat([v for _, v in oracle]))
    best = psnr(rule.result()[0].clamp(0, 1), moving.ground_truth)
    assert aligned > without + 5 and aligned > best - 0.3


def test_aligned_result_does_not_depend_on_the_chunk_size(moving):
    results = [fuse(moving.frames, device="cpu", chunk=chunk) for chunk in (1, 3, 8)]
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_another_reference_takes_its_geometry(moving):
    fuser = StackFuser(device="cpu", align=AlignOptions(reference=4))
    fused = fuser.run(moving.frames)
    assert corner_error(fuser.transforms[4].matrix, torch.eye(3, dtype=torch.float64), 384, 512) < 1e-9
    # The ground truth as frame 4 sees it.
    truth = true_matrix(moving.params["frame_info"][4], 384, 512)
    seen = move_frames(moving.ground_truth[None], torch.tensor([truth[0, :2].norm().item()]),
                       torch.tensor([[truth[1, 2] * 256, truth[0, 2] * 256]]),
                       torch.tensor([moving.params["frame_info"][4]["rotation_rad"]]))[0]
    inner = (slice(None), slice(20, -20), slice(20, -20))
    assert psnr(fused[inner], seen[inner]) > 30
    with pytest.raises(OptionError, match="align.reference=9: the stack has 8 frames"):
        fuse(moving.frames, align=AlignOptions(reference=9))


def test_crop_keeps_only_what_every_frame_covers():
    breathing = make_stack(200, 240, 6, breathing=0.01, max_blur=4.0, seed=5)
    full = fuse(breathing.frames, device="cpu")
    cropped = fuse(breathing.frames, device="cpu", align=AlignOptions(crop=True))
    assert full.shape == (3, 200, 240)
    # Frame 5 is magnified by 1.01^5: in frame 0's grid it covers 1/1.051 of each side.
    assert 200 / 1.051 - 3 <= cropped.shape[1] < 200 and 240 / 1.051 - 3 <= cropped.shape[2] < 240


def test_exposure_is_matched_only_beyond_what_focus_explains():
    flicker = make_stack(160, 200, 6, max_blur=4.0, seed=6)
    gains = torch.tensor([1.0, 1.01, 0.985, 1.08, 0.9, 1.02])  # frame 0 is the reference
    flicker.frames.mul_(gains.view(-1, 1, 1, 1)).clamp_(0, 1)
    fuser = StackFuser(device="cpu", align=AlignOptions(match_exposure=True))
    fuser.run(flicker.frames)
    for result, gain in zip(fuser.transforms, gains):
        if abs(gain - 1) < 0.03:  # within what frames focused differently differ by
            assert result.gain is None, (gain, result.gain)
        else:
            assert torch.allclose(result.gain * gain, torch.ones(3), atol=0.01), (gain, result.gain)


def test_inner_rectangle():
    mask = torch.ones(20, 30, dtype=torch.bool)
    mask[:3] = False
    mask[:, 25:] = False
    mask[10, 0] = False
    top, bottom, left, right = inner_rectangle(mask)
    assert mask[top:bottom, left:right].all()
    assert (bottom - top) * (right - left) >= 9 * 25  # rows 11-19 with every column up to 24


def test_a_still_stack_with_very_different_blur_takes_no_motion():
    # No motion at all, and the two ends of a deep stack: the estimator finds some
    # apparent motion in the blur difference; the test must not take it.
    still = make_stack(240, 320, 8, family="plane", max_blur=16.0, noise=1.0, seed=21)
    pairs = still.frames[[0, 7, 3, 5]]
    aligned = fuse(pairs, device="cpu")
    assert torch.equal(aligned, fuse(pairs, device="cpu", align=False))


def blobs(height: int, width: int, count: int, seed: int) -> torch.Tensor:
    """A scene of coloured Gaussian blobs: texture in every direction and at every place,
    like a photograph (synth's procedural rings and streaks leave scale ambiguous)."""
    g = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32),
                          indexing="ij")
    scene = torch.zeros(3, height, width)
    cy, cx = torch.rand(count, generator=g) * height, torch.rand(count, generator=g) * width
    spread, colour = 1.5 + torch.rand(count, generator=g) * 4, torch.rand(count, 3, generator=g) - 0.5
    for k in range(count):
        scene += colour[k].view(3, 1, 1) * torch.exp(-((y - cy[k]) ** 2 + (x - cx[k]) ** 2) / (2 * spread[k] ** 2))
    return (0.5 + 0.5 * scene).clamp(0, 1)


def test_breathing_over_30_frames_is_recovered():
    scene = blobs(384, 512, 800, seed=5)
    stack = make_stack(384, 512, 30, family="smooth", breathing=0.002, shift=0.5, max_blur=10.0, noise=1.0, seed=22,
                       scene=scene)
    fuser = StackFuser(device="cpu", align=AlignOptions(match_exposure=False))
    fused = fuser.run(stack.frames)
    errors = [corner_error(r.matrix, true_matrix(info, 384, 512), 384, 512)
              for r, info in zip(fuser.transforms, stack.params["frame_info"])]
    # The breathing adds up to 19 pixels at the corners by the last frame.
    assert errors[-1] <= 0.1 and max(errors) <= 0.15, errors
    assert psnr(fused, stack.ground_truth) > psnr(fuse(stack.frames, device="cpu", align=False), stack.ground_truth) + 10


def test_global_alignment_refines_against_the_reference(moving):
    fuser = StackFuser(device="cpu", align=AlignOptions(global_align=True, match_exposure=False))
    fuser.run(moving.frames)
    errors = [corner_error(r.matrix, true_matrix(info, 384, 512), 384, 512)
              for r, info in zip(fuser.transforms, moving.params["frame_info"])]
    assert max(errors) <= 0.15, errors


@pytest.mark.parametrize("size", [0, 256])
def test_the_estimation_size(moving, size):
    fuser = StackFuser(device="cpu", align=AlignOptions(size=size, match_exposure=False))
    fuser.run(moving.frames)
    errors = [corner_error(r.matrix, true_matrix(info, 384, 512), 384, 512)
              for r, info in zip(fuser.transforms, moving.params["frame_info"])]
    assert max(errors) <= (0.1 if size == 0 else 0.5), errors


def test_a_chunk_is_estimated_without_reading_the_device(moving):
    # On the meta device tensors hold no data: any read back to the host (item, bool,
    # float, cpu, tolist) inside the estimation, the checks, the decisions or the gains
    # would raise. Two chunks, so that the second pairs up with the first's last frame;
    # frames with and without an alpha mask.
    from gpufocus.align import _gains, _low, _opaque

    for mask in (None, torch.empty(3, 1, 384, 512, device="meta")):
        aligner = StackAligner(AlignOptions(global_align=True))
        frames, opaque = _opaque(torch.empty(3, 3, 384, 512, device="meta"), mask)
        for first in (0, 3):
            chain, decisions, why, features = aligner._chain_on_device(frames, first, opaque)
            aligner._chain += [torch.eye(3, dtype=torch.float64)] * 3  # what a read-back would record
            refined = aligner._refine(features, chain)
            reference = _low(frames[:1], None if opaque is None else opaque[:1])[0]
            gains = _gains(_low(frames, opaque), reference, refined, (384, 512), opaque is not None)
            assert chain.device.type == refined.device.type == gains.device.type == "meta"


@pytest.mark.parametrize("chunk", [1, 3, 8])
def test_one_read_back_per_chunk_whatever_the_frames_and_iterations(moving, monkeypatch, chunk):
    import gpufocus.align as align

    reads = []
    real = StackAligner._read_back
    monkeypatch.setattr(StackAligner, "_read_back", staticmethod(lambda *t: reads.append(1) or real(*t)))
    monkeypatch.setattr(align, "_ITERATIONS_COARSE", 7)
    fuse(moving.frames, device="cpu", chunk=chunk)
    assert len(reads) == -(-len(moving.frames) // chunk)


def test_blur_matching_blurs_whichever_frame_is_sharper_tile_by_tile():
    from gpufocus.align import _TILES, _blur_matched, _blurs

    sharp = torch.randn(1, 256, 256, generator=torch.Generator().manual_seed(0))
    soft = _blurs(sharp)[1]
    left = torch.arange(256) < 128  # the template is sharp on the left, the image on the right
    template, image = torch.where(left, sharp, soft), torch.where(left, soft, sharp)
    valid = torch.ones(1, 256, 256, dtype=torch.bool)
    best, choice = _blur_matched(*(torch.stack([x, *_blurs(x)], 1) for x in (template, image)), valid)
    tiles = choice.view(_TILES, _TILES)
    assert (tiles[:, : _TILES // 2] == 3).all() and (tiles[:, _TILES // 2 :] == 4).all()  # blurred by the second taps
    assert best.mean() < 0.05 * ((image - template) ** 2).mean()


def test_the_matched_pair_differs_only_by_its_motion():
    from gpufocus.align import _FINE_STRIDE, _Level, _blend, _blurs, _match_blur

    sharp = torch.randn(1, 1, 256, 256, generator=torch.Generator().manual_seed(1))
    soft = _blurs(sharp)[0]
    left = torch.arange(256) < 128
    template, image = torch.where(left, sharp, soft), torch.where(left, soft, sharp)
    level = _Level((256, 256), 1, 8, (256, 256), "cpu")
    still = torch.eye(3, dtype=torch.float64)[None]
    stacked = torch.cat([template, *_blurs(template)], 1)
    to_template, to_image, (samples, _) = _match_blur(stacked, torch.cat([image, *_blurs(image)], 1), level, still, False)
    points = stacked[..., ::_FINE_STRIDE, ::_FINE_STRIDE]  # where the matching is done
    inner = (slice(None), slice(8 // _FINE_STRIDE, -8 // _FINE_STRIDE), slice(8 // _FINE_STRIDE, -8 // _FINE_STRIDE))
    before = ((samples[:, 0] - points[:, 0])[inner] ** 2).mean()
    after = ((_blend(samples, to_image) - _blend(points, to_template))[inner] ** 2).mean()
    assert after < 0.1 * before


def test_blur_matching_keeps_the_chain_from_drifting(monkeypatch):
    # Neighbours focused differently: the change of blur moves edges a little, always the
    # same way, and the chain adds it up frame after frame unless the blur is matched.
    import gpufocus.align as align

    stack = make_stack(480, 640, 20, family="smooth", breathing=0.002, shift=0.3, max_blur=12.0, noise=2.0, seed=14)

    def last_frame_error() -> float:
        fuser = StackFuser(device="cpu", align=AlignOptions(match_exposure=False))
        fuser.run(stack.frames)
        truth = true_matrix(stack.params["frame_info"][-1], 480, 640)
        return corner_error(fuser.transforms[-1].matrix, truth, 480, 640)

    matched = last_frame_error()
    monkeypatch.setattr(align, "_match_blur", lambda *pair: (None, None, None))  # each as it is
    assert matched <= 0.1 and matched < 0.7 * last_frame_error()


@pytest.mark.parametrize("shape", [(2, 3), (7, 8), (9, 9), (150, 201)])
def test_the_gradient_at_every_other_point_is_torch_gradient_there(shape):
    from gpufocus.align import _gradient_every

    x = torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(sum(shape)))
    for stride in (1, 2, 3):
        gy, gx = _gradient_every(x, stride)
        want_y, want_x = (g[..., ::stride, ::stride] for g in torch.gradient(x, dim=(-2, -1)))
        assert torch.equal(gy, want_y) and torch.equal(gx, want_x)


_AFFINE = torch.tensor([[1.01, 0.01, 0.002], [-0.005, 0.99, 0.01], [0, 0, 1]], dtype=torch.float64)
_PROJECTIVE = torch.tensor([[1.01, 0.01, 0.002], [-0.005, 0.99, 0.01], [0.001, 0, 1]], dtype=torch.float64)


@pytest.mark.parametrize("matrix", [_AFFINE, _PROJECTIVE], ids=["affine", "projective"])
def test_resampling_does_not_depend_on_the_thread_count(matrix):
    frame = torch.rand(1, 3, 301, 257, generator=torch.Generator().manual_seed(5))
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):  # rows cut into one band per thread
            torch.set_num_threads(count)
            results.append([warp_frame(frame, matrix), warp_frame(frame, matrix, (10, 20, 101, 77))])
    finally:
        torch.set_num_threads(threads)
    for whole, box in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(whole + box, results[0][0] + results[0][1]))
    assert results[0][1][0].shape == (1, 3, 101, 77)
    assert torch.equal(results[0][1][0], results[0][0][0][..., 10:111, 20:97])  # a box is that part of the whole


@pytest.mark.parametrize("matrix", [_AFFINE, _PROJECTIVE], ids=["affine", "projective"])
def test_resampling_samples_where_the_matrix_maps_each_pixel(matrix):
    from gpufocus.align import to_pixel_matrix

    height, width = 40, 50
    frame = torch.rand(1, 3, height, width, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    warped, valid = warp_frame(frame.float(), matrix)
    pixel = to_pixel_matrix(matrix, height, width)
    grid, inside = torch.empty(1, height, width, 2, dtype=torch.float64), torch.empty(height, width, dtype=torch.bool)
    for y in range(height):  # one pixel at a time, in float64
        for x in range(width):
            px, py, pw = (pixel @ torch.tensor([x, y, 1.0], dtype=torch.float64)).tolist()
            px, py = px / pw, py / pw
            grid[0, y, x] = torch.tensor([px / (width - 1) * 2 - 1, py / (height - 1) * 2 - 1])
            inside[y, x] = -0.5 < px < width - 0.5 and -0.5 < py < height - 0.5
    reference = torch.nn.functional.grid_sample(frame, grid, mode="bicubic", padding_mode="border", align_corners=True)
    torch.testing.assert_close(warped.double(), reference, atol=1e-4, rtol=0)
    assert torch.equal(valid[0, 0], inside)


def test_a_chunk_is_resampled_into_one_tensor_as_frame_by_frame():
    from gpufocus.align import FrameTransform, apply_transform, apply_transforms

    frames = torch.rand(3, 3, 301, 257, generator=torch.Generator().manual_seed(8))
    eye = torch.eye(3, dtype=torch.float64)
    transforms = [FrameTransform(eye), FrameTransform(_AFFINE, gain=torch.tensor([1.1, 1.0, 0.9])),
                  FrameTransform(_PROJECTIVE)]
    for box in (None, (10, 20, 101, 77)):
        aligned, valid = apply_transforms(frames, transforms, box)
        one_by_one = [apply_transform(f[None], t, box) for f, t in zip(frames, transforms)]
        assert torch.equal(aligned, torch.cat([a for a, _ in one_by_one]))
        assert torch.equal(valid, torch.cat([v for _, v in one_by_one]))
        motion_only, _ = apply_transforms(frames, transforms, box, exposure=False)
        assert torch.equal(motion_only[1:2], warp_frame(frames[1:2], _AFFINE, box)[0])
    # Nothing moves and no exposure changes: the frames themselves, not a copy.
    still, valid = apply_transforms(frames, [FrameTransform(eye)] * 3, (10, 20, 101, 77))
    assert valid is None and still.data_ptr() == frames[..., 10:, 20:].data_ptr() and still.shape[-2:] == (101, 77)


def test_exposure_block_means_are_average_pooling():
    from gpufocus.align import _low

    frames = torch.rand(2, 3, 200, 333, generator=torch.Generator().manual_seed(6))
    means, block = _low(frames)
    assert block == 4  # the largest block that leaves at least 32 blocks of twice its size
    torch.testing.assert_close(means, torch.nn.functional.avg_pool2d(frames, block))
    means, block = _low(torch.rand(1, 3, 1500, 2000))
    assert block == 32 and means.shape == (1, 3, 46, 62)


def test_two_identical_frames_are_no_motion_not_a_failure():
    import warnings

    frame = make_stack(96, 128, 2, seed=1).frames[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fuser = StackFuser(device="cpu")
        fused = fuser.run(torch.stack([frame, frame]))
    assert [str(w.message) for w in caught] == []
    assert fuser.transforms[1].fallback is None and torch.equal(fuser.transforms[1].matrix, torch.eye(3, dtype=torch.float64))
    assert torch.allclose(fused, frame, atol=1 / 255)


def test_transforms_read_back_from_their_json():
    """``transforms_to_json`` and ``transforms_from_json``: the same transforms, through text."""
    import json

    from gpufocus.align import FrameTransform, transforms_from_json, transforms_to_json
    from gpufocus.options import AlignOptions

    g = torch.Generator().manual_seed(4)
    matrices = torch.eye(3, dtype=torch.float64) + 0.01 * torch.randn(3, 3, 3, dtype=torch.float64, generator=g)
    transforms = [FrameTransform(matrices[0]), FrameTransform(matrices[1], torch.tensor([1.1, 0.9, 1.0], dtype=torch.float64)),
                  FrameTransform(matrices[2], fallback="no convergence; using no motion")]
    text = json.dumps(transforms_to_json(transforms, ["a", "b", "c"], 480, 640, AlignOptions()))
    back = transforms_from_json(json.loads(text), 480, 640)
    for read, made in zip(back, transforms):
        torch.testing.assert_close(read.matrix, made.matrix, rtol=1e-12, atol=1e-14)
        assert (read.gain is None) == (made.gain is None) and read.fallback == made.fallback
    assert torch.equal(back[1].gain, transforms[1].gain)
    with pytest.raises(ValueError, match="frames, not 480x640"):
        transforms_from_json(json.loads(text), 640, 480)
