"""Halo control: the effect of --consistency near depth edges, on the shared object stacks.

    python bench/halo.py [--shared ../shared]

For syn_astronaut_object_512 and syn_mosaic_object_2048x1536 (objects over a
background, sharp depth edges; ground truth in frame 0's geometry), fuses with
--consistency 0, 1 and 2 (alignment on, reference 0) and prints PSNR against the
ground truth over the image (less a 2 % border, as score.py) and over the band within
8 pixels of a depth edge, where halos live. Markdown table.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from gpufocus import fuse, list_frames, read_image
from gpufocus.benchmark import machine_description
from gpufocus.metrics import as_unit_float, border_crop, psnr

HERE = Path(__file__).resolve().parent
STACKS = ["syn_astronaut_object_512", "syn_mosaic_object_2048x1536"]



def edge_band(depth: torch.Tensor, reach: int = 8) -> torch.Tensor:
    """Pixels within ``reach`` of a step in the depth map."""
    d = depth[0:1][None]
    step = (d[..., 1:, :] - d[..., :-1, :]).abs().amax() * 0.05
    edges = torch.zeros_like(d, dtype=torch.bool)
    edges[..., 1:, :] |= (d[..., 1:, :] - d[..., :-1, :]).abs() > step
    edges[..., :, 1:] |= (d[..., :, 1:] - d[..., :, :-1]).abs() > step
    return F.max_pool2d(edges.float(), 2 * reach + 1, 1, reach)[0, 0] > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared")
    args = parser.parse_args()
    print(f"machine: {machine_description()}\n")
    print("| stack | consistency | PSNR (image) | PSNR (within 8 px of depth edges) | edge pixels | time s |")
    print("|---|---|---|---|---|---|")
    for name in STACKS:
        folder = args.shared / "data" / "synthetic" / name
        truth = as_unit_float(read_image(folder / "ground_truth.png")).float()
        band = edge_band(as_unit_float(read_image(folder / "depth.png")).float())
        for consistency in (0, 1, 2):
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fused = fuse(list_frames([folder]), device="cpu", consistency=consistency)
            seconds = time.perf_counter() - start
            fused = (fused * 255).round() / 255  # as written to an 8-bit file
            whole = psnr(border_crop(fused), border_crop(truth))
            near = psnr(fused[:, band], truth[:, band])
            print(f"| {name} | {consistency} | {whole:.2f} | {near:.2f} | {int(band.sum())} | {seconds:.1f} |")


if __name__ == "__main__":
    main()
