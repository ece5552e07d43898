"""Alignment on the shared real stacks: does it remove the motion, and what does it cost.

    python bench/alignment.py [--shared ../shared] [--repeat 3]

1. Residual: for every pair of neighbouring frames, the mean absolute difference of
   their band-pass images (the features the aligner matches on, unit spread), over the
   pixels both frames cover; unaligned (the frames as read) against aligned (as
   `gpufocus align` writes them). Doubled edges show as a large residual.
2. Known motion: a generated stack (8 frames of 512x384, breathing 0.2 % a frame,
   shifts up to 1.5 px, rotations up to 0.3 degrees, noise): the largest error of the
   estimated similarity transforms at the image corners, and the PSNR of the fusion
   against the same fusion of the frames warped back with the true motion.
3. Time, on petteri_pcb (7 frames of 2048x1536): the `align` stage (estimating and
   warping, on top of reading) against the `fuse` stage of the same run, median of
   --repeat runs after a warm-up, this machine's CPU (and CUDA if present).
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import statistics
import warnings
from pathlib import Path

import torch

from gpufocus import FrameStack, align_stack, fuse
from gpufocus.align import StackAligner, _band_pass, _largest_move
from gpufocus.benchmark import machine_description
from gpufocus.color import luminance
from gpufocus.engine import to_float
from gpufocus.timing import StageTimer

HERE = Path(__file__).resolve().parent
STACKS = ["petteri_pcb", "mffw_01", "mffw_02", "mffw_03", "mffw_04", "mffw_05"]


def neighbour_residual(frames: list[torch.Tensor]) -> float:
    """Mean |band-pass difference| of neighbouring frames, over the pixels both cover."""
    features = [_band_pass(luminance(f[None].float())) for f in frames]
    differences = []
    for a, b, fa, fb in zip(features, features[1:], frames, frames[1:]):
        covered = (fa.abs().sum(0) > 0) & (fb.abs().sum(0) > 0)
        differences.append(((a - b).abs()[0, 0][covered]).mean().item())
    return statistics.mean(differences)


def residuals(shared: Path) -> None:
    print("| stack | frames | size | largest motion found (px) | unaligned | aligned | change |")
    print("|---|---|---|---|---|---|---|")
    for name in STACKS:
        stack = FrameStack(shared / "data" / "real" / name)
        device = torch.device("cpu")
        raw = [to_float(chunk, device, torch.float32)[0] for chunk in stack.chunks(1)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            aligner, frames = align_stack(stack, device="cpu")
            aligned = [frame for _, frame in frames]
        before, after = neighbour_residual(raw), neighbour_residual(aligned)
        height, width = stack.size
        motion = max(_largest_move(r.matrix, height, width) for r in aligner.results)
        print(
            f"| {name} | {len(stack)} | {width}x{height} | {motion:.2f} | {before:.3f} | {after:.3f} "
            f"| {after / before - 1:+.0%} |"
        )


def known_motion() -> None:
    import math

    from gpufocus.align import to_pixel_matrix, warp_frame
    from gpufocus.options import AlignOptions, FuseOptions
    from gpufocus.metrics import psnr
    from gpufocus.rules import make_rule
    from gpufocus.synth import make_stack

    height, width, s = 384, 512, 256
    stack = make_stack(height, width, 8, breathing=0.002, shift=1.5, rotation=0.3, max_blur=8.0, noise=1.0, seed=3)
    truths = []
    for info in stack.params["frame_info"]:
        m, a = info["magnification"], info["rotation_rad"]
        dy, dx = info["shift_yx_px"]
        truths.append(torch.tensor([[m * math.cos(a), m * math.sin(a), dx / s], [-m * math.sin(a), m * math.cos(a), dy / s],
                                    [0, 0, 1]], dtype=torch.float64))
    corners = torch.tensor([[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1], [width - 1, height - 1, 1]],
                           dtype=torch.float64).T
    errors = []
    for found, truth in zip(StackAligner(AlignOptions()).estimate(stack.frames, 0), truths):
        a, b = to_pixel_matrix(found, height, width) @ corners, to_pixel_matrix(truth, height, width) @ corners
        errors.append(float((a[:2] / a[2] - b[:2] / b[2]).norm(dim=0).max()))
    estimated = psnr(fuse(stack.frames, device="cpu", align=AlignOptions(match_exposure=False)), stack.ground_truth)
    oracle = [warp_frame(f[None], t) for f, t in zip(stack.frames, truths)]
    rule = make_rule(FuseOptions(), levels=6)
    rule.fold(torch.cat([w for w, _ in oracle]), torch.cat([v for _, v in oracle]))
    best = psnr(rule.result()[0].clamp(0, 1), stack.ground_truth)
    print("\n| largest corner error (px) | PSNR, estimated motion | PSNR, true motion |\n|---|---|---|")
    print(f"| {max(errors):.3f} | {estimated:.2f} | {best:.2f} |")


def timing(shared: Path, repeat: int) -> None:
    stack = FrameStack(shared / "data" / "real" / "petteri_pcb")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print("\n| device | frames | size | align s (median) | fuse s (median) | runs (align) |\n|---|---|---|---|---|---|")
    for device in devices:
        runs = []
        for attempt in range(repeat + 1):
            timer = StageTimer(device)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fuse(stack, device=device, timer=timer)
            if attempt:  # the first is a warm-up
                runs.append(dict(timer.seconds))
        align = statistics.median(r["align"] for r in runs)
        fused = statistics.median(r["fuse"] for r in runs)
        height, width = stack.size
        listed = " ".join(f"{r['align']:.2f}" for r in runs)
        print(f"| {device} | {len(stack)} | {width}x{height} | {align:.2f} | {fused:.2f} | {listed} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine_description()}\n")
    residuals(args.shared)
    known_motion()
    timing(args.shared, args.repeat)


if __name__ == "__main__":
    main()
