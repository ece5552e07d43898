"""Alignment: no harm on stacks that do not move, the true motion on stacks that do, and its cost.

    python bench/alignment.py [quality] [blur-matching] [lytro-crops] [timing] [breakdown] [--shared ../shared]
        [--repeat 3] [--chunk N]

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
   Then every real stack: how much the matching changes the motion and the result, and
   Q^AB/F and the average gradient with and without it.
lytro-crops (on request):
5. Each Lytro pair: the whole frame's motion, and translations estimated on 3 x 3 crops
   of 200 pixels (how far they move, and how far from the whole frame's motion).
timing:
6. `fuse()` of 10 frames of 2000x1500 in memory on the CPU, frames that do not move and
   frames that breathe 0.2 % a frame: the `align` and `fuse` stages (gpufocus.timing),
   median of --repeat runs after a warm-up, host allocator tuned as the command does;
   frames folded in --chunk at a time (default: the engine's choice, 4 here).
   This part runs on older versions of gpufocus too (PYTHONPATH=... for "before").
breakdown (on request):
7. The same two stacks: wall time inside each part of gpufocus.align, per frame.
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


def _matched_then_not():
    """Run a loop's body twice: the finest level estimated on the blur-matched pair (the
    defaults), then on the pair as it is."""
    import gpufocus.align as align

    matched = align._match_blur
    try:
        for estimate_on in (matched, lambda *pair: (None, None, None)):
            align._match_blur = estimate_on
            yield
    finally:
        align._match_blur = matched


def blur_matching(shared: Path) -> None:
    """The shared breathing stacks and HELD_OUT, with the finest level estimated on the
    blur-matched pair (the defaults) and on the pair as it is."""
    import tempfile

    from gpufocus import FrameStack, StackFuser, read_image
    from gpufocus.align import corner_error
    from gpufocus.metrics import QabfAccumulator, as_unit_float, average_gradient, border_crop, psnr
    from gpufocus.synth import true_matrix
    from halo import held_out

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
            for _ in _matched_then_not():
                fuser = StackFuser(device="cpu")
                fused = _quietly(fuser.run, stack)
                corners = [corner_error(t.matrix, m, height, width) for t, m in zip(fuser.transforms, truths)]
                errors.append(f"{corners[-1]:.3f} / {max(corners):.3f}")
                scores.append(f"{psnr(border_crop(fused), border_crop(truth)):.2f}")
            print(f"| {folder.name} ({width}x{height}, {len(stack)}) | {errors[0]} | {errors[1]} | {scores[0]} "
                  f"| {scores[1]} |")

    print("\n| real stack | largest change of motion (px, corners) | pixels changed | Q^AB/F matched | as they are "
          "| AG matched | as they are |\n|---|---|---|---|---|---|---|")
    for folder in sorted(p for p in (shared / "data" / "real").iterdir() if p.is_dir()):
        stack = FrameStack([folder])
        height, width = stack.size
        fused, motion = [], []
        for _ in _matched_then_not():
            fuser = StackFuser(device="cpu")
            fused.append((_quietly(fuser.run, stack) * 255).round() / 255)  # as written to an 8-bit file
            motion.append([t.matrix for t in fuser.transforms])
        moved = max(corner_error(a, b, height, width) for a, b in zip(*motion))
        changed = (fused[0] != fused[1]).any(0).float().mean().item()
        scores = [QabfAccumulator(border_crop(image)) for image in fused]
        for chunk in stack.chunks(1):  # one frame in memory at a time
            source = border_crop(as_unit_float(chunk[0, ..., : stack.channels]))
            for score in scores:
                score.add(source)
        q = [score.value() for score in scores]
        g = [average_gradient(image) for image in fused]
        print(f"| {folder.name} | {moved:.3f} | {changed:.3%} | {q[0]:.6f} | {q[1]:.6f} | {g[0]:.5f} | {g[1]:.5f} |",
              flush=True)


def lytro_crops(shared: Path, size: int = 200) -> None:
    """Each Lytro pair's motion as the defaults estimate it (similarity, whole frame), and
    a translation estimated on each of 3 x 3 crops of ``size`` pixels: how far each crop
    moves, and how far that is from what the whole frame's motion predicts there."""
    import gpufocus.align as align
    from gpufocus import FrameStack
    from gpufocus.engine import to_float

    print("\n| pair | whole frame: largest move (px, corners) | crops: shifts (px) | crops against the whole frame's "
          "motion, RMS (px) |\n|---|---|---|---|")
    for folder in sorted((shared / "data" / "real").glob("lytro_*")):
        stack = FrameStack([folder])
        frames = torch.cat([to_float(chunk, torch.device("cpu"), torch.float32) for chunk in stack.chunks(1)])
        height, width = frames.shape[-2:]
        features = align._features(frames, 1024)
        whole = align._estimate(features.pick(slice(0, 1)), features.pick(slice(1, 2)), "similarity")[0]
        pixel = align.to_pixel_matrix(whole, height, width)
        shifts, misses = [], []
        for top in range(0, height - size + 1, (height - size) // 2):
            for left in range(0, width - size + 1, (width - size) // 2):
                crop = align._features(frames[..., top : top + size, left : left + size], 1024)
                local = align._estimate(crop.pick(slice(0, 1)), crop.pick(slice(1, 2)), "translation")[0]
                shift = align.to_pixel_matrix(local, size, size)[:2, 2]
                centre = torch.tensor([left + (size - 1) / 2, top + (size - 1) / 2, 1.0], dtype=torch.float64)
                shifts.append(float(shift.norm()))
                misses.append(float(((pixel @ centre)[:2] - centre[:2] - shift).norm()))
        rms = (sum(m * m for m in misses) / len(misses)) ** 0.5
        print(f"| {folder.name} | {align.largest_move(whole, height, width):.2f} | {min(shifts):.2f}-{max(shifts):.2f} "
              f"| {rms:.2f} |")


def _timing_stacks() -> tuple[tuple[str, torch.Tensor], ...]:
    """10 frames of 2000x1500 that do not move, and the same magnified 0.2 % a frame."""
    still = bench_frames(1500, 2000, 10)
    steps = torch.tensor([1.002**i for i in range(10)])
    breathing = move_frames(still.float() / 255, steps, torch.zeros(10, 2)).mul(255).round().to(torch.uint8)
    return ("still", still), ("breathing 0.2 %", breathing)


def timing(repeat: int, chunk: int | None = None) -> None:
    try:  # as the command does (gpufocus from issue 10 on; before, the library did it itself)
        from gpufocus.allocator import tune_host_allocator

        tune_host_allocator()
    except ImportError:
        pass
    print("\n| frames | align s | fuse s | align / fuse | runs (align) |\n|---|---|---|---|---|")
    for name, frames in _timing_stacks():
        runs = []
        for attempt in range(repeat + 1):
            timer = StageTimer("cpu")
            _quietly(fuse, frames, device="cpu", timer=timer, chunk=chunk)
            if attempt:  # the first is a warm-up
                runs.append(dict(timer.seconds))
        align = statistics.median(r["align"] for r in runs)
        fused = statistics.median(r["fuse"] for r in runs)
        listed = " ".join(f"{r['align']:.2f}" for r in runs)
        print(f"| 10 x 2000x1500, {name} | {align:.2f} | {fused:.2f} | {align / fused:.2f} | {listed} |")


def breakdown(repeat: int) -> None:
    """Where the align stage's time goes: wall time inside each of gpufocus.align's parts
    (the blur matching is inside the estimation), per frame, median of ``repeat`` runs."""
    import time

    import gpufocus.align as align
    from gpufocus.allocator import tune_host_allocator

    tune_host_allocator()
    parts = ("_features", "_band_pass", "_blurs", "_estimate", "_match_blur", "_check", "_low", "warp_frame")
    spent = dict.fromkeys(parts, 0.0)

    def timed(name, call):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - start
        return wrapper

    originals = {name: getattr(align, name) for name in parts}
    for name, call in originals.items():
        setattr(align, name, timed(name, call))
    columns = {}
    try:
        for name, frames in _timing_stacks():
            runs = []
            for attempt in range(repeat + 1):
                spent.update(dict.fromkeys(parts, 0.0))
                _quietly(fuse, frames, device="cpu")
                if attempt:  # the first is a warm-up
                    runs.append(dict(spent))
            columns[name] = {part: statistics.median(r[part] for r in runs) * 1000 / len(frames) for part in parts}
    finally:
        for name, call in originals.items():
            setattr(align, name, call)
    print("\n| part of the align stage, 10 x 2000x1500 | " + " | ".join(f"{n}: ms a frame" for n in columns)
          + " |\n|---|" + "---|" * len(columns))
    for part in parts:
        print(f"| {part} | " + " | ".join(f"{columns[n][part]:.1f}" for n in columns) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*",
                        help="quality, blur-matching, lytro-crops, timing, breakdown (default: quality and timing)")
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=None, help="timing: frames folded in at once")
    args = parser.parse_args()
    args.parts = args.parts or ["quality", "timing"]
    if set(args.parts) - {"quality", "blur-matching", "lytro-crops", "timing", "breakdown"}:
        parser.error(f"unknown parts: {' '.join(args.parts)}")
    print(f"machine: {machine_description()}\n")
    if "quality" in args.parts:
        registered_pairs(args.shared)
        synthetic(args.shared)
        real_stacks(args.shared)
    if "blur-matching" in args.parts:
        blur_matching(args.shared)
    if "lytro-crops" in args.parts:
        lytro_crops(args.shared)
    if "timing" in args.parts:
        timing(args.repeat, args.chunk)
    if "breakdown" in args.parts:
        breakdown(args.repeat)


if __name__ == "__main__":
    main()
