"""Registration of a focus stack: every frame mapped onto the reference frame's grid.

Method: inverse-compositional Lucas-Kanade (Baker & Matthews), coarse to fine, on a
band-pass image of the luminance (a difference of Gaussians, sigma 2 and 8 pixels at
the estimation resolution), between neighbouring frames (their blur differs least),
the steps chained to the reference. Every neighbour pair of a chunk is estimated at
once, as a batch, with a phase correlation for the starting shift and a fixed number
of Gauss-Newton steps per level; sums and solves are done by ``gpufocus.batchmath``, so
nothing waits for the device and the result does not depend on the chunk size. The
checks are computed on the device too, and read back once per chunk.

Three sources of bias are avoided. A band-pass filter reflects at the borders, and frames
magnified differently reflect different content there: pixels within three wide sigmas
of a border are left out (with them, the scale step came out 1.5 % short). A finer band
(sigma 1 and 4) let the bilinear sampling of the band images pull estimates towards
whole pixels; sigma 2 and 8 keep that below 0.1 %. Neighbours differ by their blur, and
where the blur changes across the image a change of blur moves edges a little, the same
way from one pair to the next, so the chain adds it up (0.11-0.12 px at the corners by
the last frame of the shared breathing stacks): before the finest level, the pair is
blur-matched, tile by tile, the sharper of the two blurred to the other's focus (the
same choice as the no-harm test's, below), and the finest level is estimated on the
matched pair (0.04-0.10 px). The two finest levels take every other row and column: a
quarter of the work, the same estimate to a few thousandths of a pixel. The matching
is done there too: each frame's blurs are made once (it is template to one neighbour
and image to the other), and the template's values and gradient and the image's
samples are blended point by point rather than the frames themselves.

Transforms are 3x3 matrices in *canonical* coordinates: full-resolution pixel
coordinates, centred on the image and divided by half the longer side, so that the
same matrix serves every pyramid level. A matrix ``M_a->b`` maps a point of frame
``a`` to the point of frame ``b`` that shows the same scene point; frame ``i`` aligned to
the reference ``r`` is ``frame_i(M_r->i x)``.

No harm: an estimated step is taken only where it explains the frames significantly
better than no motion. Frames focused differently differ by their blur too, and a
small motion can make up for part of that; so the test compares, tile by tile, the
residual after choosing for each tile the better of the frames as they are and either
one blurred a little more (binomial blurs of variance 1 and 2 pixels), and asks that
the motion lower it by at least 15 % overall and in at least 70 % of the tiles.
Exposure gains are applied only where a channel's brightness differs from the
reference's by more than 3 %. A stack that does not move is fused exactly as without
alignment.

An estimate that fails its checks (not finite; a scale step beyond 5 %, a rotation
beyond 5 degrees or a shift beyond an eighth of the image between neighbours; band-pass
images that still do not match, correlation below 0.2; a residual worse than with no
motion) falls back to the previous step's motion (or none), with a warning that names
the frame.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .batchmath import cholesky, cholesky_solve, fixed_sum, inverse3x3, matmul3x3
from .color import luminance
from .errors import GpufocusWarning
from .graphs import GraphedFunction
from .kernels import downsample, downsample_luminance, sampling_grid
from .options import ALIGN_MODELS, AlignOptions
from .pyramid import binomial_taps, pyr_down, pyr_up, separable_filter

__all__ = [
    "MODELS",
    "MIN_ALIGN_SIDE",
    "AlignmentWarning",
    "FrameTransform",
    "StackAligner",
    "warp_frame",
    "apply_transform",
    "apply_transforms",
    "moves",
    "to_pixel_matrix",
    "largest_move",
    "corner_error",
    "transforms_to_json",
    "transforms_from_json",
    "inner_rectangle",
]

#: Motion models and their number of parameters.
MODELS = dict(zip(ALIGN_MODELS, (2, 4, 6, 8)))

#: Frames whose shorter side is smaller than this are fused as they are: too few pixels
#: to register.
MIN_ALIGN_SIDE = 32

_BAND = (2.0, 8.0)  # difference of Gaussians, sigmas in estimation pixels
_MARGIN = 24  # three wide sigmas: band pixels this near a border are left out
_COARSEST_SIDE = 40  # LK pyramid: stop reducing below this shorter side
_ITERATIONS_COARSE, _ITERATIONS_FINE = 4, 2  # converged: more change nothing (bench/alignment.py)
_DAMPING = 1e-6
# The two finest levels are estimated on every other row and column (the same estimate).
_FINE_STRIDE, _STRIDED_LEVELS = 2, 2
# Plausible motion between neighbouring frames (canonical units: half the longer side).
_MAX_SCALE_STEP, _MAX_ROTATION, _MAX_SHIFT, _MAX_PERSPECTIVE = 0.05, math.radians(5), 0.25, 0.05
# Transforms that move no point by more than this many pixels are the identity: no
# resampling of a frame that did not move.
_STILL_PX = 0.01
# Steps smaller than this (pixels, at the corners) are taken as no motion at all.
_MIN_STEP_PX = 0.05
# The no-harm test (see the module notes), on a grid of tiles of the finest level.
_TILES = 8
_TILE_SIDE = 32
_MATCH_BLURS = 2  # blurs by 5 binomial taps, once or twice: variance 1 or 2 pixels
_MIN_BETTER = 0.15
_MIN_TILES_BETTER = 0.70
# An estimate whose residual exceeds no motion's by this factor has failed.
_WORSE = 1.02
# Aligned neighbours whose band-pass images correlate less than this do not match: the
# worst real pair of the shared stacks correlates 0.61 (bznick_test1, bznick_test4).
_MIN_CORRELATION = 0.5
# Exposure gains are applied only to channels whose brightness differs by more than this.
_MIN_GAIN = 0.03

# Decisions on a step, made on the device.
_TAKEN, _NO_MOTION, _FAILED, _WORSE_THAN_NONE = 0, 1, 2, 3

log = logging.getLogger(__name__)
_REASONS = {
    1: "no convergence",
    2: "scale step is beyond {:.2f}".format(1 + _MAX_SCALE_STEP),
    3: f"rotation step is beyond {math.degrees(_MAX_ROTATION):.0f} degrees",
    4: "shift is beyond an eighth of the image",
    5: "perspective change is implausible",
    6: "the frames do not match (correlation {:.2f})",
}


class AlignmentWarning(GpufocusWarning):
    """An estimate was rejected and replaced; the message names the frame."""


@dataclass
class FrameTransform:
    """How one frame was mapped onto the reference.

    ``matrix`` is ``M_r->i`` in canonical coordinates (see the module notes), float64 on
    the CPU; ``gain`` (per channel, or ``None``) makes its exposure match the
    reference's; ``fallback`` says why the estimate was replaced, or is ``None``.
    """

    matrix: Tensor
    gain: Tensor | None = None
    offset: Tensor | None = None
    fallback: str | None = None


def _small_matrix(rows: list[list[float]], device) -> Tensor:
    """A float64 matrix made on ``device`` from Python numbers: filled in place, since a
    copy from host memory would make a GPU wait (``m[i, j] = value`` is such a copy: a
    host scalar copied into the element; ``fill_`` passes the number to the kernel)."""
    m = torch.zeros(len(rows), len(rows[0]), dtype=torch.float64, device=device)
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            if value:
                m[i, j].fill_(value)
    return m


def _pixel_axes(height: int, width: int, device) -> tuple[Tensor, Tensor]:
    """``C`` with pixel = ``C`` @ canonical for frames of ``height`` x ``width``, and its inverse."""
    s, cx, cy = max(height, width) / 2, (width - 1) / 2, (height - 1) / 2
    to_pixels = _small_matrix([[s, 0, cx], [0, s, cy], [0, 0, 1]], device)
    return to_pixels, _small_matrix([[1 / s, 0, -cx / s], [0, 1 / s, -cy / s], [0, 0, 1]], device)


def to_pixel_matrix(matrix: Tensor, height: int, width: int) -> Tensor:
    """A canonical transform (``(3, 3)`` or ``(B, 3, 3)``) in full-resolution pixel coordinates."""
    to_pixels, to_canonical = _pixel_axes(height, width, matrix.device)
    return matmul3x3(matmul3x3(to_pixels, matrix.double()), to_canonical)


def largest_move(matrix: Tensor, height: int, width: int) -> Tensor | float:
    """How far, in pixels, a transform moves the image's corners (a float for one
    matrix; ``(B,)`` for a batch, on its device)."""
    pixel = to_pixel_matrix(matrix, height, width)
    right, bottom = width - 1, height - 1
    corners = _small_matrix([[0, right, 0, right], [0, 0, bottom, bottom], [1, 1, 1, 1]], matrix.device)
    moved = pixel @ corners
    distance = (moved[..., :2, :] / moved[..., 2:, :] - corners[:2]).norm(dim=-2).amax(-1)
    return float(distance) if matrix.dim() == 2 else distance


def corner_error(matrix: Tensor, truth: Tensor, height: int, width: int) -> float:
    """How far apart, in pixels, two transforms put the image's corners (the largest)."""
    right, bottom = width - 1, height - 1
    corners = _small_matrix([[0, right, 0, right], [0, 0, bottom, bottom], [1, 1, 1, 1]], matrix.device)
    a, b = to_pixel_matrix(matrix, height, width) @ corners, to_pixel_matrix(truth, height, width) @ corners
    return float((a[:2] / a[2] - b[:2] / b[2]).norm(dim=0).max())


