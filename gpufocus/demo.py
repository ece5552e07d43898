"""The built-in demo: a synthetic stack, fused, with a side-by-side comparison image."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .device import resolve_device
from .engine import fuse
from .errors import GpufocusError
from .metrics import psnr
from .options import FuseOptions
from .synth import make_stack
from .write import to_array, write_image

__all__ = ["DemoReport", "run_demo"]


@dataclass
class DemoReport:
    frames: int
    width: int
    height: int
    device: str
    psnr_fused: float
    psnr_best_frame: float
    frames_dir: Path
    fused: Path
    comparison: Path


def _as_written(image: torch.Tensor) -> torch.Tensor:
    """An image as an 8-bit file holds it, back in [0, 1]."""
    return image.float().clamp(0, 1).mul(255).round() / 255


def _labelled(tiles: list[tuple[str, torch.Tensor]]) -> Image.Image:
    """Tiles side by side, each with a caption above it."""
    font = ImageFont.load_default(size=18)
    caption = 30
    images = [Image.fromarray(to_array(tile, 8)) for _, tile in tiles]
    width, height = images[0].size
    sheet = Image.new("RGB", (len(images) * width + (len(images) - 1) * 8, height + caption), "white")
    draw = ImageDraw.Draw(sheet)
    for i, ((label, _), image) in enumerate(zip(tiles, images)):
        left = i * (width + 8)
        sheet.paste(image, (left, caption))
        draw.text((left + 4, 5), label, fill="black", font=font)
    return sheet


def run_demo(outdir: str | os.PathLike, device: str = FuseOptions.device, frames: int = 6) -> DemoReport:
    """Write a synthetic stack to ``outdir/frames``, fuse it from those files, compare.

    Files: ``frames/frame_NN.png``, ``ground_truth.png``, ``fused.png`` and
    ``comparison.png`` (nearest-focus frame, farthest-focus frame, fused, ground truth).
    """
    device = resolve_device(device)
    outdir = Path(outdir)
    frames_dir = outdir / "frames"
    try:
        frames_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GpufocusError(f"{outdir}: cannot create the demo folder ({error.strerror or error})") from None
    stack = make_stack(frames=frames)
    paths = [
        write_image(frames_dir / f"frame_{i:02d}.png", frame, overwrite=True) for i, frame in enumerate(stack.frames)
    ]
    write_image(outdir / "ground_truth.png", stack.ground_truth, overwrite=True)
    fused = fuse(paths, device=device)
    fused_path = write_image(outdir / "fused.png", fused, overwrite=True)
    # Compare what was written: the 8-bit files, as a user would see them.
    truth = _as_written(stack.ground_truth)
    frame_psnr = [psnr(_as_written(frame), truth) for frame in stack.frames]
    sheet = _labelled(
        [
            ("frame 0 (near focus)", stack.frames[0]),
            (f"frame {frames - 1} (far focus)", stack.frames[-1]),
            ("gpufocus max-energy", fused),
            ("ground truth", stack.ground_truth),
        ]
    )
    comparison = write_image(outdir / "comparison.png", np.asarray(sheet), overwrite=True)
    return DemoReport(
        frames=frames,
        width=stack.frames.shape[-1],
        height=stack.frames.shape[-2],
        device=str(device),
        psnr_fused=psnr(_as_written(fused), truth),
        psnr_best_frame=max(frame_psnr),
        frames_dir=frames_dir,
        fused=fused_path,
        comparison=comparison,
    )
