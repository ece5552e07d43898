"""Registration of a focus stack: every frame mapped onto the reference frame's grid.

Method: inverse-compositional Lucas-Kanade (Baker & Matthews), coarse to fine, on a
band-pass image of the luminance, between neighbouring frames (their blur differs
least), the pair transforms chained to the reference. A phase correlation at the
coarsest level gives the starting shift. Per level the iteration count is fixed, so a
CUDA run never waits on the host. Why not ``kornia.geometry.ImageRegistrator``: it
runs gradient descent with Adam, one pair at a time, with a host sync per iteration;
Gauss-Newton steps converge in a few iterations instead of hundreds.

Transforms are 3x3 matrices in *canonical* coordinates: full-resolution pixel
coordinates, centred on the image and divided by half the longer side, so that the
same matrix serves every pyramid level. A matrix ``M_a->b`` maps a point of frame
``a`` to the point of frame ``b`` that shows the same scene point; frame ``i`` aligned to
the reference ``r`` is ``frame_i(M_r->i x)``.

Estimates are checked (finite; plausible scale, rotation and shift between neighbours;
band-pass images that correlate once aligned; a residual no worse than with no
motion); a failed one falls back to the previous step's motion (or to none) with a
warning that names the frame.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .color import luminance
from .errors import GpufocusWarning
from .options import ALIGN_MODELS, AlignOptions
from .pyramid import pyr_down, separable_filter

__all__ = [
    "MODELS",
    "MIN_ALIGN_SIDE",
    "AlignmentWarning",
    "FrameTransform",
    "StackAligner",
    "estimate_pair",
    "warp_frame",
    "apply_transform",
    "to_pixel_matrix",
    "transforms_to_json",
    "inner_rectangle",
]

#: Motion models and their number of parameters.
MODELS = dict(zip(ALIGN_MODELS, (2, 4, 6, 8)))

#: Frames whose shorter side is smaller than this are fused as they are: too few pixels
#: to register (the band-pass filter alone reaches 12 pixels).
MIN_ALIGN_SIDE = 32
_WORK_SIDE = 1024  # estimate on images whose longer side is at most this
_COARSEST_SIDE = 40  # LK pyramid: stop reducing below this shorter side
_ITERATIONS_COARSE, _ITERATIONS_FINE = 10, 4
_DAMPING = 1e-6
# Plausible motion between neighbouring frames (canonical units: half the longer side).
_MAX_SCALE_STEP, _MAX_ROTATION, _MAX_SHIFT, _MAX_PERSPECTIVE = 0.05, math.radians(5), 0.25, 0.05
# Transforms that move no point by more than this many pixels are the identity: no
# resampling of a frame that did not move.
_STILL_PX = 0.01
# A neighbour-to-neighbour step smaller than this (pixels, at the corners) is taken as
# no motion: between frames focused differently the estimate has a small bias (measured
# 0.01-0.03 px a step on the shared still stacks), and a chain would add it up.
_STILL_STEP_PX = 0.05
# An estimate whose residual exceeds no motion's by this factor has failed.
_WORSE = 1.02
# Aligned neighbours whose band-pass images correlate less than this do not match.
# Measured on the shared stacks: 0.50 for the worst real pair (mffw_04, strong defocus),
# 0.69 and more for the others.
_MIN_CORRELATION = 0.2


class AlignmentWarning(GpufocusWarning):
    """An estimate was rejected and replaced; the message names the frame."""


@dataclass
class FrameTransform:
    """How one frame was mapped onto the reference.

    ``matrix`` is ``M_r->i`` in canonical coordinates (see the module notes); ``gain``
    and ``offset`` (per channel) make its exposure match the reference's;
    ``fallback`` says why the estimate was replaced, or is ``None``.
    """

    matrix: Tensor
    gain: Tensor | None = None
    offset: Tensor | None = None
    fallback: str | None = None


def _canonical(height: int, width: int) -> Tensor:
    """``C`` with ``pixel = C @ canonical``: centre and half the longer side."""
    s = max(height, width) / 2
    return torch.tensor([[s, 0, (width - 1) / 2], [0, s, (height - 1) / 2], [0, 0, 1]], dtype=torch.float64)


def to_pixel_matrix(matrix: Tensor, height: int, width: int) -> Tensor:
    """A canonical transform in full-resolution pixel coordinates ``(x, y, 1)``."""
    c = _canonical(height, width)
    return c @ matrix.double().cpu() @ torch.linalg.inv(c)


def _delta(model: str, p: Tensor) -> Tensor:
    """The 3x3 matrix of a parameter step ``p`` (``(P,)``, float64)."""
    m = torch.eye(3, dtype=p.dtype, device=p.device)
    if model == "translation":
        m[0, 2], m[1, 2] = p[0], p[1]
    elif model == "similarity":  # x' = (1 + a) x - b y + tx, y' = b x + (1 + a) y + ty
        m[0, 0], m[0, 1], m[0, 2] = 1 + p[0], -p[1], p[2]
        m[1, 0], m[1, 1], m[1, 2] = p[1], 1 + p[0], p[3]
    elif model == "affine":
        m[0, 0], m[1, 0], m[0, 1], m[1, 1], m[0, 2], m[1, 2] = 1 + p[0], p[1], p[2], 1 + p[3], p[4], p[5]
    else:
        m[0, 0], m[0, 1], m[0, 2] = 1 + p[0], p[1], p[2]
        m[1, 0], m[1, 1], m[1, 2] = p[3], 1 + p[4], p[5]
        m[2, 0], m[2, 1] = p[6], p[7]
    return m


def _steepest_descent(model: str, gx: Tensor, gy: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """Template gradient times the warp's Jacobian at the identity, ``(P, h, w)``."""
    if model == "translation":
        parts = [gx, gy]
    elif model == "similarity":
        parts = [gx * x + gy * y, gy * x - gx * y, gx, gy]
    elif model == "affine":
        parts = [gx * x, gy * x, gx * y, gy * y, gx, gy]
    else:
        radial = gx * x + gy * y
        parts = [gx * x, gx * y, gx, gy * x, gy * y, gy, -x * radial, -y * radial]
    return torch.stack(parts)