# -- features -----------------------------------------------------------------------------


def _gaussian(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of the last two dimensions, taps out to three sigma, reflect
    borders (``separable_filter``'s shifted products: a quarter of a convolution's time
    here, and a frame's result does not depend on the others in its batch)."""
    radius = max(1, math.ceil(3 * sigma))
    taps = [math.exp(-k * k / (2 * sigma * sigma)) for k in range(-radius, radius + 1)]
    total = sum(taps)
    return separable_filter(x, tuple(t / total for t in taps))


def _band_pass(luma: Tensor, opaque: Tensor | None = None) -> Tensor:
    """Difference of Gaussians (``_BAND``), scaled to unit spread so that exposure does
    not matter. The wide Gaussian is taken at half resolution (``pyr_down`` blurs by
    about one pixel on its way), four times cheaper than its 49 taps here.

    ``opaque`` (``(B, 1, h, w)`` float, 1 where the frame's alpha holds image): the band
    is zero within two wide sigmas of a transparent pixel, so that a mask's edge, which
    moves with no image content, is not taken for one."""
    fine, wide = _BAND
    half = pyr_down(luma)
    band = _gaussian(luma, fine) - pyr_up(_gaussian(half, math.sqrt(wide * wide - 1) / 2), luma.shape[-2:])
    if opaque is not None:
        reach = round(2 * wide)
        band = band * -F.max_pool2d(-opaque, 2 * reach + 1, stride=1, padding=reach)  # eroded
    flat = band.flatten(1)
    mean = fixed_sum(flat) / flat.shape[1]
    spread = (fixed_sum((flat - mean[:, None]) ** 2) / flat.shape[1]).clamp_min(1e-16).sqrt()
    return band / spread.view(-1, 1, 1, 1)


@dataclass
class _Features:
    """Band-pass pyramids of ``B`` frames, finest level first, and the pixel spacing of
    each level in full-resolution pixels; ``blurred``: the levels that are compared
    blur-matched (``_matched_levels``), each with its ``_blurs`` after it as channels,
    ``(B, 1 + _MATCH_BLURS, h, w)`` (a frame is template to one neighbour and image to the
    other: its blurs are made once)."""

    levels: list[Tensor]
    spacing: list[int]
    height: int
    width: int
    blurred: dict[int, Tensor]

    def pick(self, index) -> _Features:
        return _Features(
            [level[index] for level in self.levels], self.spacing, self.height, self.width,
            {i: stack[index] for i, stack in self.blurred.items()},
        )

    @staticmethod
    def cat(parts: list[_Features]) -> _Features:
        first = parts[0]
        levels = [torch.cat([p.levels[i] for p in parts]) for i in range(len(first.levels))]
        blurred = {i: torch.cat([p.blurred[i] for p in parts]) for i in first.blurred}
        return _Features(levels, first.spacing, first.height, first.width, blurred)


def _opaque(frames: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Frames whose transparent pixels (``mask`` below one half) hold the mean of their
    opaque ones, and the opacity as 0/1 floats; what lies under a mask (black borders, a
    warp's leftovers) then moves neither the motion estimate nor the exposure gains."""
    if mask is None:
        return frames, None
    opaque = (mask >= 0.5).to(frames.dtype)
    count = fixed_sum(opaque.flatten(2)).clamp_min(1)
    mean = (fixed_sum((frames * opaque).flatten(2)) / count)[..., None, None]
    return torch.where(opaque.bool(), frames, mean), opaque


def _pick(frames: Tensor, opaque: Tensor | None, index: slice) -> tuple[Tensor, Tensor | None]:
    return frames[index], (None if opaque is None else opaque[index])


def _features(frames: Tensor, size: int, opaque: Tensor | None = None) -> _Features:
    """``frames``: ``(B, C, H, W)`` float; estimation at a longer side of at most ``size``;
    ``opaque``: see ``_band_pass``."""
    return _pyramid(*_reduced(frames, size, opaque), *frames.shape[-2:])


def _reduced(frames: Tensor, size: int, opaque: Tensor | None) -> tuple[Tensor, int, Tensor | None]:
    """The frames' luminance at the estimation size, ``(B, 1, h, w)``, its pixel spacing
    in full-resolution pixels, and the opacity at that size (or ``None``)."""
    def shrinks(image: Tensor) -> bool:
        return bool(size) and max(image.shape[-2:]) > size and min(image.shape[-2:]) >= 2 * MIN_ALIGN_SIDE

    def halved(mask: Tensor | None) -> Tensor | None:
        return None if mask is None else (downsample(mask) > 0.999).float()

    frames = frames.float()
    if not shrinks(frames):
        return luminance(frames), 1, opaque
    # The first level down made with the luminance: one pass over the frames on a GPU.
    luma, spacing, opaque = downsample_luminance(frames), 2, halved(opaque)
    while shrinks(luma):
        luma, spacing, opaque = downsample(luma), spacing * 2, halved(opaque)
    return luma, spacing, opaque


def _pyramid(luma: Tensor, spacing: int, opaque: Tensor | None, height: int, width: int) -> _Features:
    """The features of ``_reduced``'s luminance of frames of ``height`` x ``width``."""
    levels, spacings = [_band_pass(luma, opaque)], [spacing]
    while min(levels[-1].shape[-2:]) >= 2 * _COARSEST_SIDE:
        levels.append(pyr_down(levels[-1]))
        spacings.append(spacings[-1] * 2)
    blurred = {i: _with_blurs(levels[i]) for i in _matched_levels(levels)}
    return _Features(levels, spacings, height, width, blurred)


def _test_level(levels: list[Tensor]) -> int:
    """The level of the no-harm test: the next to finest where its tiles still hold
    ``_TILE_SIDE`` pixels a side (a quarter of the pixels, and cheaper blurs), else the finest."""
    return 1 if len(levels) > 1 and min(levels[1].shape[-2:]) >= _TILES * _TILE_SIDE else 0


def _matched_levels(levels: list[Tensor]) -> set[int]:
    """The levels compared blur-matched: the finest, for its estimate (when coarser ones
    came first), and the no-harm test's."""
    return ({0} if len(levels) > 1 else set()) | {_test_level(levels)}


# -- estimation ---------------------------------------------------------------------------


def _delta(model: str, p: Tensor) -> Tensor:
    """The ``(B, 3, 3)`` matrices of parameter steps ``p`` (``(B, P)``, float64)."""
    one, zero, q = torch.ones_like(p[:, 0]), torch.zeros_like(p[:, 0]), p.unbind(1)
    if model == "translation":
        entries = [one, zero, q[0], zero, one, q[1], zero, zero, one]
    elif model == "similarity":  # x' = (1 + a) x - b y + tx, y' = b x + (1 + a) y + ty
        entries = [1 + q[0], -q[1], q[2], q[1], 1 + q[0], q[3], zero, zero, one]
    elif model == "affine":
        entries = [1 + q[0], q[2], q[4], q[1], 1 + q[3], q[5], zero, zero, one]
    else:
        entries = [1 + q[0], q[1], q[2], q[3], 1 + q[4], q[5], q[6], q[7], one]
    return torch.stack(entries, -1).view(-1, 3, 3)


def _steepest_descent(model: str, gx: Tensor, gy: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Template gradient times the warp's Jacobian at the identity, ``(B, P, h, w)``."""
    if model == "translation":
        parts = [gx, gy]
    elif model == "similarity":
        parts = [gx * x + gy * y, gy * x - gx * y, gx, gy]
    elif model == "affine":
        parts = [gx * x, gy * x, gx * y, gy * y, gx, gy]
    else:
        radial = gx * x + gy * y
        parts = [gx * x, gx * y, gx, gy * x, gy * y, gy, -x * radial, -y * radial]
    return torch.stack(parts, 1)


def _central_difference(x: Tensor, dim: int, stride: int) -> Tensor:
    """``torch.gradient`` of ``x`` along ``dim`` (unit spacing, one-sided at the ends) at
    every ``stride``-th sample only, the same numbers."""
    dim = dim % x.dim()
    n = x.shape[dim]
    last = (n - 1) // stride * stride  # the last position kept
    out = x.new_empty(x.shape[:dim] + (last // stride + 1,) + x.shape[dim + 1 :])
    every = lambda start, stop: x[(slice(None),) * dim + (slice(start, stop, stride),)]  # noqa: E731
    out.narrow(dim, 0, 1).copy_(x.narrow(dim, 1, 1) - x.narrow(dim, 0, 1))
    inner = out.narrow(dim, 1, (last - 1) // stride if last == n - 1 else last // stride)
    torch.sub(every(stride + 1, n), every(stride - 1, n - 2), out=inner).div_(2)
    if last == n - 1 and last > 0:
        out.narrow(dim, -1, 1).copy_(x.narrow(dim, n - 1, 1) - x.narrow(dim, n - 2, 1))
    return out


def _gradient_every(x: Tensor, stride: int) -> tuple[Tensor, Tensor]:
    """``torch.gradient`` of ``x`` along its last two dimensions, at every ``stride``-th
    row and column, computed there only."""
    return _central_difference(x[..., ::stride], -2, stride), _central_difference(x[..., ::stride, :], -1, stride)


class _Level:
    """One level of the estimation: its canonical grid, the map from canonical points to
    the normalised coordinates of ``grid_sample`` on that level, and its interior."""

    def __init__(
        self, shape: tuple[int, int], spacing: int, margin: int, full: tuple[int, int], device, offset: float = 0.0
    ) -> None:
        height, width = full
        s = max(height, width) / 2
        h, w = shape
        # Level pixel j is full-resolution pixel j * spacing + offset.
        y = (torch.arange(h, device=device, dtype=torch.float32) * spacing + offset - (height - 1) / 2) / s
        x = (torch.arange(w, device=device, dtype=torch.float32) * spacing + offset - (width - 1) / 2) / s
        self.y, self.x = torch.meshgrid(y, x, indexing="ij")
        self.scale = s / spacing  # level pixels per canonical unit
        # normalised = ((canonical * s + (side - 1) / 2 - offset) / spacing) / (n - 1) * 2 - 1
        self.to_normal = _small_matrix(
            [
                [2 * s / (spacing * (w - 1)), 0, ((width - 1) / 2 - offset) * 2 / (spacing * (w - 1)) - 1],
                [0, 2 * s / (spacing * (h - 1)), ((height - 1) / 2 - offset) * 2 / (spacing * (h - 1)) - 1],
                [0, 0, 1],
            ],
            device,
        )
        self.interior = torch.zeros(h, w, dtype=torch.bool, device=device)
        self.interior[margin : h - margin, margin : w - margin] = True

    def every(self, stride: int) -> _Level:
        """The same level with only every ``stride``-th point of its grid, each way."""
        level = copy.copy(self)
        level.x, level.y, level.interior = (a[::stride, ::stride] for a in (self.x, self.y, self.interior))
        return level

    def sample(self, image: Tensor, matrix: Tensor, projective: bool) -> tuple[Tensor, Tensor]:
        """``image`` (``(B, C, h, w)``) at ``matrix @ x`` of the grid's points, ``(B, C, h', w')``,
        and which points land inside it, ``(B, h', w')``."""
        n = matmul3x3(self.to_normal, matrix).float().view(-1, 9, 1, 1)
        grid = self.x.new_empty(n.shape[0], *self.x.shape, 2)  # x and y written in place, not stacked
        nx, ny = grid.unbind(-1)
        for row, out in ((0, nx), (1, ny)):
            torch.mul(n[:, 3 * row], self.x, out=out).add_(n[:, 3 * row + 1] * self.y).add_(n[:, 3 * row + 2])
        if projective:
            denominator = n[:, 6] * self.x + n[:, 7] * self.y + n[:, 8]
            nx.div_(denominator), ny.div_(denominator)
        inside = (nx.abs() <= 1) & (ny.abs() <= 1)
        sampled = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=True)
        return sampled, inside


def _margin(level: int) -> int:
    """Interior margin of LK level ``level`` (each level halves the band's border reach)."""
    return max(2, math.ceil(_MARGIN / 2**level))


def _phase_start(template: Tensor, image: Tensor, spacing: int, full: tuple[int, int]) -> Tensor:
    """Starting matrices: the whole-pixel shifts with ``image(x + d) ~ template(x)`` at the
    coarsest level. A start only (Gauss-Newton finds the sub-pixel part); our own: kornia
    has no phase correlation, scikit-image's runs in numpy on the host."""
    b, _, h, w = template.shape
    window = torch.outer(torch.hann_window(h, device=template.device), torch.hann_window(w, device=template.device))
    cross = torch.fft.rfft2(image[:, 0] * window) * torch.fft.rfft2(template[:, 0] * window).conj()
    correlation = torch.fft.irfft2(cross / cross.abs().clamp_min(1e-12), s=(h, w))
    peak = correlation.flatten(1).argmax(1)
    dy, dx = peak // w, peak % w
    dx = torch.where(dx > w // 2, dx - w, dx).double()
    dy = torch.where(dy > h // 2, dy - h, dy).double()
    s = max(full) / 2
    start = torch.eye(3, dtype=torch.float64, device=template.device).repeat(b, 1, 1)
    start[:, 0, 2], start[:, 1, 2] = dx * spacing / s, dy * spacing / s
    return start


def _estimate(template: _Features, image: _Features, model: str, start: Tensor | None = None) -> Tensor:
    """``M`` (``(B, 3, 3)``, canonical, float64) with ``image(M x) ~ template(x)``, per pair.

    Inverse compositional: the Hessian of each level comes from the template alone, is
    factorised once, and every step costs one sampling and ``P`` sums. The finest level
    works on the blur-matched pair (the frames' samples and the template's gradient
    blended as ``_match_blur`` says); the finest ``_STRIDED_LEVELS`` on every
    ``_FINE_STRIDE``-th point. Nothing is read back to the host.
    """
    device = template.levels[0].device
    full = (template.height, template.width)
    coarsest = len(template.levels) - 1
    matrix = start if start is not None else _phase_start(
        template.levels[coarsest], image.levels[coarsest], template.spacing[coarsest], full
    )
    for index in range(coarsest, -1, -1):
        t, i = template.levels[index], image.levels[index]
        batch = t.shape[0]
        level = _Level(t.shape[-2:], template.spacing[index], _margin(index), full, device)
        stride = _FINE_STRIDE if index < _STRIDED_LEVELS and index < coarsest else 1
        matched = weights = sampled = None
        if index == 0 and coarsest > 0:  # the coarser levels' estimate is close enough to compare blur
            t, i = template.blurred[0], image.blurred[0]
            matched, weights, sampled = _match_blur(t, i, level, matrix, model == "homography")
        t, gy, gx = (_blend(x, matched) for x in (t[..., ::stride, ::stride], *_gradient_every(t, stride)))
        level = level.every(stride)
        jacobian = _steepest_descent(model, gx * level.scale, gy * level.scale, level.x, level.y)
        size = jacobian.shape[1]
        weighted = (jacobian * level.interior).flatten(2)  # the Jacobian of the interior pixels, zero elsewhere
        # The lower triangle's products, a row at a time, summed at once.
        rows, columns = torch.tril_indices(size, size, device=device)
        products = weighted.new_empty(batch, rows.shape[0], weighted.shape[-1])
        for p in range(size):
            first = p * (p + 1) // 2  # row p's place in the triangle
            torch.mul(weighted[:, p : p + 1], weighted[:, : p + 1], out=products[:, first : first + p + 1])
        hessian = torch.empty(batch, size, size, dtype=torch.float64, device=device)
        hessian[:, rows, columns] = hessian[:, columns, rows] = fixed_sum(products).double()
        diagonal = hessian.diagonal(dim1=1, dim2=2)
        hessian = hessian + torch.diag_embed(diagonal.mean(-1, keepdim=True).expand_as(diagonal) * _DAMPING)
        factor = cholesky(hessian)
        for _ in range(_ITERATIONS_FINE if index == 0 else _ITERATIONS_COARSE):
            warped, inside = sampled or level.sample(i, matrix, model == "homography")
            warped, sampled = _blend(warped, weights), None
            error = ((warped - t) * inside).flatten(1)
            step = cholesky_solve(factor, fixed_sum(weighted * error[:, None]).double())
            matrix = matmul3x3(matrix, inverse3x3(_delta(model, step)))
            matrix = matrix / matrix[:, 2:, 2:]
    return matrix


# -- blur matching: for the finest level's estimate and the no-harm test ----------------


def _block_sums(x: Tensor, height: int, width: int) -> Tensor:
    """``x`` (``(..., H, W)``) summed over blocks of ``height`` x ``width`` (the rows and
    columns past the last whole block are left out), ``(..., H // height, W // width)``:
    down each block's columns first (whole rows at a time), then along its rows."""
    *lead, h, w = x.shape
    rows, columns = h // height, w // width
    x = fixed_sum(x[..., : rows * height, : columns * width].reshape(*lead, rows, height, columns * width), -2)
    return fixed_sum(x.reshape(*lead, rows, columns, width))


def _tile_sums(x: Tensor) -> Tensor:
    """``(..., h, w)`` summed over a ``_TILES`` x ``_TILES`` grid, ``(..., _TILES * _TILES)``."""
    return _block_sums(x, x.shape[-2] // _TILES, x.shape[-1] // _TILES).flatten(-2)


def _blurs(x: Tensor) -> list[Tensor]:
    """``x`` blurred ``1 .. _MATCH_BLURS`` times by the 5-tap binomial (the 9-tap one, twice)."""
    blurred = []
    for _ in range(_MATCH_BLURS):
        x = separable_filter(x, binomial_taps(5))
        blurred.append(x)
    return blurred


def _with_blurs(x: Tensor) -> Tensor:
    """``x`` (``(B, 1, h, w)``) followed by its ``_blurs`` as channels, ``(B, 1 + _MATCH_BLURS, h, w)``."""
    return torch.cat([x, *_blurs(x)], 1)


def _blur_matched(template: Tensor, image: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Per tile, the mean squared difference after blurring whichever frame is sharper
    there to the other's blur: the best of the frames as they are and of each blurred by
    each of ``_blurs`` (``template``, ``image``: ``(B, 1 + _MATCH_BLURS, h, w)``, each
    frame followed by its blurs; ``valid``: ``(B, h, w)``), ``(B, tiles)``; and which was
    best: 0 the frames as they are, ``1 + 2 k`` the template blurred ``k + 1`` times,
    ``2 + 2 k`` the image (on a tie, the first of these)."""
    pairs = [(0, 0)] + [pair for k in range(1, image.shape[1]) for pair in ((0, k), (k, 0))]  # (image, template)
    squared = image.new_empty(image.shape[0], len(pairs), *image.shape[-2:])  # written in place, not stacked
    for slot, (i, t) in enumerate(pairs):
        torch.sub(image[:, i], template[:, t], out=squared[:, slot])
    squared.pow_(2).mul_(valid[:, None])
    residual = _tile_sums(squared) / _tile_sums(valid.float()).clamp_min(1)[:, None]
    return residual.min(1)


def _match_blur(
    template: Tensor, image: Tensor, level: _Level, matrix: Tensor, projective: bool
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor]]:
    """Blur matching of a pair (``(B, 1 + _MATCH_BLURS, h, w)``: band images, ``image(matrix
    x) ~ template(x)``, each followed by its ``_blurs``): tile by tile, the sharper of the
    two is blurred to the other's focus, as ``_blur_matched`` chooses, on every
    ``_FINE_STRIDE``-th point of the template's grid; the choices blend bilinearly between
    the tiles.

    Returns:
        On those points, how much of each blur the template takes and how much the
        image's samples take (``_blend``), ``(B, _MATCH_BLURS, h', w')`` each (blending
        samples rather than frames needs no map of the choices on the image's grid nor
        at full resolution); and the image's channels sampled there at ``matrix`` and
        where they are inside (``_Level.sample``): the first Gauss-Newton step's samples.
    """
    grid = level.every(_FINE_STRIDE)
    warped, inside = grid.sample(image, matrix, projective)
    points = template[..., ::_FINE_STRIDE, ::_FINE_STRIDE]
    _, choice = _blur_matched(points, warped, inside & grid.interior)
    # 1 in the tiles that chose 1 + 2 k (the template blurred), 2 + 2 k (the image), blended between tiles.
    options = torch.arange(1, 1 + 2 * _MATCH_BLURS, device=choice.device).view(1, -1, 1, 1)
    chosen = choice.view(-1, 1, _TILES, _TILES) == options
    share = F.interpolate(chosen.to(template.dtype), size=points.shape[-2:], mode="bilinear")
    return share[:, 0::2], share[:, 1::2], (warped, inside)


def _blend(channels: Tensor, weights: Tensor | None) -> Tensor:
    """A frame's channels (``(B, 1 + K, h, w)``: as it is, then blurred ``1 .. K`` times)
    blended by ``weights`` (``(B, K, h, w)``; ``None``: the frame as it is), ``(B, h, w)``.
    Of the template's gradient, too: the weights' own slope, over a tile's width, is
    left out."""
    blended = channels[:, 0]
    for k in range(0 if weights is None else weights.shape[1]):
        blended = blended + weights[:, k] * (channels[:, k + 1] - blended)
    return blended


# -- checks and decisions ----------------------------------------------------------------


def _implausible(matrix: Tensor, model: str) -> Tensor:
    """Per matrix, 0 or the ``_REASONS`` key of the first check it fails (device, no sync)."""
    linear = matrix[:, :2, :2]
    scale = (linear[:, 0, 0] * linear[:, 1, 1] - linear[:, 0, 1] * linear[:, 1, 0]).abs().sqrt()
    rotation = torch.atan2(linear[:, 1, 0] - linear[:, 0, 1], linear[:, 0, 0] + linear[:, 1, 1])
    shift = matrix[:, :2, 2].norm(dim=-1)
    perspective = matrix[:, 2, :2].abs().amax(-1) if model == "homography" else torch.zeros_like(shift)
    failed = [
        ~torch.isfinite(matrix).flatten(1).all(-1),
        (scale - 1).abs() > _MAX_SCALE_STEP,
        rotation.abs() > _MAX_ROTATION,
        shift > _MAX_SHIFT,
        perspective > _MAX_PERSPECTIVE,
    ]
    reason = torch.zeros_like(shift, dtype=torch.int64)
    for key, fails in reversed(list(enumerate(failed, start=1))):  # the first failing check wins
        reason = torch.where(fails, key, reason)
    return reason


def _check(template: _Features, image: _Features, estimate: Tensor, model: str) -> dict[str, Tensor]:
    """How well each estimate explains its pair, against no motion at all (``(B,)`` each).

    The fit is judged on the finest level, on every ``_FINE_STRIDE``-th point unless
    the no-harm test runs there too; the no-harm test on ``_test_level``.
    """
    full = (template.height, template.width)
    stats = {}
    test = _test_level(template.levels)
    for index in sorted({0, test}):
        stride = 1 if index == test else _FINE_STRIDE  # the fit's mean residual: every other point will do
        t, i = template.levels[index][:, 0], image.levels[index]
        level = _Level(t.shape[-2:], template.spacing[index], _margin(index), full, t.device).every(stride)
        t = t[:, ::stride, ::stride]
        moved, inside = level.sample(i, estimate, model == "homography")
        moved = moved[:, 0]
        still = i[:, 0, ::stride, ::stride]  # the identity samples every point where it is
        valid = inside & level.interior
        if index == 0:
            count = fixed_sum(valid.flatten(1).float()).clamp_min(1)
            stats["residual"] = fixed_sum(((moved - t) ** 2 * valid).flatten(1)) / count
            stats["still"] = fixed_sum(((still - t) ** 2 * valid).flatten(1)) / count
        if index == test:  # stride 1: the frames' own blurs
            before, _ = _blur_matched(template.blurred[index], image.blurred[index], valid)
            moved = _with_blurs(moved[:, None])
            after, _ = _blur_matched(template.blurred[index], moved, valid)
            stats["better"] = 1 - fixed_sum(after) / fixed_sum(before).clamp_min(1e-12)
            used = (_tile_sums(valid.float()) > 0).float()  # tiles inside the margin do not vote
            stats["tiles_better"] = fixed_sum((after < before).float() * used) / fixed_sum(used).clamp_min(1)
    stats["correlation"] = 1 - stats["residual"] / 2  # of unit-spread band-pass images
    stats["move"] = largest_move(estimate, template.height, template.width)
    implausible = _implausible(estimate, model)
    stats["reason"] = torch.where(implausible > 0, implausible, torch.where(stats["correlation"] < _MIN_CORRELATION, 6, 0))
    return stats


def _steps(template: _Features, image: _Features, model: str) -> tuple[Tensor, Tensor, Tensor]:
    """Each pair's step (``_estimate``), its decision (``_check``, ``_decide``) and why:
    the failed check's ``_REASONS`` key and the correlation, ``(B, 2)``."""
    estimated = _estimate(template, image, model)
    stats = _check(template, image, estimated, model)
    return estimated, _decide(stats), torch.stack([stats["reason"].double(), stats["correlation"]], -1)


def _chunk_steps(layout: tuple, *tensors: Tensor) -> tuple[Tensor, ...]:
    """What a CUDA graph replays for each chunk (``StackAligner``): the features of the
    frames' ``_reduced`` luminance (the frame before the chunk's first comes first), then
    each later frame's step from the one before it, its decision and why (``_steps``).

    ``layout``: ``(spacing, height, width, model)``; ``tensors``: the luminance
    ``(B, 1, h, w)``, and the opacity if the frames have one."""
    spacing, height, width, model = layout
    luma, opaque = tensors[0], (tensors[1] if len(tensors) > 1 else None)
    features = _pyramid(luma, spacing, opaque, height, width)
    count = luma.shape[0]
    return _steps(features.pick(slice(0, count - 1)), features.pick(slice(1, count)), model)


#: A chunk's estimation as CUDA graphs, kept for the process: every stack of a batch of
#: one size replays the same graph.
_CHUNK_STEPS = GraphedFunction(_chunk_steps, "the alignment's motion estimation")


def _decide(stats: dict[str, Tensor]) -> Tensor:
    """Per step, ``_TAKEN``, ``_NO_MOTION``, ``_FAILED`` or ``_WORSE_THAN_NONE`` (device)."""
    significant = (stats["move"] >= _MIN_STEP_PX) & (stats["better"] >= _MIN_BETTER)
    significant &= stats["tiles_better"] >= _MIN_TILES_BETTER
    decision = torch.where(significant, _TAKEN, _NO_MOTION)
    # Only a step that would be taken can fail this way: one too small to take is no
    # motion anyway (two identical frames: no motion leaves no residual at all).
    worse = significant & (stats["residual"] > stats["still"] * _WORSE)
    decision = torch.where(worse, _WORSE_THAN_NONE, decision)
    return torch.where(stats["reason"] > 0, _FAILED, decision)


# -- exposure and resampling ------------------------------------------------------------


def _low(frames: Tensor, opaque: Tensor | None = None) -> tuple[Tensor, int]:
    """Block means a few dozen to a side (focus no longer shows at that scale), and the
    block size in full-resolution pixels (the rows and columns past the last whole block
    are left out). With ``opaque``, its block means come last, as one more channel."""
    if opaque is not None:
        frames = torch.cat([frames, opaque], 1)
    block = 1
    while min(frames.shape[-2:]) // (2 * block) >= 32:
        block *= 2
    # Pairwise sums, faster than avg_pool2d here (bench/alignment.py breakdown, _low).
    return _block_sums(frames.float(), block, block) / (block * block), block


def _gains(
    low: tuple[Tensor, int], reference_low: Tensor, matrices: Tensor, full: tuple[int, int], masked: bool = False
) -> Tensor:
    """Per frame and channel, the factor that makes the frame's mean brightness over the
    area it covers the reference's; 1 where the two differ by less than ``_MIN_GAIN``
    (``(B, C)``, device).

    Exposure flicker scales the signal; a ratio of means of heavily blurred copies is
    blind to focus (a regression slope is not: a blurrier frame would get a lower gain).
    A difference within ``_MIN_GAIN`` is left alone: frames focused differently differ
    that much by themselves, and matching them to one frame would tint or darken the
    whole result by that frame's difference.
    """
    low, block = low
    level = _Level(low.shape[-2:], block, 0, full, low.device, offset=(block - 1) / 2)  # block centres
    warped, inside = level.sample(low, matrices, True)
    if masked:  # the last channel is opacity (``_low``): compare only what both frames show
        inside = inside & (warped[:, -1] > 0.999) & (reference_low[:, -1] > 0.999)
        warped, reference_low = warped[:, :-1], reference_low[:, :-1]
    weight = inside.float()[:, None]
    frame_mean = fixed_sum((warped * weight).flatten(2))  # per frame and channel
    reference_mean = fixed_sum((reference_low * weight).flatten(2))
    gain = (reference_mean / frame_mean.clamp_min(1e-12)).clamp(0.5, 2.0)
    return torch.where((gain - 1).abs() > _MIN_GAIN, gain, torch.ones_like(gain))


def _still(matrix: Tensor, height: int, width: int) -> bool:
    """Whether a transform moves no pixel by more than ``_STILL_PX``: no resampling."""
    return largest_move(matrix, height, width) < _STILL_PX


def warp_frame(
    frame: Tensor, matrix: Tensor, box: tuple[int, int, int, int] | None = None, out: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Resample ``frame`` (``(1, C, H, W)``) at ``matrix @ x`` for every pixel ``x`` of its grid.

    ``matrix`` is canonical (``M_r->i``, CPU). Bicubic; pixels whose source falls outside
    the frame get the nearest edge value and are marked invalid. A transform that moves
    no pixel by more than ``_STILL_PX`` leaves the frame as it is.

    Args:
        box: ``(top, left, height, width)``: only this part of the grid (a tile).
        out: ``(1, C, h, w)``, the box's size: written into (a chunk's tensor; one copy
            fewer than making it from the frames' own results).

    Returns:
        ``(warped, valid)`` with ``valid`` ``(1, 1, h, w)`` bool, the box's size.
    """
    height, width = frame.shape[-2:]
    top, left, box_h, box_w = box or (0, 0, height, width)
    if _still(matrix, height, width):
        inside = torch.ones(1, 1, box_h, box_w, dtype=torch.bool, device=frame.device)
        part = frame[..., top : top + box_h, left : left + box_w]
        return (part if out is None else out.copy_(part)), inside
    pixel = to_pixel_matrix(matrix, height, width).float()
    affine = bool((pixel[2] == torch.tensor([0.0, 0.0, 1.0])).all())  # host: no division by 1
    pixel = pixel.to(frame.device)
    # grid_sample's CPU kernel gives each batch element to one thread: the rows are cut
    # into a band per thread, sampled as a batch of the same frame (the same numbers).
    bands = torch.get_num_threads() if frame.device.type == "cpu" else 1
    rows = -(-box_h // bands)
    grid, inside = sampling_grid(pixel, affine, (top, left, rows * bands, box_w), (height, width))
    grid = grid.to(frame.dtype)
    warped = F.grid_sample(
        frame.expand(bands, -1, -1, -1), grid.view(bands, rows, box_w, 2),
        mode="bicubic", padding_mode="border", align_corners=True,
    )
    inside = inside[None, None, :box_h]
    if bands == 1 and out is None:
        return warped, inside
    if out is None:
        out = warped.new_empty(1, frame.shape[1], box_h, box_w)
    for band in range(bands):  # the bands into place
        start = band * rows
        count = min(rows, box_h - start)
        if count > 0:
            out[0, :, start : start + count].copy_(warped[band, :, :count])
    return out, inside


def apply_transform(
    frame: Tensor, transform: FrameTransform, box: tuple[int, int, int, int] | None = None
) -> tuple[Tensor, Tensor]:
    """``warp_frame`` of ``frame`` (``(1, C, H, W)``) with the transform's matrix, then its
    exposure gain: ``apply_transforms`` of one frame, ``valid`` always a mask."""
    return _with_valid(*apply_transforms(frame, [transform], box))


def moves(transforms: list[FrameTransform], height: int, width: int, exposure: bool = True) -> bool:
    """Whether any of ``transforms`` moves a pixel of a ``height`` x ``width`` frame
    (``_STILL_PX``) or, with ``exposure``, changes its exposure."""
    return not all((t.gain is None or not exposure) and _still(t.matrix, height, width) for t in transforms)


def apply_transforms(
    frames: Tensor, transforms: list[FrameTransform], box: tuple[int, int, int, int] | None = None,
    exposure: bool = True, out: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``apply_transform`` of each of ``frames`` (``(B, C, H, W)``) by its transform, the
    results written into one tensor (``out``, the box's size, where given);
    ``exposure=False``: the motion only (for a mask).

    Returns:
        ``(aligned, valid)``, ``valid`` ``(B, 1, h, w)`` bool; where no frame moves or
        changes exposure, the frames themselves (a view, no copy, unless ``out``) and
        ``None``.
    """
    height, width = frames.shape[-2:]
    top, left, box_h, box_w = box or (0, 0, height, width)
    if not moves(transforms, height, width, exposure):
        part = frames[..., top : top + box_h, left : left + box_w]
        return (part if out is None else out.copy_(part)), None
    aligned = frames.new_empty(frames.shape[0], frames.shape[1], box_h, box_w) if out is None else out
    valid = []
    for i, (frame, transform) in enumerate(zip(frames, transforms)):
        valid.append(warp_frame(frame[None], transform.matrix, box, out=aligned[i : i + 1])[1])
        if exposure and transform.gain is not None:
            aligned[i].mul_(transform.gain.to(frames.device, frames.dtype).view(-1, 1, 1))
    return aligned, torch.cat(valid)


def _with_valid(aligned: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
    """``apply_transforms``' result with ``valid`` ``None`` (every pixel) made a mask."""
    if valid is None:
        valid = torch.ones(aligned.shape[0], 1, *aligned.shape[-2:], dtype=torch.bool, device=aligned.device)
    return aligned, valid


# -- the aligner ---------------------------------------------------------------------------


class StackAligner:
    """Aligns frames to the reference as they stream in; memory stays one frame's features.

    Args:
        options: the motion model; the reference frame (with frame 0, one pass does it
            all, ``transforms`` chunk by chunk; otherwise every frame goes through
            ``estimate`` first); exposure matching; the estimation size; global refinement.

    Every call handles a chunk of frames, in stack order, and reads the device back once.
    """

    def __init__(self, options: AlignOptions) -> None:
        self.options = options
        self.model = options.model
        self.reference = options.reference
        self._chain: list[Tensor] = []  # M_0->i (CPU, float64) of the frames estimated so far
        self._chain_end: Tensor | None = None  # the last of them, on the device
        self._fallbacks: list[str | None] = []
        self._previous: _Features | None = None  # the last frame estimated
        self._last_step: Tensor | None = None  # the last step taken, for a frame that fails
        self._reference: _Features | None = None  # for global refinement
        self._reference_low: Tensor | None = None
        self._too_small = False
        self._taken_any = False  # a step was taken: a failed one repeats it
        self.results: list[FrameTransform] = []
        self.names: list[str] | None = None
        self._graphed = _CHUNK_STEPS  # on CUDA, each chunk's estimation replayed as one graph
        self._widest = 0  # the most frames a chunk has had: the graph's batch
        self._previous_reduced: tuple[Tensor, Tensor | None] | None = None  # the last frame's, for the graph

    def _name(self, index: int) -> str:
        if self.names is not None and index < len(self.names):
            return f"frame {index} ({self.names[index]})"
        return f"frame {index}"

    def _chain_on_device(
        self, frames: Tensor, first_index: int, opaque: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, _Features | None]:
        """The chunk's ``M_0->i`` on the device; each step's decision; and what a warning
        about it needs (the failed check's ``_REASONS`` key, the correlation), ``(B, 2)``."""
        if first_index != len(self._chain):
            raise ValueError(f"frames must come in order: expected frame {len(self._chain)}, got {first_index}")
        device = frames.device
        eye = torch.eye(3, dtype=torch.float64, device=device)
        count = frames.shape[0]
        height, width = frames.shape[-2:]
        if first_index == 0 and min(height, width) < MIN_ALIGN_SIDE:
            self._too_small = True
            warnings.warn(
                f"{width}x{height} frames are too small to align (at least {MIN_ALIGN_SIDE}x{MIN_ALIGN_SIDE}); "
                "fusing them as they are",
                AlignmentWarning,
                stacklevel=5,
            )
        no_decision = torch.full((count,), _NO_MOTION, device=device)
        no_reason = torch.zeros(count, 2, dtype=torch.float64, device=device)
        if self._too_small:
            return eye.repeat(count, 1, 1), no_decision, no_reason, None
        luma, spacing, small_opaque = _reduced(frames, self.options.size, opaque)
        first = int(first_index == 0)  # frame 0 has no step: the identity
        features = None  # made where the steps need them, or global alignment does
        if self._graphed.active(device):
            estimated, decided, reasons = self._through_graph(luma, spacing, small_opaque, height, width, first)
            self._previous = None  # a chunk after this one gets the luminance
        else:
            features = _pyramid(luma, spacing, small_opaque, height, width)
            estimated, decided, reasons = eye.repeat(0, 1, 1), no_decision[:0], no_reason[:0]  # a first frame alone
            if count > first:
                if self._previous is None and not first:  # the chunk before went through the graph
                    last_luma, last_opaque = self._previous_reduced
                    self._previous = _pyramid(last_luma, spacing, last_opaque, height, width)
                templates = features.pick(slice(0, count - 1))
                if not first:
                    templates = _Features.cat([self._previous, templates])
                images = features.pick(slice(first, count))
                estimated, decided, reasons = _steps(templates, images, self.model)
            self._previous = features.pick(slice(count - 1, count))
        self._previous_reduced = (luma[-1:], None if small_opaque is None else small_opaque[-1:])
        if features is None and self.options.global_align:
            features = _pyramid(luma, spacing, small_opaque, height, width)
        if first_index == 0 and self.options.global_align:
            self._reference = features.pick(slice(0, 1))  # reference 0; other references: see estimate()
        steps = torch.cat([eye.repeat(first, 1, 1), estimated])
        decisions = torch.cat([no_decision[:first], decided])
        why = torch.cat([no_reason[:first], reasons])
        # Sequentially, in stack order: a failed step repeats the last one taken.
        previous = self._chain_end if self._chain_end is not None else eye
        last = self._last_step if self._last_step is not None else eye
        chain = []
        for i in range(count):
            decision = decisions[i]
            taken = torch.where(decision == _TAKEN, steps[i], torch.where(decision == _FAILED, last, eye))
            last = torch.where(decision == _TAKEN, steps[i], last)
            previous = matmul3x3(taken, previous)
            chain.append(previous)
        self._last_step, self._chain_end = last, previous
        return torch.stack(chain), decisions, why, features

    def _through_graph(
        self, luma: Tensor, spacing: int, opaque: Tensor | None, height: int, width: int, first: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``_chunk_steps`` as a CUDA graph (``self._graphed``), one for every chunk: the
        frame before the chunk comes first (the first chunk's own first frame, a pair
        whose step is dropped: ``first``), and the frames are padded with copies of the
        last to the most a chunk has had. Returns the steps, decisions and reasons of the
        chunk's frames from ``first`` on."""
        count = luma.shape[0]
        before = (luma[:1], None if opaque is None else opaque[:1]) if first else self._previous_reduced
        self._widest = max(self._widest, count)
        padding = self._widest - count  # copies of the last frame, made on the device (no index from the host)
        inputs = [torch.cat([start, x, x[-1:].expand(padding, *x.shape[1:])])
                  for start, x in zip(before, (luma, opaque)) if x is not None]
        outputs = self._graphed((spacing, height, width, self.model), *inputs)
        return tuple(t[first:count] for t in outputs)

    def _record(self, chain: Tensor, decisions: Tensor, why: Tensor, first_index: int) -> None:
        """Keep the chain (host) and warn, in one line per frame, about steps replaced."""
        for offset in range(chain.shape[0]):
            index = first_index + offset
            self._chain.append(chain[offset])
            decision, reason = int(decisions[offset]), int(why[offset, 0])
            if index and log.isEnabledFor(logging.INFO):  # frame 0 takes no step
                linear = chain[offset][:2, :2]
                scale = float(linear.det().abs().sqrt())
                degrees = math.degrees(math.atan2(float(linear[1, 0] - linear[0, 1]), float(linear[0, 0] + linear[1, 1])))
                step = {_TAKEN: "motion taken", _NO_MOTION: "no significant motion", _FAILED: "failed",
                        _WORSE_THAN_NONE: "worse than none"}[decision]
                log.info("%s: step %s; to frame 0: scale %.4f, rotation %.3f deg", self._name(index), step, scale, degrees)
            fallback = None
            if decision == _FAILED:
                text = _REASONS[reason].format(float(why[offset, 1]))
                replacement = "the previous step's motion" if self._taken_any else "no motion"
                fallback = f"{text}; using {replacement}"
            elif decision == _WORSE_THAN_NONE:
                fallback = "the residual is worse than with no motion; using no motion"
            self._taken_any |= decision == _TAKEN
            if fallback is not None:
                warnings.warn(f"{self._name(index)}: alignment failed ({fallback})", AlignmentWarning, stacklevel=4)
            self._fallbacks.append(fallback)

    @staticmethod
    def _read_back(*tensors: Tensor) -> list[Tensor]:
        """One transfer to the host for everything a chunk's decisions produced."""
        flat = [t.reshape(t.shape[0], -1).double() for t in tensors]
        host = torch.cat(flat, dim=1).cpu()
        out, start = [], 0
        for t, f in zip(tensors, flat):
            out.append(host[:, start : start + f.shape[1]].reshape(t.shape))
            start += f.shape[1]
        return out

    def estimate(self, frames: Tensor, first_index: int, mask: Tensor | None = None) -> list[Tensor]:
        """First pass: ``M_0->i`` of each of ``frames`` (``(B, C, H, W)`` float), chained;
        ``mask``: the frames' alpha (``(B, 1, H, W)``), if they have one."""
        frames, opaque = _opaque(frames, mask)
        chain, decisions, why, features = self._chain_on_device(frames, first_index, opaque)
        offset = self.reference - first_index
        if 0 <= offset < frames.shape[0]:
            if self.options.match_exposure:
                self._reference_low = _low(*_pick(frames, opaque, slice(offset, offset + 1)))[0]
            if features is not None and self.options.global_align:
                self._reference = features.pick(slice(offset, offset + 1))
        chain, decisions, why = self._read_back(chain, decisions, why)
        self._record(chain, decisions, why, first_index)
        return list(chain)

    def transforms(self, frames: Tensor, first_index: int, mask: Tensor | None = None) -> list[FrameTransform]:
        """How each of ``frames`` (``(B, C, H, W)`` float, in stack order) maps onto the reference.

        With reference 0 the frames' motion is estimated here, as they come in order;
        otherwise ``estimate`` must have seen the whole stack. ``mask``: the frames'
        alpha (``(B, 1, H, W)``), if they have one: transparent pixels are not used.
        """
        frames, opaque = _opaque(frames, mask)
        count, device = frames.shape[0], frames.device
        full = tuple(frames.shape[-2:])
        single_pass = self.reference == 0 and first_index == len(self._chain)
        features = None
        if single_pass:
            matrices, decisions, why, features = self._chain_on_device(frames, first_index, opaque)
        elif first_index + count <= len(self._chain) and self.reference < len(self._chain):
            to_reference = torch.linalg.inv(self._chain[self.reference])  # M_r->i = M_0->i M_0->r^-1
            matrices = torch.stack([self._chain[first_index + i] @ to_reference for i in range(count)]).to(device)
        else:
            raise ValueError(f"frame {first_index} has no estimate: run estimate() over the stack first")
        if self.options.global_align and self._reference is not None and not self._too_small:
            if features is None:  # the second pass: features again
                features = _features(frames, self.options.size, opaque)
            matrices = self._refine(features, matrices)
        gains = torch.ones(count, frames.shape[1], dtype=torch.float64, device=device)
        if self.options.match_exposure and not self._too_small:
            if self._reference_low is None and first_index <= self.reference < first_index + count:
                start = self.reference - first_index
                self._reference_low = _low(*_pick(frames, opaque, slice(start, start + 1)))[0]
            gains = _gains(_low(frames, opaque), self._reference_low, matrices, full, opaque is not None).double()
        if single_pass:
            matrices, gains, decisions, why = self._read_back(matrices, gains, decisions, why)
            self._record(matrices, decisions, why, first_index)
        else:
            matrices, gains = self._read_back(matrices, gains)
        found = []
        for i in range(count):
            gain = None if bool((gains[i] == 1).all()) else gains[i].float()
            found.append(FrameTransform(matrices[i], gain, None, self._fallbacks[first_index + i]))
        for i, transform in enumerate(found):
            index = first_index + i
            if index < len(self.results):  # a frame seen again (a retried chunk, a second pass)
                self.results[index] = transform
            else:
                self.results.append(transform)
        return found

    def _refine(self, features: _Features, matrices: Tensor) -> Tensor:
        """Global alignment: each frame against the reference itself, starting from the
        chain; a refinement that fails its checks or the no-harm test keeps the chain's
        matrix."""
        reference = self._reference.pick([0] * features.levels[0].shape[0])
        refined = _estimate(reference, features, self.model, start=matrices)
        taken = _decide(_check(reference, features, refined, self.model)) == _TAKEN  # the no-harm test, too
        return torch.where(taken.view(-1, 1, 1), refined, matrices)

    def align(
        self, frames: Tensor, first_index: int, box: tuple[int, int, int, int] | None = None, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Map ``frames`` (``(B, C, H, W)`` float) onto the reference grid (or a ``box`` of it);
        ``mask``: as for ``transforms``.

        Returns:
            ``(aligned, valid)``: the frames and a ``(B, 1, h, w)`` bool mask of the
            pixels that their data covers.
        """
        return _with_valid(*apply_transforms(frames, self.transforms(frames, first_index, mask), box))


def transforms_to_json(
    results: list[FrameTransform], names: list[str], height: int, width: int, options: AlignOptions
) -> dict:
    """The per-frame transforms as a JSON-ready dict (pixel coordinates)."""
    return {
        "reference": options.reference,
        "model": options.model,
        "width": width,
        "height": height,
        "convention": "matrix maps a pixel (x, y, 1) of the reference frame, x to the right and y down, "
        "to the frame's pixel that shows the same point (divide by the third coordinate); "
        "the aligned frame is frame * gain + offset, per channel (R, G, B)",
        "frames": [
            {
                "index": i,
                "file": name,
                "matrix": to_pixel_matrix(result.matrix, height, width).tolist(),
                "gain": None if result.gain is None else result.gain.tolist(),
                "offset": None if result.offset is None else result.offset.tolist(),
                "fallback": result.fallback,
            }
            for i, (name, result) in enumerate(zip(names, results))
        ],
    }


def transforms_from_json(report, height: int, width: int) -> list[FrameTransform]:
    """``transforms_to_json``'s dict read back, for frames of ``height`` x ``width``.

    Raises:
        ValueError: what is wrong with it, in a few words (not the transforms of frames
            of this size, a frame's matrix not 3x3 numbers, ...).
    """
    if not isinstance(report, dict) or not isinstance(report.get("frames"), list):
        raise ValueError("not a file of per-frame transforms (gpufocus --save-transforms)")
    if (report.get("width"), report.get("height")) != (width, height):
        raise ValueError(f"transforms of {report.get('width')}x{report.get('height')} frames, not {width}x{height}")
    to_pixels, to_canonical = _pixel_axes(height, width, "cpu")

    def vector(value, index: int, name: str) -> Tensor | None:
        if value is None:
            return None
        try:
            return torch.tensor(value, dtype=torch.float64)
        except (TypeError, ValueError):
            raise ValueError(f"frame {index}: its {name} is not a list of numbers") from None

    transforms = []
    for index, frame in enumerate(report["frames"]):
        try:
            matrix = torch.tensor(frame["matrix"], dtype=torch.float64)
        except (KeyError, TypeError, ValueError):
            matrix = None
        if matrix is None or matrix.shape != (3, 3) or not bool(torch.isfinite(matrix).all()):
            raise ValueError(f"frame {index}: no 3x3 matrix of numbers")
        transforms.append(FrameTransform(
            matmul3x3(matmul3x3(to_canonical, matrix), to_pixels), vector(frame.get("gain"), index, "gain"),
            vector(frame.get("offset"), index, "offset"), frame.get("fallback"),
        ))
    return transforms


def inner_rectangle(valid: Tensor) -> tuple[int, int, int, int]:
    """A large axis-aligned rectangle inside the ``True`` region of an ``(H, W)`` mask.

    Shrinks the bounding box one row or column at a time from the side with the most
    invalid pixels (the valid region of warped frames is convex, so this finds a
    rectangle close to the largest). Returns ``(top, bottom, left, right)``, exclusive ends.
    """
    mask = valid.cpu()
    top, bottom, left, right = 0, mask.shape[0], 0, mask.shape[1]
    while top < bottom and left < right:
        box = mask[top:bottom, left:right]
        bad = {
            "top": int((~box[0]).sum()),
            "bottom": int((~box[-1]).sum()),
            "left": int((~box[:, 0]).sum()),
            "right": int((~box[:, -1]).sum()),
        }
        side = max(bad, key=bad.get)
        if bad[side] == 0:
            break
        if side == "top":
            top += 1
        elif side == "bottom":
            bottom -= 1
        elif side == "left":
            left += 1
        else:
            right -= 1
    return top, bottom, left, right
