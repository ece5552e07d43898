"""Depth-map accuracy on the shared synthetic stacks, in frames.

    python bench/depth.py [--shared ../shared] [--threshold T] [--smooth R]

For each stack in ``shared/data/synthetic``: the default fusion with ``--depth-map``
(alignment on); its depth map rounded to whole frames against ``focus_index.png``
(the sharpest frame per pixel), over the image and within 8 px of depth steps (on
stacks that have steps); and as it is against the continuous truth from
``depth.png`` and ``params.json`` (the frame index at which each pixel is in focus,
between frames). Mean absolute errors, in frames.
``--threshold`` and ``--smooth`` replace the defaults of ``depth_threshold`` and
``depth_smooth``. Without them only the public API is used, so the script measures an
older checkout too (``PYTHONPATH=that/checkout python bench/depth.py``).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from halo import edge_band

from gpufocus import StackFuser, read_image
from gpufocus.benchmark import machine_description

HERE = Path(__file__).resolve().parent


def true_frames(folder: Path) -> np.ndarray:
    """The continuous frame index at which each pixel is in focus (``params.json``'s model:
    focus is linear in normalised inverse depth, frame i at t = i / (frames - 1))."""
    params = json.loads((folder / "params.json").read_text())
    near, far, frames = params["near"], params["far"], params["frames"]
    depth = near + read_image(folder / "depth.png")[..., 0].astype(np.float64) / 65535 * (far - near)
    t = (1 / near - 1 / depth) / (1 / near - 1 / far)
    return t * (frames - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared")
    parser.add_argument("--threshold", type=float, help="depth_threshold (default: the library's)")
    parser.add_argument("--smooth", type=int, help="depth_smooth (default: the library's)")
    args = parser.parse_args()
    settings = {name: value for name, value in (("depth_threshold", args.threshold), ("depth_smooth", args.smooth))
                if value is not None}
    print(f"machine: {machine_description()}\n")
    print("| stack | frames | rounded vs focus_index | within 8 px of steps | vs continuous truth | seconds |")
    print("|---|---|---|---|---|---|")
    totals = []
    for folder in sorted((args.shared / "data" / "synthetic").iterdir()):
        index = read_image(folder / "focus_index.png")[..., 0].astype(np.float64)
        truth = true_frames(folder)
        band = edge_band(torch.from_numpy(truth)[None]).numpy()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fuser = StackFuser(device="cpu", depth_map=True, **settings)
            fuser.run(folder)
        depth = fuser.depth_map().numpy().astype(np.float64)
        seconds = time.perf_counter() - start
        h, w = min(depth.shape[0], index.shape[0]), min(depth.shape[1], index.shape[1])
        error = np.abs(np.round(depth[:h, :w]) - index[:h, :w])
        continuous = np.abs(depth[:h, :w] - truth[:h, :w])
        band = band[:h, :w] if band.mean() < 0.5 else None  # smooth depth: every pixel is "near a step"
        row = (error.mean(), np.nan if band is None else error[band].mean(), continuous.mean())
        totals.append(row)
        steps = "-" if band is None else f"{row[1]:.3f}"
        print(f"| {folder.name} | {len(fuser.transforms)} | {row[0]:.3f} | {steps} | {row[2]:.3f} | {seconds:.1f} |")
    mean = np.nanmean(totals, axis=0)
    print(f"| mean | | {mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.3f} | |")


if __name__ == "__main__":
    main()
