"""Halos: the halo guard (on by default) and --consistency near depth edges.

    python bench/halo.py [synthetic] [heldout] [real] [timing] [--shared ../shared] [--repeat 3]

synthetic: every stack of <shared>/data/synthetic, fused with the defaults with the
    halo guard off and on (alignment on), and the object stacks with --consistency 1
    and 2 as well: PSNR against the ground truth over the image (less a 2 % border, as
    score.py) and within 8 px of a depth edge, where halos live.
heldout: the same on six stacks the guard's thresholds were not chosen on, made here
    by `gpufocus synth` (procedural scenes and two real frames as scenes; objects,
    smooth and plane depth; noise, JPEG, breathing).
real: every stack of <shared>/data/real with the guard off and on: the share of
    pixels of the 8-bit result that change, Q^AB/F and the average gradient.
timing: the guard's cost, the `fuse` stage of `fuse()` of 10 frames of 2000x1500 in
    memory on the CPU (no alignment), off and on, median of --repeat runs after a warm-up.
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from gpufocus import FrameStack, fuse, list_frames, read_image
from gpufocus.benchmark import bench_frames, machine_description
from gpufocus.metrics import QabfAccumulator, as_unit_float, average_gradient, border_crop, psnr

HERE = Path(__file__).resolve().parent
OBJECT_STACKS = ("syn_astronaut_object_512", "syn_mosaic_object_2048x1536")
# name -> arguments of `gpufocus synth` (a scene of "real:<stack>/<file>" is read from the shared data)
HELD_OUT = {
    "h1_procedural_objects": ["--family", "objects", "--frames", "8", "--max-blur", "10", "--seed", "1"],
    "h2_procedural_objects_noisy": ["--family", "objects", "--size", "800x600", "--frames", "12", "--max-blur", "14",
                                    "--noise", "2", "--format", "jpg", "--seed", "2"],
    "h3_pcb_objects": ["--image", "real:petteri_pcb/pcb_004.jpg", "--family", "objects", "--frames", "10",
                       "--max-blur", "12", "--noise", "1", "--seed", "3"],
    "h4_procedural_smooth_breathing": ["--family", "smooth", "--frames", "20", "--max-blur", "12", "--noise", "2",
                                       "--breathing", "0.002", "--format", "jpg", "--seed", "4"],
    "h5_procedural_plane": ["--family", "plane", "--frames", "5", "--max-blur", "12", "--noise", "1.5",
                            "--format", "jpg", "--seed", "5"],
    "h6_mffw_objects_breathing": ["--image", "real:mffw_02/mffw_02_A.jpg", "--family", "objects", "--frames", "16",
                                  "--max-blur", "20", "--noise", "2", "--breathing", "0.002", "--format", "jpg",
                                  "--seed", "6"],
}


def edge_band(depth: torch.Tensor, reach: int = 8) -> torch.Tensor:
    """Pixels within ``reach`` of a step in the depth map."""
    d = depth[0:1][None]
    step = (d[..., 1:, :] - d[..., :-1, :]).abs().amax() * 0.05
    edges = torch.zeros_like(d, dtype=torch.bool)
    edges[..., 1:, :] |= (d[..., 1:, :] - d[..., :-1, :]).abs() > step
    edges[..., :, 1:] |= (d[..., :, 1:] - d[..., :, :-1]).abs() > step
    return F.max_pool2d(edges.float(), 2 * reach + 1, 1, reach)[0, 0] > 0


def _fused(frames, **settings) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = fuse(frames, device="cpu", **settings)
    return (image * 255).round() / 255  # as written to an 8-bit file


def against_truth(folders: list[Path], consistency_for: tuple[str, ...] = ()) -> None:
    print("| stack | settings | PSNR (image) | PSNR (within 8 px of depth edges) | edge pixels |")
    print("|---|---|---|---|---|")
    for folder in folders:
        truth = as_unit_float(read_image(folder / "ground_truth.png")).float()
        band = edge_band(as_unit_float(read_image(folder / "depth.png")).float())
        runs = [("--no-halo-guard", {"halo_guard": False}), ("defaults (halo guard)", {})]
        if folder.name in consistency_for:
            runs += [(f"--consistency {c}", {"consistency": c}) for c in (1, 2)]
        for label, settings in runs:
            image = _fused(list_frames([folder]), **settings)
            whole = psnr(border_crop(image), border_crop(truth))
            near = psnr(image[:, band], truth[:, band])
            print(f"| {folder.name} | {label} | {whole:.3f} | {near:.3f} | {int(band.sum())} |", flush=True)


def held_out(shared: Path, root: Path, stacks: dict[str, list[str]] = HELD_OUT) -> list[Path]:
    """``stacks`` made by `gpufocus synth` in ``root``; "real:<stack>/<file>" is a frame of
    the shared data, used as the scene."""
    folders = []
    for name, arguments in stacks.items():
        arguments = [str(shared / "data" / "real" / a[5:]) if a.startswith("real:") else a for a in arguments]
        subprocess.run([sys.executable, "-m", "gpufocus", "synth", str(root / name), *arguments], check=True,
                       capture_output=True)
        folders.append(root / name)
    return folders


def real(shared: Path) -> None:
    print("| stack | frames | pixels changed | Q^AB/F off | Q^AB/F on | AG off | AG on |")
    print("|---|---|---|---|---|---|---|")
    for folder in sorted(p for p in (shared / "data" / "real").iterdir() if p.is_dir()):
        stack = FrameStack([folder])
        off = _fused(stack, halo_guard=False)
        on = _fused(stack)
        changed = (off != on).any(0).float().mean().item()
        scores = [QabfAccumulator(border_crop(image)) for image in (off, on)]
        for chunk in stack.chunks(1):  # one frame in memory at a time
            source = border_crop(as_unit_float(chunk[0, ..., : stack.channels]))
            for score in scores:
                score.add(source)
        q = [score.value() for score in scores]
        g = [average_gradient(image) for image in (off, on)]
        print(f"| {folder.name} | {len(stack)} | {changed:.3%} | {q[0]:.6f} | {q[1]:.6f} | {g[0]:.5f} | {g[1]:.5f} |",
              flush=True)


def timing(repeat: int) -> None:
    from gpufocus.allocator import tune_host_allocator
    from gpufocus.timing import StageTimer

    tune_host_allocator()  # as the command does
    frames = bench_frames(1500, 2000, 10)
    print("| frames | halo guard | fuse s | runs |\n|---|---|---|---|")
    for guard in (False, True):
        runs = []
        for attempt in range(repeat + 1):
            timer = StageTimer("cpu")
            fuse(frames, device="cpu", align=False, halo_guard=guard, timer=timer)
            if attempt:  # the first is a warm-up
                runs.append(timer.seconds["fuse"])
        listed = " ".join(f"{r:.3f}" for r in runs)
        print(f"| 10 x 2000x1500 | {'on' if guard else 'off'} | {statistics.median(runs):.3f} | {listed} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", help="synthetic, heldout, real, timing (default: all)")
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    args.parts = args.parts or ["synthetic", "heldout", "real", "timing"]
    if set(args.parts) - {"synthetic", "heldout", "real", "timing"}:
        parser.error(f"unknown parts: {' '.join(args.parts)}")
    print(f"machine: {machine_description()}\n")
    if "synthetic" in args.parts:
        against_truth(sorted((args.shared / "data" / "synthetic").iterdir()), OBJECT_STACKS)
        print()
    if "heldout" in args.parts:
        with tempfile.TemporaryDirectory() as root:
            against_truth(held_out(args.shared, Path(root)))
        print()
    if "real" in args.parts:
        real(args.shared)
        print()
    if "timing" in args.parts:
        timing(args.repeat)


if __name__ == "__main__":
    main()