def _gaussian_taps(sigma: float) -> tuple[float, ...]:
    """Normalised Gaussian taps out to three sigma.

    Not ``kornia.filters.get_gaussian_kernel1d``: its taps agree to the last bit or one
    unit in it, but importing kornia would add 0.2 s to every command's start.
    """
    radius = max(1, math.ceil(3 * sigma))
    taps = [math.exp(-(k * k) / (2 * sigma * sigma)) for k in range(-radius, radius + 1)]
    return tuple(t / sum(taps) for t in taps)


def _band_pass(image: Tensor) -> Tensor:
    """Difference of Gaussians (sigma 1 and 4): edges without shading, less blur-sensitive
    than the finest detail; scaled to unit spread so exposure changes do not matter."""
    fine = separable_filter(image, _gaussian_taps(1.0))
    coarse = separable_filter(image, _gaussian_taps(4.0))
    band = fine - coarse
    return band / band.flatten(1).std(dim=1).clamp_min(1e-8).view(-1, 1, 1, 1)


@dataclass
class _Features:
    """A frame's band-pass pyramid, finest level first, and the pixel spacing of each
    level in full-resolution pixels."""

    levels: list[Tensor]
    spacing: list[int]
    height: int
    width: int


def _features(frame: Tensor) -> _Features:
    """``frame``: ``(1, C, H, W)`` float."""
    height, width = frame.shape[-2:]
    image, spacing = luminance(frame), 1
    while max(image.shape[-2:]) > _WORK_SIDE and min(image.shape[-2:]) >= 16:
        image, spacing = pyr_down(image), spacing * 2
    levels, spacings = [_band_pass(image.float())], [spacing]
    while min(levels[-1].shape[-2:]) >= 2 * _COARSEST_SIDE:
        levels.append(pyr_down(levels[-1]))
        spacings.append(spacings[-1] * 2)
    return _Features(levels, spacings, height, width)


