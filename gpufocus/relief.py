"""A shaded 3-D relief of a fused image over its depth map (``gpufocus view``).

The image is laid on the depth map as a height field (the nearest frame highest, or
the farthest with ``near_is_high=False``), tilted away from the viewer and drawn back
to front, each source row painting the screen rows down to the next one's, so that
nearer ground hides what lies behind it. Slopes are shaded by a light from the upper
left, so the shape reads even where the image is flat.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["render_relief"]


def render_relief(
    image: np.ndarray,
    depth: np.ndarray,
    *,
    angle: float = 50.0,
    relief: float = 0.25,
    near_is_high: bool = True,
    background: tuple[int, int, int] = (24, 24, 28),
) -> np.ndarray:
    """Render ``image`` as a relief over ``depth``.

    Args:
        image: ``(H, W)`` or ``(H, W, C)`` uint8 or uint16 (grey, or the first three
            channels taken as RGB).
        depth: ``(H, W)`` floats or integers: larger is farther (a depth map as
            ``gpufocus fuse --depth-map`` writes it).
        angle: how far the view is tilted from straight above, in degrees (0 to 80).
        relief: height of the whole depth range, as a fraction of the image height.
        near_is_high: the nearest depth (0) is the top of the relief.
        background: the colour around the relief.

    Returns:
        ``(H', W, 3)`` uint8, the picture.

    Shape:
        - image: ``(H, W[, C])``
        - depth: ``(H, W)``
        - output: ``(H', W, 3)`` with ``H'`` the tilted image's height plus the relief's.
    """
    height, width = depth.shape
    top = 65535.0 if image.dtype == np.uint16 else 255.0
    colour = image.astype(np.float64) / top
    colour = colour[..., None] if colour.ndim == 2 else colour
    colour = colour[..., :3] if colour.shape[2] >= 3 else np.repeat(colour[..., :1], 3, axis=2)
    d = depth.astype(np.float64)
    span = d.max() - d.min()
    level = (d - d.min()) / span if span > 0 else np.zeros_like(d)
    rise = (1 - level if near_is_high else level) * relief * height  # in pixels

    # Shading: the height field's normal against a light from the upper left.
    dy, dx = np.gradient(rise)
    normal = np.stack([-dx, -dy, np.ones_like(dx)], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    light = np.array([-1.0, -1.0, 1.5]) / math.sqrt(4.25)
    shade = np.clip(normal @ light, 0, 1)
    lit = np.clip(colour * (0.45 + 0.75 * shade[..., None]), 0, 1)

    tilt = math.radians(min(max(angle, 0.0), 80.0))
    screen = np.arange(height)[:, None] * math.cos(tilt) - rise * math.sin(tilt)  # (H, W), rows on screen
    screen -= screen.min()
    rows = int(math.ceil(screen.max())) + 2
    canvas = np.empty((rows, width, 3))
    canvas[:] = np.array(background) / 255.0
    columns = np.arange(width)
    for r in range(height):  # back (top of the image) to front: later rows cover earlier ones
        start = np.floor(screen[r]).astype(int)
        end = np.floor(screen[r + 1]).astype(int) if r + 1 < height else start + 1
        end = np.maximum(end, start + 1)  # at least the row's own pixel
        for step in range(int((end - start).max())):
            paint = start + step < end
            canvas[(start + step)[paint], columns[paint]] = lit[r, paint]
    return (canvas * 255).round().astype(np.uint8)
