"""Synthetic focus stacks with known ground truth, made in code (no downloads).

A sharp scene (a procedural one, or any image), a depth map, and frames rendered
with a thin-lens defocus model: the blur radius of a point grows with
``|1/depth - 1/focus|``. Depth ``d`` runs from ``NEAR`` to ``FAR``; the renderer works
with the normalised inverse depth ``t = (1/NEAR - 1/d) / (1/NEAR - 1/FAR)`` (0 = near,
1 = far), for which the blur radius is ``max_blur * |t - t_focus|``. The defocus kernel
is a disk (the aperture's image). Frames are blended from the scene blurred at integer
radii, so the cost does not grow with the number of frames.

Optional camera effects, applied after the blur: focus breathing (frame ``i`` is
magnified by ``(1 + breathing) ** i`` about the image centre), a random sub-pixel shift,
an exposure gain and Gaussian noise. Frame 0 keeps the scene's geometry and exposure,
so the ground truth is in frame 0's geometry.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .options import SYNTH_FAMILIES, OptionError, OutputOptions

__all__ = [
    "FAMILIES",
    "true_matrix",
    "NEAR",
    "FAR",
    "SyntheticStack",
    "procedural_scene",
    "depth_map",
    "disk_kernel",
    "render_stack",
    "move_frames",
    "make_stack",
    "write_stack",
]

FAMILIES = SYNTH_FAMILIES
NEAR, FAR = 1.0, 3.0


@dataclass
class SyntheticStack:
    """A rendered stack and what it was made from.

    Shape:
        - frames: ``(N, 3, H, W)`` float32 in [0, 1]
        - ground_truth: ``(3, H, W)``, the scene in focus everywhere (frame 0's geometry)
        - depth: ``(H, W)``, normalised inverse depth ``t`` in [0, 1] (0 = near)
        - focus: ``(N,)``, the ``t`` each frame is focused at
        - params: what was used, and per frame the true magnification, shift and gain
    """

    frames: Tensor
    ground_truth: Tensor
    depth: Tensor
    focus: Tensor
    params: dict = field(default_factory=dict)

    @property
    def focus_index(self) -> Tensor:
        """``(H, W)`` index of the frame focused nearest to each pixel's depth."""
        return (self.depth[None] - self.focus[:, None, None]).abs().argmin(dim=0)


def procedural_scene(height: int, width: int, seed: int = 0) -> Tensor:
    """A colourful scene with detail at every scale: colour fields, gratings, rings, dots, grain.

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


def depth_map(height: int, width: int, family: str = "objects", seed: int = 0) -> Tensor:
    """A depth map as normalised inverse depth ``t`` in [0, 1] (0 = near), ``(H, W)``.

    Families:
        - ``plane``: a tilted plane, near at the top left, far at the bottom right.
        - ``smooth``: a smooth surface of random bumps.
        - ``objects``: raised discs over a tilted background: sharp depth edges.
    """
    if family not in FAMILIES:
        raise OptionError("family", family, f"use one of {', '.join(FAMILIES)}")
    gen = torch.Generator().manual_seed(seed)
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    if family == "plane":
        return 0.7 * y + 0.3 * x
    if family == "smooth":
        surface = torch.zeros(height, width)
        for _ in range(5):
            cy, cx, size, sign = torch.rand(4, generator=gen).tolist()
            spread = 0.1 + 0.3 * size
            surface += (1 if sign > 0.5 else -1) * torch.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * spread**2))
        surface += 0.5 * (y + x)
        return (surface - surface.min()) / (surface.max() - surface.min())
    depth = 0.45 + 0.55 * (0.7 * y + 0.3 * x)
    count = 3
    for k in range(count):
        cy, cx = (torch.rand(2, generator=gen) * 0.6 + 0.2).tolist()
        radius = 0.12 + 0.1 * torch.rand(1, generator=gen).item()
        inside = ((y - cy) ** 2 + ((x - cx) * width / height) ** 2) < radius**2
        depth = torch.where(inside, torch.full_like(depth, 0.35 * k / (count - 1)), depth)
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
    import kornia  # imported here: it costs half a second of every start

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


def move_frames(frames: Tensor, magnification: Tensor, shift: Tensor, rotation: Tensor | None = None) -> Tensor:
    """Warp each frame as the camera would have seen it.

    Frame ``i``'s pixel ``p`` shows the scene point ``c + R_i^-1 (p - c - shift_i) / magnification_i``,
    with ``c`` the image centre, ``shift`` as ``(dy, dx)`` in pixels and ``R_i`` a rotation by
    ``rotation_i`` radians (counter-clockwise on screen, y pointing down).

    Shape:
        - frames: ``(N, C, H, W)``; magnification, rotation: ``(N,)``; shift: ``(N, 2)``.
    """
    import kornia

    n, _, height, width = frames.shape
    centre = torch.tensor([(width - 1) / 2, (height - 1) / 2], dtype=torch.float64)
    angle = torch.zeros(n, dtype=torch.float64) if rotation is None else rotation.double()
    m = magnification.double()
    linear = torch.stack(
        (torch.stack((torch.cos(angle), torch.sin(angle)), -1), torch.stack((-torch.sin(angle), torch.cos(angle)), -1)),
        -2,
    ) * m.view(-1, 1, 1)
    matrix = torch.zeros(n, 2, 3, dtype=torch.float64)
    matrix[:, :, :2] = linear
    matrix[:, :, 2] = centre - linear @ centre + shift.double().flip(-1)
    # Bicubic: a bilinear warp would soften the sharp parts of every moved frame.
    return kornia.geometry.transform.warp_affine(
        frames, matrix.float(), (height, width), mode="bicubic", padding_mode="border"
    ).clamp(0, 1)


def true_matrix(info: dict, height: int, width: int) -> Tensor:
    """A frame's true motion from its ``params['frame_info']`` entry: ``M_0->i`` in the
    canonical coordinates of ``gpufocus.align`` (float64), as ``move_frames`` applied it."""
    s = max(height, width) / 2
    m, a = info["magnification"], info.get("rotation_rad", 0.0)
    dy, dx = info["shift_yx_px"]
    return torch.tensor(
        [[m * math.cos(a), m * math.sin(a), dx / s], [-m * math.sin(a), m * math.cos(a), dy / s], [0, 0, 1]],
        dtype=torch.float64,
    )


def make_stack(
    height: int = 384,
    width: int = 512,
    frames: int = 6,
    *,
    family: str = "objects",
    max_blur: float = 8.0,
    noise: float = 0.0,
    breathing: float = 0.0,
    shift: float = 0.0,
    rotation: float = 0.0,
    exposure_jitter: float = 0.0,
    seed: int = 0,
    scene: Tensor | None = None,
) -> SyntheticStack:
    """A complete synthetic stack; the same arguments give the same stack.

    Args:
        height, width: frame size (ignored when ``scene`` is given).
        frames: number of frames, at least 2.
        family: depth map family, one of ``FAMILIES``.
        max_blur: blur radius in pixels across the whole depth range.
        noise: standard deviation of Gaussian noise, in 0-255 units.
        breathing: magnification step per frame (0.002 = 0.2 % per frame).
        shift: largest random shift of a frame, in pixels (sub-pixel values allowed).
        rotation: largest random rotation of a frame, in degrees.
        exposure_jitter: largest relative gain change of a frame (0.02 = 2 %).
        seed: seeds the scene, the depth map, the motion and the noise.
        scene: ``(3, H, W)`` image in [0, 1] to use instead of the procedural scene.
    """
    if frames < 2:
        raise OptionError("frames", frames, "a stack needs at least 2 frames")
    if scene is None:
        scene = procedural_scene(height, width, seed)
    height, width = scene.shape[-2:]
    depth = depth_map(height, width, family, seed)
    stack, focus = render_stack(scene, depth, frames, max_blur)
    gen = torch.Generator().manual_seed(seed + 1)
    magnification = (1 + breathing) ** torch.arange(frames, dtype=torch.float64)
    offsets = (torch.rand(frames, 2, generator=gen, dtype=torch.float64) * 2 - 1) * shift
    gains = 1 + (torch.rand(frames, generator=gen, dtype=torch.float64) * 2 - 1) * exposure_jitter
    angles = (torch.rand(frames, generator=gen, dtype=torch.float64) * 2 - 1) * math.radians(rotation)
    offsets[0], gains[0], angles[0] = 0, 1, 0  # frame 0 is the ground truth's geometry and exposure
    if breathing or shift or rotation:
        stack = move_frames(stack, magnification, offsets, angles)
    stack = stack * gains.float().view(-1, 1, 1, 1)
    if noise:
        stack = stack + torch.randn(stack.shape, generator=gen) * (noise / 255)
    params = {
        "generator": "gpufocus.synth",
        "seed": seed,
        "frames": frames,
        "width": width,
        "height": height,
        "family": family,
        "max_blur": max_blur,
        "noise": noise,
        "breathing": breathing,
        "shift": shift,
        "rotation": rotation,
        "exposure_jitter": exposure_jitter,
        "near": NEAR,
        "far": FAR,
        "model": "r = max_blur * |t - t_focus|, t = normalised inverse depth (0 = near), disk PSF",
        "geometry": "frame i pixel p shows scene point c + R^-1 (p - c - shift_yx) / magnification, c = image "
        "centre, R = rotation by rotation_rad; ground truth in frame 0's geometry",
        "depth_png": "16-bit, value / 65535 = (depth - near) / (far - near), 0 = near",
        "frame_info": [
            {
                "focus_t": round(float(focus[i]), 6),
                "focus_depth": round(_depth_of(float(focus[i])), 6),
                "magnification": float(magnification[i]),
                "shift_yx_px": [float(offsets[i, 0]), float(offsets[i, 1])],
                "rotation_rad": float(angles[i]),
                "gain": float(gains[i]),
            }
            for i in range(frames)
        ],
    }
    return SyntheticStack(stack.clamp(0, 1), scene, depth, focus, params)


def _depth_of(t: Tensor | float) -> Tensor | float:
    """Depth from normalised inverse depth."""
    return 1 / (1 / NEAR - t * (1 / NEAR - 1 / FAR))


def write_stack(
    stack: SyntheticStack,
    outdir: str | os.PathLike,
    *,
    fmt: str = "png",
    quality: int = OutputOptions.quality,
    overwrite: bool = False,
    keep: Sequence[str | os.PathLike] = (),
) -> list[Path]:
    """Write a stack as ``gpufocus fuse`` and ``score.py`` read it: all files or none.

    Files: ``frame_000.{png,jpg}``..., ``ground_truth.png``, ``depth.png`` (16-bit, see
    ``params['depth_png']``), ``focus_index.png`` (8-bit frame index) and ``params.json``.
    ``keep``: files that must not be replaced (the scene image the stack was made from).

    Returns:
        The frame files, in order.
    """
    from .write import Outputs, check_distinct, output_folder

    if fmt not in ("png", "jpg"):
        raise OptionError("format", fmt, "use png or jpg")
    outdir = Path(outdir)
    paths = [outdir / f"frame_{i:03d}.{fmt}" for i in range(len(stack.frames))]
    side = {name: outdir / name for name in ("ground_truth.png", "depth.png", "focus_index.png", "params.json")}
    check_distinct([*paths, *side.values()], keep)
    depth = (_depth_of(stack.depth.double()) - NEAR) / (FAR - NEAR)
    with output_folder(outdir), Outputs() as out:
        for path, frame in zip(paths, stack.frames):
            out.image(path, frame, quality=quality, overwrite=overwrite)
        out.image(side["ground_truth.png"], stack.ground_truth, overwrite=overwrite)
        out.image(side["depth.png"], depth.float()[None], bits=16, overwrite=overwrite)
        out.image(side["focus_index.png"], stack.focus_index.numpy().astype(np.uint8), overwrite=overwrite)
        out.json(side["params.json"], stack.params, overwrite)
    return paths
