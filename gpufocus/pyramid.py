"""Gaussian and Laplacian pyramids of any size, with exact collapse.

Burt & Adelson's pyramid with the 5-tap binomial kernel ``[1, 4, 6, 4, 1] / 16``:
``pyr_down`` blurs and keeps every second sample (OpenCV's rounding: a side of
``n`` becomes ``ceil(n / 2)``), ``pyr_up`` is the matching interpolation to any
requested size. Borders reflect without repeating the edge sample (OpenCV's
``BORDER_REFLECT_101``, kornia's ``'reflect'``).

Why not ``kornia.geometry.transform.build_laplacian_pyramid``: it pads every level
to the next power of two (6000x4000 becomes 8192x4096), its ``pyrdown`` averages
2x2 blocks instead of decimating, odd sizes do not round-trip through its ``pyrup``,
and it has no collapse. The filters themselves live below, in ``gpufocus.kernels``
(``filters``: sums of shifted slices, chunk-invariant; a Triton twin of a whole level
where Triton runs), and are re-exported here.
"""

from __future__ import annotations

import math

import functools

from torch import Tensor

from .color import luminance
from .decode import MIN_LEVEL_SIDE
from .kernels.pyramid_level import DETAIL
from .halo import noise_level
from .kernels import Level, detail, downsample, measure_of, use_triton
from .kernels.filters import binomial_taps, correlate1d, pyr_down, pyr_up, reflect_pad, separable_filter

__all__ = [
    "MIN_LEVEL_SIDE",
    "max_levels",
    "auto_levels",
    "level_sizes",
    "reflect_pad",
    "correlate1d",
    "separable_filter",
    "binomial_taps",
    "check_levels",
    "pyr_down",
    "pyr_up",
    "build_gaussian_pyramid",
    "build_laplacian_pyramid",
    "collapse_laplacian_pyramid",
    "COVERED",
    "Decomposition",
]


#: The coarsest level that ``auto_levels`` aims for, in pixels along the shorter side.
_AUTO_COARSEST_SIDE = 32
#: More levels than this add nothing visible and only cost time.
_AUTO_MAX_LEVELS = 8


def max_levels(height: int, width: int) -> int:
    """The deepest pyramid an image of this size supports.

    A level is reduced only while its shorter side is at least ``MIN_LEVEL_SIDE``.

    Args:
        height: image height in pixels.
        width: image width in pixels.

    Returns:
        The number of detail levels, 0 for images too small for any.
    """
    levels, side = 0, min(height, width)
    while side >= MIN_LEVEL_SIDE:
        side = (side + 1) // 2
        levels += 1
    return levels


def auto_levels(height: int, width: int) -> int:
    """The default number of detail levels for an image of this size.

    Deep enough that the coarsest level is about ``_AUTO_COARSEST_SIDE`` pixels on its
    shorter side, so that the widest blur in a stack is still resolved by some level,
    but no deeper than ``max_levels`` allows and at most ``_AUTO_MAX_LEVELS``.
    """
    wanted = max(1, math.ceil(math.log2(max(min(height, width), 1) / _AUTO_COARSEST_SIDE)))
    return max(0, min(wanted, _AUTO_MAX_LEVELS, max_levels(height, width)))


def level_sizes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    """Sizes of the Gaussian levels 0..levels (level 0 is the image itself)."""
    sizes = [(height, width)]
    for _ in range(levels):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def build_gaussian_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """Levels ``0..levels`` of the Gaussian pyramid; level 0 is ``x`` itself.

    Shape:
        - x: ``(B, C, H, W)``
        - level ``l``: ``(B, C, H_l, W_l)`` with ``H_l = ceil(H_{l-1} / 2)``.
    """
    check_levels(x, levels)
    pyramid = [x]
    for _ in range(levels):
        pyramid.append(downsample(pyramid[-1]))
    return pyramid


def build_laplacian_pyramid(x: Tensor, levels: int) -> list[Tensor]:
    """Detail levels ``0..levels-1`` followed by the Gaussian residual (``levels + 1`` tensors).

    Args:
        x: images, shape ``(B, C, H, W)``, floating point.
        levels: number of detail levels, at most ``max_levels(H, W)``.

    Returns:
        ``[L_0, ..., L_{levels-1}, G_levels]`` with ``L_l = G_l - pyr_up(G_{l+1})``.
    """
    check_levels(x, levels)
    pyramid, g = [], x
    for _ in range(levels):  # one level at a time: a Gaussian level is dropped once used
        coarser = downsample(g)
        pyramid.append(detail(g, coarser))
        g = coarser
    return pyramid + [g]


