"""Slow, obviously-correct numpy versions of the engine's steps, for tests only.

Everything loops over pixels with explicit windows and explicit border indices;
nothing is vectorized beyond what numpy does inside one pixel.
"""

from __future__ import annotations

import math

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114])


def reflect(i: int, n: int) -> int:
    """Index into a side of ``n`` samples, reflected without repeating the edge (OpenCV REFLECT_101)."""
    while i < 0 or i >= n:
        i = -i if i < 0 else 2 * (n - 1) - i
    return i


def filter2d(plane: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate a 2-D plane with a 2-D kernel, reflect borders."""
    h, w = plane.shape
    kh, kw = kernel.shape
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            total = 0.0
            for dy in range(kh):
                for dx in range(kw):
                    total += kernel[dy, dx] * plane[reflect(y + dy - kh // 2, h), reflect(x + dx - kw // 2, w)]
            out[y, x] = total
    return out


BINOMIAL5 = np.array([1, 4, 6, 4, 1]) / 16


def pyr_down(image: np.ndarray) -> np.ndarray:
    """(C, H, W): blur with the 5x5 binomial kernel, keep even rows and columns."""
    kernel = np.outer(BINOMIAL5, BINOMIAL5)
    return np.stack([filter2d(channel, kernel)[::2, ::2] for channel in image])


def pyr_up(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) -> (C, H, W): insert zeros between samples, blur with 4x the binomial kernel."""
    zeros = np.zeros((image.shape[0],) + size)
    zeros[:, ::2, ::2] = image
    kernel = np.outer(BINOMIAL5, BINOMIAL5) * 4
    return np.stack([filter2d(channel, kernel) for channel in zeros])


def laplacian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    gaussian = [image]
    for _ in range(levels):
        gaussian.append(pyr_down(gaussian[-1]))
    details = [g - pyr_up(g_next, g.shape[1:]) for g, g_next in zip(gaussian, gaussian[1:])]
    return details + [gaussian[-1]]


def collapse(pyramid: list[np.ndarray]) -> np.ndarray:
    image = pyramid[-1]
    for detail in reversed(pyramid[:-1]):
        image = pyr_up(image, detail.shape[1:]) + detail
    return image


def measured(coefficients: np.ndarray, per_channel: bool) -> np.ndarray:
    """(C, H, W) -> the planes decisions are made on: luminance (1, H, W) or every channel."""
    if per_channel:
        return coefficients
    return np.tensordot(LUMA, coefficients, axes=1)[None]


def pick(scores: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Per pixel (and per decision plane), the value of the frame with the first largest score.

    scores: (N, S, H, W); values: (N, C, H, W) with S in (1, C).
    """
    n, s, h, w = scores.shape
    out = np.zeros(values.shape[1:])
    for plane in range(values.shape[1]):
        for y in range(h):
            for x in range(w):
                winner = int(np.argmax(scores[:, plane if s > 1 else 0, y, x]))
                out[plane, y, x] = values[winner, plane, y, x]
    return out


def binomial(size: int) -> np.ndarray:
    row = np.array([math.comb(size - 1, k) for k in range(size)], dtype=float)
    return row / row.sum()


def max_energy(frames: np.ndarray, levels: int, kernel_size: int, per_channel: bool = False) -> np.ndarray:
    pyramids = [laplacian_pyramid(frame, levels) for frame in frames]
    window = np.outer(binomial(kernel_size), binomial(kernel_size))
    fused = []
    for level in range(levels):
        coefficients = np.stack([p[level] for p in pyramids])
        energy = np.stack(
            [np.stack([filter2d(m**2, window) for m in measured(c, per_channel)]) for c in coefficients]
        )
        fused.append(pick(energy, coefficients))
    fused.append(np.mean([p[-1] for p in pyramids], axis=0))
    return collapse(fused)


def _deviation(plane: np.ndarray, size: int) -> np.ndarray:
    h, w = plane.shape
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            area = np.array(
                [[plane[reflect(y + dy, h), reflect(x + dx, w)] for dx in range(-(size // 2), size // 2 + 1)]
                 for dy in range(-(size // 2), size // 2 + 1)]
            )
            out[y, x] = np.square(area - area.mean()).sum() / area.size
    return out


def _entropy(plane: np.ndarray, size: int) -> np.ndarray:
    q = np.mod(np.round(plane * 255).astype(np.int64), 256)
    p = np.bincount(q.ravel(), minlength=256) / q.size
    h, w = plane.shape
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            total = 0.0
            for dy in range(-(size // 2), size // 2 + 1):
                for dx in range(-(size // 2), size // 2 + 1):
                    v = q[reflect(y + dy, h), reflect(x + dx, w)]
                    total -= v * np.log(p[v])
            out[y, x] = total
    return out


def wang_chang(frames: np.ndarray, levels: int, kernel_size: int, per_channel: bool = False) -> np.ndarray:
    pyramids = [laplacian_pyramid(frame, levels) for frame in frames]
    a = 0.4
    generating = np.array([0.25 - a / 2, 0.25, a, 0.25, 0.25 - a / 2])
    region = np.outer(generating, generating)
    fused = []
    for level in range(levels - 1):
        coefficients = np.stack([p[level] for p in pyramids])
        energy = np.stack(
            [np.stack([filter2d(m**2, region) for m in measured(c, per_channel)]) for c in coefficients]
        )
        fused.append(pick(energy, coefficients))
    top = np.stack([p[levels - 1] for p in pyramids])
    planes = np.stack([measured(c, per_channel) for c in top])  # (N, S, h, w)
    dev = np.stack([[_deviation(m, kernel_size) for m in f] for f in planes])
    ent = np.stack([[_entropy(m, kernel_size) for m in f] for f in planes])
    out = np.zeros(top.shape[1:])
    for c in range(top.shape[1]):
        s = c if per_channel else 0
        for y in range(top.shape[2]):
            for x in range(top.shape[3]):
                d, e = dev[:, s, y, x], ent[:, s, y, x]
                if np.argmax(d) == np.argmax(e):
                    out[c, y, x] = top[np.argmax(d), c, y, x]
                elif np.argmin(d) == np.argmin(e):
                    out[c, y, x] = top[np.argmin(d), c, y, x]
                else:
                    out[c, y, x] = top[:, c, y, x].mean()
    fused.append(out)
    fused.append(np.mean([p[-1] for p in pyramids], axis=0))
    return collapse(fused)


def max_log(frames: np.ndarray, kernel_size: int) -> np.ndarray:
    sigma = 3.0
    offsets = np.arange(kernel_size) - kernel_size // 2
    gauss = np.exp(-(offsets**2) / (2 * sigma**2))
    gauss /= gauss.sum()
    laplace = np.array([[2.0, 0, 2], [0, -8, 0], [2, 0, 2]])
    scores = np.stack(
        [np.abs(filter2d(filter2d(measured(f, False)[0], np.outer(gauss, gauss)), laplace))[None] for f in frames]
    )
    return pick(scores, frames)


def noise_level(frames: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N,): per frame, the squared lower median of |luminance - its 5x5
    binomial blur| over rows 2, 18, 34, ... and every column two or more from the sides."""
    kernel = np.outer(BINOMIAL5, BINOMIAL5)
    out = []
    for frame in frames:
        luma = np.tensordot(LUMA, frame, axes=1)
        h, w = luma.shape
        values = []
        for y in range(2, h - 2, 16):
            for x in range(2, w - 2):
                values.append(abs(luma[y, x] - float((kernel * luma[y - 2 : y + 3, x - 2 : x + 3]).sum())))
        out.append(sorted(values)[(len(values) - 1) // 2] ** 2)
    return np.array(out)


def half_window_energy(plane: np.ndarray, size: int) -> np.ndarray:
    """(H, W) -> (H, W): the least of the four half-window binomial means (the window's
    rows above, below, columns left or right of the centre cut off, the centre kept)."""
    taps, r = binomial(size), size // 2
    h, w = plane.shape
    halves = []
    for axis in (0, 1):
        for side in (-1, 1):
            cut = taps.copy()
            if side < 0:
                cut[r + 1 :] = 0
            else:
                cut[:r] = 0
            cut /= cut.sum()
            weights = np.outer(cut, taps) if axis == 0 else np.outer(taps, cut)
            halves.append(filter2d(plane, weights))
    return np.minimum.reduce(halves)


def max_energy_guarded(
    frames: np.ndarray, levels: int, kernel_size: int, half_share: float, min_jump: int, jump_share: float,
    min_sharpness: float, noise_factor: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``max_energy`` on the luminance with the halo guard (gpufocus.halo's notes), pixel
    by pixel; also the finest level's frame index per pixel."""
    n = len(frames)
    pyramids = [laplacian_pyramid(frame, levels) for frame in frames]
    window = np.outer(binomial(kernel_size), binomial(kernel_size))
    fused = []
    for level in range(1, levels):
        coefficients = np.stack([p[level] for p in pyramids])
        energy = np.stack([[filter2d(measured(c, False)[0] ** 2, window)] for c in coefficients])
        fused.append(pick(energy, coefficients))
    coefficients = np.stack([p[0] for p in pyramids])
    luma0 = [measured(p[0], False)[0] for p in pyramids]
    luma1 = [measured(p[1], False)[0] for p in pyramids]
    energy = np.stack([filter2d(m**2, window) for m in luma0])
    half = np.stack([half_window_energy(m**2, kernel_size) for m in luma0])
    coarser = np.stack([pyr_up(filter2d(m**2, window)[None], luma0[0].shape)[0] for m in luma1])
    sharpness = energy / np.maximum(coarser, np.finfo(float).tiny)
    score = np.minimum(energy, half / half_share)
    floor = noise_factor * noise_level(frames).min()
    jump = max(min_jump, math.ceil(jump_share * (n - 1)))
    finest, index = np.zeros(coefficients.shape[1:]), np.zeros(luma0[0].shape, dtype=int)
    for y in range(index.shape[0]):
        for x in range(index.shape[1]):
            best, other = int(np.argmax(energy[:, y, x])), int(np.argmax(score[:, y, x]))
            if (
                abs(other - best) >= jump and sharpness[other, y, x] >= min_sharpness and energy[best, y, x] >= floor
                and half[other, y, x] >= floor and score[other, y, x] >= floor
            ):
                best = other
            index[y, x] = best
            finest[:, y, x] = coefficients[best, :, y, x]
    fused.insert(0, finest)
    fused.append(np.mean([p[-1] for p in pyramids], axis=0))
    return collapse(fused), index
