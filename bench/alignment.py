"""Alignment: no harm on stacks that do not move, the true motion on stacks that do, and its cost.

    python bench/alignment.py [quality] [blur-matching] [timing] [--shared ../shared] [--repeat 3]

quality (default with timing):
1. Registered pairs: every lytro_XX pair of <shared>/data/real fused with the defaults
   and with --no-align; are the results the same bytes, and what motion the defaults took.
2. Every synthetic stack of <shared>/data/synthetic: PSNR against its ground truth of the
   defaults, of the same fusion with the true motion of params.json (frames warped back
   bicubically), and without alignment; the error of the estimated transforms at the
   image corners (last frame, and largest); whether the result equals --no-align; the
   last frame's corner error with --global-align.
3. The real stacks: how many steps each took as motion, and the largest motion.
blur-matching (on request):
4. The breathing stacks of <shared>/data/synthetic and six held-out ones made by
   `gpufocus synth` (scenes: frames of the shared real stacks and procedural ones; smooth,
   object and plane depth; noise, JPEG): the corner error (last frame, largest) and the
   PSNR of the defaults, with the finest level estimated on the blur-matched pair (the
   defaults) and on the pair as it is.
timing:
5. `fuse()` of 10 frames of 2000x1500 in memory on the CPU, frames that do not move and
   frames that breathe 0.2 % a frame: the `align` and `fuse` stages (gpufocus.timing),
   median of --repeat runs after a warm-up, host allocator tuned as the command does.
   This part runs on older versions of gpufocus too (PYTHONPATH=... for "before").
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import warnings
from pathlib import Path

import torch

from gpufocus import fuse
from gpufocus.benchmark import bench_frames, machine_description
from gpufocus.synth import move_frames
from gpufocus.timing import StageTimer

HERE = Path(__file__).resolve().parent


def _quietly(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(*args, **kwargs)


def registered_pairs(shared: Path) -> None:
    from gpufocus import StackFuser, list_frames
    from gpufocus.align import largest_move

    print("| pair | defaults = --no-align | motion taken (px, corners) |\n|---|---|---|")
    for folder in sorted((shared / "data" / "real").glob("lytro_*")):
        frames = list_frames([folder])
        fuser = StackFuser(device="cpu")
        aligned = _quietly(fuser.run, frames)
        plain = _quietly(fuse, frames, device="cpu", align=False)
        size = aligned.shape[-2:]
        moved = max(largest_move(t.matrix, *size) for t in fuser.transforms)
        print(f"| {folder.name} | {'same bytes' if torch.equal(aligned, plain) else 'differs'} | {moved:.2f} |")


def synthetic(shared: Path) -> None:
    from gpufocus import FrameStack, StackFuser
    from gpufocus.align import corner_error, warp_frame
    from gpufocus.engine import to_float
    from gpufocus.load import read_image
    from gpufocus.metrics import border_crop, psnr
    from gpufocus.options import AlignOptions, FuseOptions
    from gpufocus.pyramid import auto_levels
    from gpufocus.rules import make_rule
    from gpufocus.synth import true_matrix

    print("\n| stack | frames | PSNR defaults | PSNR true motion | PSNR --no-align | corner error, last frame (px) "
          "| largest (px) | defaults = --no-align | --global-align: last frame (px) |\n|---|---|---|---|---|---|---|---|---|")
    for folder in sorted((shared / "data" / "synthetic").iterdir()):
        params = json.loads((folder / "params.json").read_text())
        stack = FrameStack([folder])
        height, width = stack.size
        truths = [true_matrix(info, height, width) for info in params["frame_info"]]
        truth = torch.from_numpy(read_image(folder / "ground_truth.png").astype("float32") / 255).permute(2, 0, 1)
        fuser = StackFuser(device="cpu")
        aligned = _quietly(fuser.run, stack)
        plain = _quietly(fuse, stack, device="cpu", align=False)
        rule = make_rule(FuseOptions(), auto_levels(height, width))
        for chunk, start in zip(stack.chunks(1), range(len(stack))):
            warped, valid = warp_frame(to_float(chunk, torch.device("cpu"), torch.float32), truths[start])
            rule.fold(warped, None if valid.all() else valid)
        oracle = rule.result()[0].clamp(0, 1)
        errors = [corner_error(t.matrix, m, height, width) for t, m in zip(fuser.transforms, truths)]
        refined = StackFuser(device="cpu", align=AlignOptions(global_align=True))
        _quietly(refined.run, stack)
        score = lambda image: psnr(border_crop(image), border_crop(truth))  # noqa: E731
        print(
            f"| {folder.name} | {len(stack)} | {score(aligned):.2f} | {score(oracle):.2f} | {score(plain):.2f} "
            f"| {errors[-1]:.3f} | {max(errors):.3f} | {'yes' if torch.equal(aligned, plain) else 'no'} "
            f"| {corner_error(refined.transforms[-1].matrix, truths[-1], height, width):.3f} |"
        )


def real_stacks(shared: Path) -> None:
    from gpufocus import FrameStack, StackFuser
    from gpufocus.align import largest_move

    print("\n| stack | frames | steps taken as motion | largest motion (px, corners) | warnings |\n|---|---|---|---|---|")
    for folder in sorted((shared / "data" / "real").iterdir()):
        if not folder.is_dir() or folder.name.startswith("lytro"):
            continue
        stack = FrameStack([folder])
        fuser = StackFuser(device="cpu")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fuser.run(stack)
        height, width = stack.size
        chain = [t.matrix for t in fuser.transforms]
        steps = [b @ torch.linalg.inv(a) for a, b in zip(chain, chain[1:])]
        taken = sum(largest_move(step, height, width) > 1e-6 for step in steps)
        moved = max(largest_move(m, height, width) for m in chain)
        print(f"| {folder.name} | {len(stack)} | {taken} of {len(steps)} | {moved:.2f} | {len(caught)} |")


# Held-out breathing stacks for the blur matching's ablation: name -> arguments of
# `gpufocus synth` (made by bench/halo.py's held_out).
HELD_OUT = {
    "b1_pcb_smooth": ["--image", "real:petteri_pcb/pcb_004.jpg", "--family", "smooth", "--frames", "12",
                      "--max-blur", "14", "--noise", "2", "--breathing", "0.002", "--shift", "0.3", "--format", "jpg",
                      "--seed", "11"],
    "b2_mffw_objects": ["--image", "real:mffw_02/mffw_02_A.jpg", "--family", "objects", "--frames", "16",
                        "--max-blur", "20", "--noise", "2", "--breathing", "0.002", "--shift", "0.3", "--format", "jpg",
                        "--seed", "12"],
    "b3_procedural_smooth": ["--family", "smooth", "--frames", "20", "--max-blur", "12", "--noise", "2",
                             "--breathing", "0.002", "--shift", "0.3", "--format", "jpg", "--seed", "13"],
    "b4_fly_plane": ["--image", "real:bznick_test7/hf001.jpg", "--family", "plane", "--frames", "10", "--max-blur",
                     "12", "--noise", "1", "--breathing", "0.003", "--shift", "0.5", "--seed", "14"],
    "b5_bug_smooth": ["--image", "real:photomontage_bug/b_bigbug0000_croppped.png", "--family", "smooth", "--frames", "14",
                      "--max-blur", "16", "--noise", "2", "--breathing", "0.002", "--shift", "0.3", "--format", "jpg",
                      "--seed", "15"],
    "b6_mffw_objects": ["--image", "real:mffw_04/mffw_04_A.jpg", "--family", "objects", "--frames", "12",
                        "--max-blur", "12", "--noise", "1", "--breathing", "0.002", "--shift", "0.3", "--seed", "16"],
}


def blur_matching(shared: Path) -> None:
    """The shared breathing stacks and HELD_OUT, with the finest level estimated on the
    blur-matched pair (the defaults) and on the pair as it is."""
    import tempfile

    import gpufocus.align as align
    from gpufocus import FrameStack, StackFuser, read_image
    from gpufocus.align import corner_error
    from gpufocus.metrics import as_unit_float, border_crop, psnr
    from gpufocus.synth import true_matrix
    from halo import held_out

    matched = align._match_blur
    print("\n| stack | corner error, last / largest (px): matched | as they are | PSNR matched | as they are |"
          "\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as root:
        folders = [f for f in sorted((shared / "data" / "synthetic").iterdir())
                   if json.loads((f / "params.json").read_text()).get("breathing")]
        for folder in folders + held_out(shared, Path(root), HELD_OUT):
            params = json.loads((folder / "params.json").read_text())
            stack = FrameStack([folder])
            height, width = stack.size
            truths = [true_matrix(info, height, width) for info in params["frame_info"]]
            truth = as_unit_float(read_image(folder / "ground_truth.png")).float()
            errors, scores = [], []
            for estimate_on in (matched, lambda template, image, *rest: (template, image)):
                align._match_blur = estimate_on
                fuser = StackFuser(device="cpu")
                fused = _quietly(fuser.run, stack)
                corners = [corner_error(t.matrix, m, height, width) for t, m in zip(fuser.transforms, truths)]
                errors.append(f"{corners[-1]:.3f} / {max(corners):.3f}")
                scores.append(f"{psnr(border_crop(fused), border_crop(truth)):.2f}")
            align._match_blur = matched
            print(f"| {folder.name} ({width}x{height}, {len(stack)}) | {errors[0]} | {errors[1]} | {scores[0]} "
                  f"| {scores[1]} |")


def timing(repeat: int) -> None:
    try:  # as the command does (gpufocus from issue 10 on; before, the library did it itself)
        from gpufocus.allocator import tune_host_allocator

        tune_host_allocator()
    except ImportError:
        pass
    still = bench_frames(1500, 2000, 10)
    steps = torch.tensor([1.002**i for i in range(10)])
    breathing = move_frames(still.float() / 255, steps, torch.zeros(10, 2)).mul(255).round().to(torch.uint8)
    print("\n| frames | align s | fuse s | align / fuse | runs (align) |\n|---|---|---|---|---|")
    for name, frames in (("10 x 2000x1500, still", still), ("10 x 2000x1500, breathing 0.2 %", breathing)):
        runs = []
        for attempt in range(repeat + 1):
            timer = StageTimer("cpu")
            _quietly(fuse, frames, device="cpu", timer=timer)
            if attempt:  # the first is a warm-up
                runs.append(dict(timer.seconds))
        align = statistics.median(r["align"] for r in runs)
        fused = statistics.median(r["fuse"] for r in runs)
        listed = " ".join(f"{r['align']:.2f}" for r in runs)
        print(f"| {name} | {align:.2f} | {fused:.2f} | {align / fused:.2f} | {listed} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", help="quality, blur-matching, timing (default: quality and timing)")
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    args.parts = args.parts or ["quality", "timing"]
    if set(args.parts) - {"quality", "blur-matching", "timing"}:
        parser.error(f"unknown parts: {' '.join(args.parts)}")
    print(f"machine: {machine_description()}\n")
    if "quality" in args.parts:
        registered_pairs(args.shared)
        synthetic(args.shared)
        real_stacks(args.shared)
    if "blur-matching" in args.parts:
        blur_matching(args.shared)
    if "timing" in args.parts:
        timing(args.repeat)


if __name__ == "__main__":
    main()
