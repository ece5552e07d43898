"""Synthetic focus stacks with known ground truth, made in code (no downloads).

A sharp procedural scene, a depth map, and frames rendered with a thin-lens defocus
model: the blur radius of a point grows with ``|t - t_focus|``, where ``t`` is its
normalised inverse depth and ``t_focus`` the frame's focus. The defocus kernel is a
disk (the aperture's image). Frames are blended from the scene blurred at integer
radii, so the cost does not grow with the number of frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia
import torch
from torch import Tensor

__all__ = ["SyntheticStack", "procedural_scene", "objects_depth", "disk_kernel", "render_stack", "make_stack"]


@dataclass
class SyntheticStack:
    """A rendered stack and what it was made from.

    Shape:
        - frames: ``(N, 3, H, W)`` float32 in [0, 1]
        - ground_truth: ``(3, H, W)``, the scene in focus everywhere
        - depth: ``(H, W)``, normalised inverse depth ``t`` in [0, 1] (0 = near)
        - focus: ``(N,)``, the ``t`` each frame is focused at
    """

    frames: Tensor
    ground_truth: Tensor
    depth: Tensor
    focus: Tensor


def procedural_scene(height: int, width: int, seed: int = 0) -> Tensor:
    """A colourful scene with detail at every scale: smooth colour fields, gratings, rings, dots, grain.

    Returns:
        ``(3, H, W)`` float32 in [0, 1].
    """
    gen = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(
        torch.linspace(-1, 1, height), torch.linspace(-width / height, width / height, width), indexing="ij"
    )
    # Saturated colours on a coarse grid, smoothly interpolated.
    hues = torch.rand(1, 3, 4, 5, generator=gen)
    colour = hues / hues.amax(dim=1, keepdim=True)
    colour = torch.nn.functional.interpolate(colour, size=(height, width), mode="bicubic", align_corners=True)[0]
    texture = torch.zeros(height, width)
    for _ in range(4):  # oriented gratings of random frequency
        angle, freq = torch.rand(2, generator=gen).tolist()
        phase = (x * math.cos(angle * math.pi) + y * math.sin(angle * math.pi)) * (6 + 50 * freq) * math.pi
        texture += torch.cos(phase) * 0.125 + 0.125
    cy, cx = (torch.rand(2, generator=gen) - 0.5).tolist()
    texture *= 0.6 + 0.4 * torch.cos(((y - cy) ** 2 + (x - cx) ** 2).sqrt() * 30)  # rings
    scene = colour.clamp(0, 1) * (0.3 + 0.7 * texture)
    dots = (torch.rand(1, height, width, generator=gen) > 0.996).float()
    scene = scene * (1 - dots) + dots
    scene += (torch.rand(1, height, width, generator=gen) - 0.5) * 0.1  # fine grain
    return scene.clamp(0, 1)


def objects_depth(height: int, width: int, objects: int = 3, seed: int = 0) -> Tensor:
    """A tilted background plane with raised discs: smooth depth plus sharp depth edges.

    Returns:
        ``(H, W)`` normalised inverse depth in [0, 1], 0 = near.
    """
    gen = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    depth = 0.45 + 0.55 * (0.7 * y + 0.3 * x)  # background: far at the bottom right
    for k in range(objects):
        cy, cx = torch.rand(2, generator=gen) * 0.6 + 0.2
        radius = 0.12 + 0.1 * torch.rand(1, generator=gen).item()
        inside = ((y - cy) ** 2 + ((x - cx) * width / height) ** 2) < radius**2
        depth = torch.where(inside, torch.full_like(depth, 0.35 * k / max(objects - 1, 1)), depth)
    return depth.clamp(0, 1)


def disk_kernel(radius: float) -> Tensor:
    """A normalised disk of the given radius, anti-aliased at its rim; ``(1, K, K)``."""
    half = math.ceil(radius)
    coords = torch.arange(-half, half + 1, dtype=torch.float32)
    dist = (coords[:, None] ** 2 + coords[None, :] ** 2).sqrt()
    disk = (radius + 0.5 - dist).clamp(0, 1)
    return (disk / disk.sum()).unsqueeze(0)


def render_stack(scene: Tensor, depth: Tensor, frames: int, max_blur: float = 8.0) -> tuple[Tensor, Tensor]:
    """Render ``frames`` frames focused at evenly spaced depths from near to far.

    Args:
        scene: ``(3, H, W)`` sharp image.
        depth: ``(H, W)`` normalised inverse depth in [0, 1].
        frames: number of frames, at least 2.
        max_blur: blur radius in pixels of a point a whole depth range out of focus.

    Returns:
        ``(frames (N, 3, H, W), focus (N,))``.
    """
    focus = torch.linspace(0, 1, frames)
    radii = max_blur * (depth[None] - focus[:, None, None]).abs()  # (N, H, W)
    top = math.ceil(radii.max().item())
    blurred = [scene] + [
        kornia.filters.filter2d(scene[None], disk_kernel(r), border_type="reflect")[0] for r in range(1, top + 1)
    ]
    stack = torch.zeros(frames, *scene.shape)
    for r in range(top + 1):  # blend the two nearest integer radii linearly
        weight = (1 - (radii - r).abs()).clamp(min=0).unsqueeze(1)
        stack += weight * blurred[r]
    return stack.clamp(0, 1), focus


def make_stack(height: int = 384, width: int = 512, frames: int = 6, max_blur: float = 8.0, seed: int = 0) -> SyntheticStack:
    """A complete synthetic stack: procedural scene, objects over a plane, rendered frames."""
    scene = procedural_scene(height, width, seed)
    depth = objects_depth(height, width, seed=seed)
    stack, focus = render_stack(scene, depth, frames, max_blur)
    return SyntheticStack(stack, scene, depth, focus)
