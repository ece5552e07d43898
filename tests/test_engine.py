import numpy as np
import pytest
import torch

from gpufocus import GpufocusError, StackFuser, fuse
from gpufocus.device import fusion_chunk
from gpufocus.metrics import psnr
from gpufocus.synth import make_stack


@pytest.fixture(scope="module")
def synthetic():
    return make_stack(height=96, width=128, frames=5, max_blur=6.0, seed=2)


@pytest.mark.parametrize("method", ["max-energy", "wang-chang", "max-log"])
def test_result_does_not_depend_on_chunk_size(method, synthetic):
    results = [fuse(synthetic.frames, method=method, device="cpu", chunk=chunk) for chunk in (1, 2, 3, 5)]
    for other in results[1:]:
        assert torch.equal(results[0], other)  # bit for bit on the CPU


def test_a_chunk_is_aligned_at_once_and_fused_in_parts(monkeypatch):
    import gpufocus.align
    import gpufocus.pyramid

    moving = make_stack(96, 128, 6, breathing=0.005, shift=1.0, max_blur=4.0, seed=12)
    expected = fuse(moving.frames, device="cpu", chunk=1, consistency=1)  # a second pass, too
    aligned, fused = [], []
    transforms, pyramid = gpufocus.align.StackAligner.transforms, gpufocus.pyramid.build_gaussian_pyramid
    monkeypatch.setattr(gpufocus.align.StackAligner, "transforms",
                        lambda self, frames, *a: aligned.append(len(frames)) or transforms(self, frames, *a))
    monkeypatch.setattr(gpufocus.pyramid, "build_gaussian_pyramid",
                        lambda frames, levels: fused.append(len(frames)) or pyramid(frames, levels))
    assert torch.equal(fuse(moving.frames, device="cpu", chunk=4, consistency=1), expected)
    part = fusion_chunk(torch.device("cpu"), 4)
    assert aligned == [4, 2] * 2  # each pass: the motion of a whole chunk at once
    assert fused and max(fused) == part < 4


def test_chunk_invariance_on_the_device(synthetic, device):
    a = fuse(synthetic.frames, device=device, chunk=1)
    b = fuse(synthetic.frames, device=device, chunk=4)
    assert (a - b).abs().max().item() <= 1e-5


def test_quality_on_a_stack_with_known_ground_truth(synthetic, device):
    fused = fuse(synthetic.frames, device=device)
    best_frame = max(psnr(frame, synthetic.ground_truth) for frame in synthetic.frames)
    mean = psnr(synthetic.frames.mean(0), synthetic.ground_truth)
    score = psnr(fused, synthetic.ground_truth)
    assert score >= 30.0
    assert score > best_frame + 4 and score > mean + 4


def test_streaming_api_equals_fuse(synthetic):
    fuser = StackFuser(device="cpu")
    for frame in synthetic.frames:  # one (C, H, W) frame at a time
        fuser.add(frame)
    assert fuser.count == 5
    assert torch.equal(fuser.result().cpu(), fuse(synthetic.frames, device="cpu"))


def test_integer_frames_are_scaled(synthetic):
    as_float = (synthetic.frames * 255).round() / 255
    as_uint8 = (synthetic.frames * 255).round().to(torch.uint8)
    as_uint16 = as_uint8.to(torch.int32).mul(257).to(torch.uint16)
    reference = fuse(as_float, device="cpu")
    assert torch.allclose(fuse(as_uint8, device="cpu"), reference, atol=1e-6)
    assert torch.allclose(fuse(as_uint16, device="cpu"), reference, atol=1e-6)