def _sample(image: Tensor, matrix: Tensor, grid_x: Tensor, grid_y: Tensor, spacing: int, full: tuple[int, int]):
    """``image`` (level pixels) at ``matrix @ (x, y)`` of canonical points; and which land inside."""
    height, width = full
    s = max(height, width) / 2
    m = matrix.to(grid_x.dtype)
    denominator = m[2, 0] * grid_x + m[2, 1] * grid_y + m[2, 2]
    wx = (m[0, 0] * grid_x + m[0, 1] * grid_y + m[0, 2]) / denominator
    wy = (m[1, 0] * grid_x + m[1, 1] * grid_y + m[1, 2]) / denominator
    h, w = image.shape[-2:]
    px = (wx * s + (width - 1) / 2) / spacing  # level pixel coordinates
    py = (wy * s + (height - 1) / 2) / spacing
    inside = (px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)
    grid = torch.stack((px / (w - 1) * 2 - 1, py / (h - 1) * 2 - 1), dim=-1)[None]
    sampled = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)
    return sampled[0, 0], inside


def _level_grid(shape: tuple[int, int], spacing: int, full: tuple[int, int], device) -> tuple[Tensor, Tensor]:
    height, width = full
    s = max(height, width) / 2
    h, w = shape
    y = (torch.arange(h, device=device, dtype=torch.float32) * spacing - (height - 1) / 2) / s
    x = (torch.arange(w, device=device, dtype=torch.float32) * spacing - (width - 1) / 2) / s
    return torch.meshgrid(y, x, indexing="ij")[::-1]


