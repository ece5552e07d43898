"""A minimal DNG writer for the tests: a Bayer mosaic with the tags LibRaw needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

__all__ = ["write_dng"]


def write_dng(path: Path, mosaic: np.ndarray, neutral=(1, 1, 1), black: int = 64, white: int = 4095) -> Path:
    """``mosaic`` (``(H, W)`` uint16, RGGB) as a DNG with an identity colour matrix and
    ``neutral`` as the camera's white balance (AsShotNeutral, as fractions of 1000)."""
    identity = (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1)
    as_shot = tuple(v for n in neutral for v in (round(n * 1000), 1000))
    tags = [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, "s", 0, "gpufocus test camera", True),  # UniqueCameraModel
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, (0, 1, 1, 2), True),  # CFAPattern: RGGB
        (50710, "B", 3, (0, 1, 2), True),  # CFAPlaneColor
        (50714, "H", 1, (black,), True),  # BlackLevel
        (50717, "H", 1, (white,), True),  # WhiteLevel
        (50721, "2i", 9, identity, True),  # ColorMatrix1
        (50778, "H", 1, (21,), True),  # CalibrationIlluminant1: D65
        (50728, "2I", 3, as_shot, True),  # AsShotNeutral
    ]
    tifffile.imwrite(path, mosaic.astype(np.uint16), photometric=32803, extratags=tags, metadata=None, subfiletype=0)
    return path