def test_numpy_frames_as_decoded(synthetic):
    frames = (synthetic.frames.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    fuser = StackFuser(device="cpu")
    fuser.add(frames)
    expected = fuse(torch.from_numpy(frames).permute(0, 3, 1, 2), device="cpu")
    assert torch.equal(fuser.result().cpu(), expected)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_stays_close(dtype, synthetic):
    full = fuse(synthetic.frames, device="cpu")
    half = fuse(synthetic.frames, device="cpu", dtype=dtype)
    assert half.dtype == torch.float32
    assert psnr(half, full) > 30


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_sixteen_bit_highlights_survive_half_precision(dtype, synthetic):
    """Samples above float16's largest number (65504) are scaled before they are rounded
    to half precision: converted first, they became infinite and fused to black."""
    from gpufocus.engine import to_float

    every = torch.arange(65536, dtype=torch.int32).to(torch.uint16).view(1, 1, 256, 256)
    scaled = to_float(every, torch.device("cpu"), getattr(torch, dtype))
    exact = every.double() / 65535
    assert torch.isfinite(scaled).all() and scaled.max() == 1
    if dtype == "float32":  # rounded once, from the exact quotient
        assert torch.equal(scaled, exact.float())
    bright = (synthetic.frames * 0.02 + 0.98) * 65535  # every sample above 64224
    fused = fuse(bright.round().to(torch.int32).to(torch.uint16), device="cpu", dtype=dtype)
    assert fused.min() > 0.97 and psnr(fused, fuse(bright / 65535, device="cpu")) > 45


def test_result_is_in_range_and_shaped(synthetic):
    fused = fuse(synthetic.frames, device="cpu", levels=2, kernel_size=3)
    assert fused.shape == (3, 96, 128) and fused.min() >= 0 and fused.max() <= 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "median"}, "method='median': use one of max-energy, wang-chang, max-log"),
        ({"kernel_size": 4}, "kernel_size=4: must be odd, from 1 to 15"),
        ({"levels": 0}, "levels=0: must be at least 1"),
        ({"levels": 9}, "levels=9: too deep for 128x96 frames"),
        ({"chunk": 0}, "chunk=0: must be at least 1"),
        ({"dtype": "float64"}, "dtype='float64': use one of float32"),
        ({"device": "tpu"}, "device='tpu': use auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_settings(kwargs, message, synthetic):
    with pytest.raises(GpufocusError, match=message):
        fuse(synthetic.frames, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_cuda_requested_without_cuda(synthetic):
    with pytest.raises(GpufocusError, match="CUDA is not available"):
        fuse(synthetic.frames, device="cuda")


def test_stack_errors():
    fuser = StackFuser(device="cpu", align=False)
    fuser.add(torch.rand(1, 3, 16, 16))
    with pytest.raises(GpufocusError, match="at least 2 frames"):
        fuser.result()
    with pytest.raises(GpufocusError, match="differs from the first frame"):
        fuser.add(torch.rand(1, 3, 16, 17))
    with pytest.raises(GpufocusError, match="too small"):
        fuse(torch.rand(2, 3, 6, 6))


@pytest.mark.parametrize("align", [False, True])
def test_running_out_of_memory_retries_with_smaller_chunks(monkeypatch, align):
    import gpufocus.pyramid

    moving = make_stack(96, 128, 6, breathing=0.005, shift=1.0, max_blur=4.0, seed=12)
    expected = fuse(moving.frames, device="cpu", chunk=1, align=align)
    real = gpufocus.pyramid.build_gaussian_pyramid
    calls = []

    def scarce(frames, levels):  # as if only one frame fits
        calls.append(len(frames))
        if len(frames) > 1:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(frames, levels)

    monkeypatch.setattr(gpufocus.pyramid, "build_gaussian_pyramid", scarce)
    assert torch.equal(fuse(moving.frames, device="cpu", chunk=4, align=align), expected)
    first = fusion_chunk(torch.device("cpu"), 4)  # a chunk of 4 is fused in parts of this many on the CPU
    assert calls[0] == first > 1 and 1 in calls


def test_out_of_memory_with_one_frame_is_a_clear_error(monkeypatch):
    import gpufocus.pyramid

    def none_fits(frames, levels):
        raise torch.cuda.OutOfMemoryError("simulated")

    monkeypatch.setattr(gpufocus.pyramid, "build_gaussian_pyramid", none_fits)
    with pytest.raises(GpufocusError, match="out of GPU memory with a single frame"):
        fuse(torch.rand(2, 3, 32, 32), device="cpu", chunk=2, align=False)


def test_progress_names_each_pass_and_counts_its_frames():
    from gpufocus import AlignOptions
    from gpufocus.synth import make_stack

    frames = make_stack(48, 64, 5, max_blur=3.0, seed=8).frames
    calls = []
    fuse(frames, device="cpu", chunk=2, consistency=1, align=AlignOptions(reference=2),
         progress=lambda done, total, stage: calls.append((stage, done, total)))
    assert calls == [(stage, done, 5) for stage in ("estimating motion", "fusing", "halo control") for done in (2, 4, 5)]


@pytest.mark.parametrize("tile", [None, 0])
def test_running_out_of_host_memory_is_one_line_that_says_what_to_try(monkeypatch, tile):
    import gpufocus.pyramid

    def scarce(frames, levels):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 2028000000 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(gpufocus.pyramid, "build_gaussian_pyramid", scarce)
    with pytest.raises(GpufocusError) as caught:
        fuse(torch.rand(4, 3, 32, 32), device="cpu", chunk=2, align=False, tile=tile)
    message = str(caught.value)
    assert message.startswith("out of host memory while fusing (an allocation of 1.89 GiB failed); try a smaller "
                              "--memory-budget")
    assert ("tiling is off" in message) == (tile == 0) and "--chunk 2" in message and "\n" not in message