def collapse_laplacian_pyramid(pyramid: list[Tensor]) -> Tensor:
    """Rebuild the image from ``build_laplacian_pyramid``'s output.

    Exact up to float rounding: each step adds back precisely what was subtracted.
    """
    image = pyramid[-1]
    for level in reversed(pyramid[:-1]):
        image = pyr_up(image, level.shape[-2:]).add_(level)
    return image


def check_levels(x: Tensor, levels: int) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(B, C, H, W)`` and deep enough for ``levels``."""
    if x.dim() != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    deepest = max_levels(h, w)
    if not 0 <= levels <= deepest:
        raise ValueError(f"{levels} pyramid levels do not fit {w}x{h} images (at most {deepest})")


#: A coefficient is used when at least this share of the pixels under its (blurred)
#: support is image data: a strip of a pixel or two at the border, which a sub-pixel
#: warp leaves uncovered, must not take whole coarse levels from the other frames.
COVERED = 0.9


class Decomposition:
    """A chunk of frames taken apart once, for every consumer: the Laplacian pyramid, the
    luminance of its levels, and which coefficients the frames' valid pixels support.

    The selection rule and the depth map read the same one; each part is made when first
    asked for.

    Args:
        frames: ``(B, C, H, W)`` floating point.
        valid: ``(B, 1, H, W)`` bool, the pixels that hold image data, or ``None`` for all.
        levels: detail levels of the pyramid.
        noise: ``(B, S)``, the whole frames' ``gpufocus.halo.noise_level`` of the planes
            decided on, where ``frames`` are tiles of them; ``None``: measured on ``frames``.
    """

    def __init__(self, frames: Tensor, valid: Tensor | None, levels: int, noise: Tensor | None = None) -> None:
        self.frames, self.valid, self.levels = frames, valid, levels
        self._luma: dict[tuple[int, int], Tensor] = {}
        self._noise = noise

    def noise(self, per_channel: bool) -> Tensor:
        """The frames' noise level (``gpufocus.halo.noise_level``) of their luminance, or
        of each channel, ``(B, S)``."""
        if self._noise is None:
            self._noise = noise_level(self.frames, per_channel)
        return self._noise

    @functools.cached_property
    def gaussian(self) -> list[Tensor]:
        """``build_gaussian_pyramid(frames, levels)``."""
        return build_gaussian_pyramid(self.frames, self.levels)

    @functools.cached_property
    def pyramid(self) -> list[Tensor]:
        """``build_laplacian_pyramid(frames, levels)``, from ``gaussian``."""
        g = self.gaussian
        return [detail(fine, coarser) for fine, coarser in zip(g, g[1:])] + [g[-1]]

    def luma(self, level: int) -> Tensor:
        """The luminance of detail level ``level`` (a grey pyramid is its own). A level
        below the pyramid's comes from a pyramid of the luminance made for it."""
        return self.measured(level, per_channel=False)

    def measured(self, level: int, per_channel: bool) -> Tensor:
        """What decisions on detail level ``level`` are measured on: its luminance, or
        with ``per_channel`` every channel (``kernels.measure_of``). Where the Triton
        kernels run and the pyramid was not needed, it is made without the detail of
        every channel."""
        measure = measure_of(self.frames.shape[1], per_channel)
        if measure == DETAIL and level < self.levels:
            return self.pyramid[level]
        key = (level, measure)
        if key not in self._luma:
            if level >= self.levels:
                self._luma[key] = build_laplacian_pyramid(luminance(self.frames), level + 1)[level]
            elif use_triton(self.frames) and "pyramid" not in self.__dict__:
                self._luma[key] = detail(self.gaussian[level], self.gaussian[level + 1], measure)
            else:
                self._luma[key] = luminance(self.pyramid[level])
        return self._luma[key]

    def level(self, level: int, per_channel: bool) -> Level:
        """Detail level ``level`` as the selection reads it (``kernels.Level``)."""
        g = self.gaussian
        return Level(g[level], g[level + 1], lambda: self.measured(level, per_channel), lambda: self.pyramid[level])

    @functools.cached_property
    def coverage(self) -> list[Tensor] | None:
        """The share of valid pixels under each level's samples (the Gaussian pyramid of
        ``valid``), or ``None`` where every pixel is valid."""
        return None if self.valid is None else build_gaussian_pyramid(self.valid.float(), self.levels)

    @functools.cached_property
    def usable(self) -> list[Tensor] | None:
        """Per detail level, ``(B, 1, h, w)`` bool: the coefficients that see (nearly) only
        valid pixels, at their level and the next; ``None`` where every pixel is valid."""
        if self.coverage is None:
            return None
        pairs = zip(self.coverage, self.coverage[1:])
        return [(g >= COVERED) & (pyr_up(g_next, g.shape[-2:]) >= COVERED) for g, g_next in pairs]