def _phase_shift(template: Tensor, image: Tensor) -> tuple[float, float]:
    """Shift ``(dx, dy)`` in level pixels such that ``image(x + d) ~ template(x)``.

    The whole-pixel peak: it only starts Gauss-Newton, which finds the sub-pixel part.
    Our own: kornia has no phase correlation, scikit-image's runs in numpy on the host.
    """
    h, w = template.shape[-2:]
    window = torch.outer(torch.hann_window(h, device=template.device), torch.hann_window(w, device=template.device))
    a = torch.fft.rfft2(template[0, 0] * window)
    b = torch.fft.rfft2(image[0, 0] * window)
    cross = b * a.conj()
    correlation = torch.fft.irfft2(cross / cross.abs().clamp_min(1e-12), s=(h, w))
    peak = int(torch.argmax(correlation))
    dy, dx = divmod(peak, w)
    return float(dx - w if dx > w // 2 else dx), float(dy - h if dy > h // 2 else dy)


def estimate_pair(template: _Features, image: _Features, model: str, start: Tensor | None = None):
    """Estimate ``M`` (canonical, float64) with ``image(M x) ~ template(x)``.

    Returns:
        ``(matrix, residual, still_residual)``: the mean squared difference of the
        finest level's band-pass images after the warp, and with no motion at all.
    """
    device = template.levels[0].device
    full = (template.height, template.width)
    s = max(full) / 2
    matrix = torch.eye(3, dtype=torch.float64, device=device) if start is None else start.clone()
    coarsest = len(template.levels) - 1
    if start is None:  # a starting shift from the phase correlation of the coarsest level
        dx, dy = _phase_shift(template.levels[coarsest], image.levels[coarsest])
        spacing = template.spacing[coarsest]
        matrix[0, 2], matrix[1, 2] = dx * spacing / s, dy * spacing / s
    for level in range(coarsest, -1, -1):
        t, i, spacing = template.levels[level], image.levels[level], template.spacing[level]
        grid_x, grid_y = _level_grid(t.shape[-2:], spacing, full, device)
        gy, gx = torch.gradient(t[0, 0], dim=(0, 1))
        scale = s / spacing  # level pixels per canonical unit
        pairs = _steepest_descent(model, gx * scale, gy * scale, grid_x, grid_y).flatten(1)
        iterations = _ITERATIONS_FINE if level == 0 else _ITERATIONS_COARSE
        for _ in range(iterations):
            warped, inside = _sample(i, matrix, grid_x, grid_y, spacing, full)
            error = ((warped - t[0, 0]) * inside).flatten()
            weights = pairs * inside.flatten()
            # Sums over the image in float32 are good to about 1e-5: plenty for a step.
            hessian = (weights @ pairs.T).double()
            hessian += torch.eye(len(pairs), dtype=torch.float64, device=device) * _DAMPING * hessian.diagonal().mean()
            step = torch.linalg.solve(hessian, (weights @ error).double())
            matrix = matrix @ torch.linalg.inv(_delta(model, step))
            matrix = matrix / matrix[2, 2]
    t0, i0 = template.levels[0], image.levels[0]
    grid_x, grid_y = _level_grid(t0.shape[-2:], template.spacing[0], full, device)
    warped, inside = _sample(i0, matrix, grid_x, grid_y, template.spacing[0], full)
    residual = (((warped - t0[0, 0]) ** 2) * inside).sum() / inside.sum().clamp_min(1)
    still = ((i0 - t0) ** 2).mean()  # the frames have one size, so their features do too
    return matrix, float(residual), float(still)


def _implausible(matrix: Tensor, model: str) -> str | None:
    if not torch.isfinite(matrix).all():
        return "no convergence"
    linear = matrix[:2, :2]
    scale = math.sqrt(abs(float(torch.linalg.det(linear))))
    if abs(scale - 1) > _MAX_SCALE_STEP:
        return f"scale step {scale:.3f} is beyond {1 + _MAX_SCALE_STEP:.2f}"
    rotation = math.atan2(float(linear[1, 0] - linear[0, 1]), float(linear[0, 0] + linear[1, 1]))
    if abs(rotation) > _MAX_ROTATION:
        return f"rotation step {math.degrees(rotation):.1f} degrees is beyond {math.degrees(_MAX_ROTATION):.0f}"
    if float(matrix[:2, 2].norm()) > _MAX_SHIFT:
        return "shift is beyond an eighth of the image"
    if model == "homography" and float(matrix[2, :2].abs().max()) > _MAX_PERSPECTIVE:
        return "perspective change is implausible"
    return None


def _largest_move(matrix: Tensor, height: int, width: int) -> float:
    """How far, in pixels, the transform moves the image's corners."""
    pixel = to_pixel_matrix(matrix, height, width)
    corners = torch.tensor([[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1], [width - 1, height - 1, 1]],
                           dtype=torch.float64).T
    moved = pixel @ corners
    moved = moved[:2] / moved[2]
    return float((moved - corners[:2]).norm(dim=0).max())


def warp_frame(
    frame: Tensor, matrix: Tensor, box: tuple[int, int, int, int] | None = None
) -> tuple[Tensor, Tensor]:
    """Resample ``frame`` (``(1, C, H, W)``) at ``matrix @ x`` for every pixel ``x`` of its grid.

    ``matrix`` is canonical (``M_r->i``). Bicubic; pixels whose source falls outside the
    frame get the nearest edge value and are marked invalid. A transform that moves no
    pixel by more than ``_STILL_PX`` leaves the frame as it is.

    Args:
        box: ``(top, left, height, width)``: only this part of the grid (a tile).

    Returns:
        ``(warped, valid)`` with ``valid`` ``(1, 1, h, w)`` bool, the box's size.
    """
    height, width = frame.shape[-2:]
    top, left, box_h, box_w = box or (0, 0, height, width)
    if _largest_move(matrix, height, width) < _STILL_PX:
        inside = torch.ones(1, 1, box_h, box_w, dtype=torch.bool, device=frame.device)
        return frame[..., top : top + box_h, left : left + box_w], inside
    pixel = to_pixel_matrix(matrix, height, width).float().to(frame.device)
    ys = torch.arange(top, top + box_h, device=frame.device, dtype=torch.float32)
    xs = torch.arange(left, left + box_w, device=frame.device, dtype=torch.float32)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    denominator = pixel[2, 0] * gx + pixel[2, 1] * gy + pixel[2, 2]
    px = (pixel[0, 0] * gx + pixel[0, 1] * gy + pixel[0, 2]) / denominator
    py = (pixel[1, 0] * gx + pixel[1, 1] * gy + pixel[1, 2]) / denominator
    # A pixel is covered when its centre falls on some pixel's area of the frame.
    inside = (px > -0.5) & (px < width - 0.5) & (py > -0.5) & (py < height - 0.5)
    grid = torch.stack((px / (width - 1) * 2 - 1, py / (height - 1) * 2 - 1), dim=-1)[None].to(frame.dtype)
    warped = F.grid_sample(frame, grid, mode="bicubic", padding_mode="border", align_corners=True)
    return warped, inside[None, None]


class StackAligner:
    """Aligns frames to the reference as they stream in; memory stays one frame's features.

    Args:
        options: the model; the reference frame (with frame 0, one pass does it all;
            otherwise every frame goes through ``estimate`` first, then ``align``);
            whether to scale each frame's channels to the reference's mean brightness,
            measured on a blurred copy where focus does not show.

    The aligned frames are resampled bicubically; pixels that no frame data covers
    are marked invalid (and filled with the nearest edge values), so the fusion can
    leave them to the frames that do cover them.
    """

    def __init__(self, options: AlignOptions) -> None:
        self.model = options.model
        self.reference = options.reference
        self.match_exposure = options.match_exposure
        self._chain: list[Tensor] = []  # M_0->i of the frames estimated so far
        self._fallbacks: list[str | None] = []
        self._last_step: Tensor | None = None
        self._previous: _Features | None = None
        self._reference_low: Tensor | None = None
        self._too_small = False  # frames below MIN_ALIGN_SIDE pass as they are
        self.results: list[FrameTransform] = []
        self.names: list[str] | None = None

    def _name(self, index: int) -> str:
        if self.names is not None and index < len(self.names):
            return f"frame {index} ({self.names[index]})"
        return f"frame {index}"

    def _step(self, frame: Tensor, index: int) -> tuple[Tensor, str | None]:
        """The motion from the previous frame to this one (``M_(i-1)->i``), checked.

        Returns the step and, where the estimate was replaced, why.
        """
        identity = torch.eye(3, dtype=torch.float64, device=frame.device)
        height, width = frame.shape[-2:]
        if index == 0 and min(height, width) < MIN_ALIGN_SIDE:
            self._too_small = True
            warnings.warn(
                f"{width}x{height} frames are too small to align (at least {MIN_ALIGN_SIDE}x{MIN_ALIGN_SIDE}); "
                "fusing them as they are",
                AlignmentWarning,
                stacklevel=4,
            )
        if self._too_small:
            return identity, None
        features = _features(frame)
        previous, self._previous = self._previous, features
        if previous is None:
            return identity, None
        step, residual, still = estimate_pair(previous, features, self.model, self._last_step)
        reason = _implausible(step, self.model)
        correlation = 1 - residual / 2  # of the unit-spread band-pass images
        if reason is None and correlation < _MIN_CORRELATION:
            reason = f"the frames do not match (correlation {correlation:.2f})"
        if reason is not None:  # a frame the method could not read: assume steady motion
            replacement = "the previous step's motion" if self._last_step is not None else "no motion"
            fallback = f"{reason}; using {replacement}"
            step = self._last_step if self._last_step is not None else identity
        elif residual > still * _WORSE:
            fallback = "the residual is worse than with no motion; using no motion"
            step = identity
        else:
            if _largest_move(step, features.height, features.width) < _STILL_STEP_PX:
                step = identity  # blur changes fake tiny motions; summed over a chain they would drift
            self._last_step = step
            return step, None
        warnings.warn(f"{self._name(index)}: alignment failed ({fallback})", AlignmentWarning, stacklevel=4)
        return step, fallback

    def _advance(self, frame: Tensor, index: int) -> Tensor:
        """Chain one more frame: its ``M_0->index``."""
        if index != len(self._chain):
            raise ValueError(f"frames must come in order: expected frame {len(self._chain)}, got {index}")
        step, fallback = self._step(frame, index)
        previous = self._chain[-1] if self._chain else torch.eye(3, dtype=torch.float64, device=step.device)
        self._chain.append(step @ previous)
        self._fallbacks.append(fallback)
        return self._chain[-1]

    def estimate(self, frames: Tensor, first_index: int) -> list[Tensor]:
        """First pass: ``M_0->i`` of each of ``frames`` (``(B, C, H, W)`` float), chained."""
        found = []
        for offset, frame in enumerate(frames):
            index = first_index + offset
            if index == self.reference and self.match_exposure:
                self._reference_low = self._low(frame[None])
            found.append(self._advance(frame[None], index))
        return found

    def transform(self, frame: Tensor, index: int) -> FrameTransform:
        """How frame ``index`` (``(1, C, H, W)`` float) maps onto the reference.

        With reference 0 the frames' motion is estimated here, as they come in order;
        otherwise ``estimate`` must have seen the whole stack.
        """
        if self.reference == 0 and index == len(self._chain):  # one pass: estimate as frames come
            to_reference = self._advance(frame, index)
        elif index < len(self._chain) and self.reference < len(self._chain):  # estimated already
            # M_r->i = M_0->i M_0->r^-1
            to_reference = self._chain[index] @ torch.linalg.inv(self._chain[self.reference])
        else:
            raise ValueError(f"frame {index} has no estimate: run estimate() over the stack first")
        gain = self._gain(frame, to_reference, index) if self.match_exposure and not self._too_small else None
        offset = None if gain is None else torch.zeros_like(gain)
        result = FrameTransform(to_reference.cpu(), gain, offset, self._fallbacks[index])
        if index < len(self.results):  # a frame seen again (a retried chunk, a second pass)
            self.results[index] = result
        else:
            self.results.append(result)
        return result

    def align(
        self, frames: Tensor, first_index: int, box: tuple[int, int, int, int] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Map ``frames`` (``(B, C, H, W)`` float) onto the reference grid (or a ``box`` of it).

        Returns:
            ``(aligned, valid)``: the frames and a ``(B, 1, h, w)`` bool mask of the
            pixels that their data covers.
        """
        aligned, valid = [], []
        for offset, frame in enumerate(frames):
            warped, inside = apply_transform(frame[None], self.transform(frame[None], first_index + offset), box)
            aligned.append(warped)
            valid.append(inside)
        return torch.cat(aligned), torch.cat(valid)

    def _low(self, frame: Tensor) -> Tensor:
        """A copy blurred to a few dozen pixels: focus no longer shows at that scale."""
        low = frame.float()
        while min(low.shape[-2:]) >= 32:
            low = pyr_down(low)
        return low

    def _gain(self, frame: Tensor, matrix: Tensor, index: int) -> Tensor | None:
        """Per channel, what makes the frame's mean over the covered area the reference's.

        Exposure flicker scales the signal; a gain from the ratio of means of heavily
        blurred copies is blind to focus (a regression slope is not: a blurrier frame
        would get a lower gain). The blurred copy is warped, not the frame: canonical
        transforms hold at any scale.
        """
        low = self._low(frame)
        if index == self.reference:
            if self._reference_low is None:
                self._reference_low = low
            return None
        warped, inside = warp_frame(low, matrix)
        weight = inside.float()
        mean_f = (warped * weight).sum(dim=(-2, -1))
        mean_r = (self._reference_low * weight).sum(dim=(-2, -1))
        return (mean_r / mean_f.clamp_min(1e-12)).clamp(0.5, 2.0).flatten().cpu()


def apply_transform(
    frame: Tensor, transform: FrameTransform, box: tuple[int, int, int, int] | None = None
) -> tuple[Tensor, Tensor]:
    """``warp_frame`` with the transform's matrix, then its exposure gain."""
    warped, inside = warp_frame(frame, transform.matrix.to(frame.device), box)
    if transform.gain is not None:
        warped = warped * transform.gain.to(frame.device, frame.dtype).view(1, -1, 1, 1)
    return warped, inside


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
