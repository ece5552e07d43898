"""Writing the fused image: format from the extension, 8 or 16 bits, atomic."""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import GpufocusError

__all__ = ["OUTPUT_FORMATS", "output_format", "check_output", "to_array", "write_image"]

#: Output extensions and the format each one writes.
OUTPUT_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}


def output_format(path: str | os.PathLike, bits: int = 8) -> str:
    """The format for ``path``'s extension, checked against the bit depth.

    Raises:
        GpufocusError: unknown extension, or 16 bits asked of JPEG.
    """
    path = Path(path)
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise GpufocusError(f"{path}: unsupported output extension {path.suffix!r} (use {', '.join(OUTPUT_FORMATS)})")
    if bits not in (8, 16):
        raise GpufocusError(f"{path}: --bits must be 8 or 16, not {bits}")
    if bits == 16 and fmt == "JPEG":
        raise GpufocusError(f"{path}: JPEG holds 8 bits per channel; write .png or .tif for 16 bits")
    return fmt


def check_output(path: str | os.PathLike, bits: int = 8, overwrite: bool = False) -> str:
    """Fail early, before any work, if ``path`` cannot be written.

    Returns:
        The output format (see ``output_format``).

    Raises:
        GpufocusError: bad extension, an existing file without ``overwrite``, or a
            missing or unwritable folder.
    """
    path = Path(path)
    fmt = output_format(path, bits)
    if path.is_dir():
        raise GpufocusError(f"{path}: is a directory; give an output file name")
    if path.exists() and not overwrite:
        raise GpufocusError(f"{path}: already exists (use --overwrite to replace it)")
    folder = path.parent
    if not folder.is_dir():
        raise GpufocusError(f"{path}: the folder {folder} does not exist")
    # Try it: permission bits do not tell (root, read-only mounts, ACLs).
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise GpufocusError(f"{path}: the folder {folder} is not writable ({error.strerror or error})") from None
    return fmt


def to_array(image: torch.Tensor, bits: int) -> np.ndarray:
    """``(C, H, W)`` floats in [0, 1] to a rounded ``uint8``/``uint16`` array.

    Three channels give ``(H, W, 3)``, one channel ``(H, W)``.
    """
    top = 65535 if bits == 16 else 255
    scaled = image.detach().float().cpu().clamp(0, 1).mul(top).round_().to(torch.int32)
    array = scaled.permute(1, 2, 0).numpy().astype(np.uint16 if bits == 16 else np.uint8)
    return array[:, :, 0] if array.shape[2] == 1 else array


def write_image(
    path: str | os.PathLike,
    image: torch.Tensor | np.ndarray,
    *,
    bits: int = 8,
    quality: int = 95,
    exif: bytes | None = None,
    icc: bytes | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an RGB image, atomically: to a temporary file in the same folder, then renamed.

    Args:
        path: output file; ``.jpg``/``.jpeg``, ``.png`` or ``.tif``/``.tiff``.
        image: ``(3, H, W)`` or ``(1, H, W)`` float tensor in [0, 1], or an ``(H, W, 3)``
            or ``(H, W)`` uint8/uint16 array (one channel writes a grey image).
        bits: 8 or 16 bits per channel (16 for PNG and TIFF only).
        quality: JPEG quality, 1-100.
        exif: EXIF block to embed.
        icc: ICC profile to embed.
        overwrite: replace an existing file.

    Returns:
        The path written.

    Raises:
        GpufocusError: see ``check_output``; also a failed write (disk full, ...).
    """
    path = Path(path)
    fmt = check_output(path, bits, overwrite)
    if not 1 <= quality <= 100:
        raise GpufocusError(f"{path}: --quality must be between 1 and 100, not {quality}")
    pixels = to_array(image, bits) if isinstance(image, torch.Tensor) else image
    temporary = None
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        with os.fdopen(handle, "wb") as out:
            if bits == 16 and pixels.ndim == 3:
                out.write(_encode_16bit(pixels, fmt, exif, icc))
            else:
                options = {"quality": quality, "subsampling": 0 if quality >= 90 else 2} if fmt == "JPEG" else {}
                if exif:
                    options["exif"] = exif
                if icc:
                    options["icc_profile"] = icc
                # RGB, L or (grey, 16 bits) I;16, from the array's shape and type
                Image.fromarray(pixels.astype(np.uint16 if bits == 16 else np.uint8)).save(out, format=fmt, **options)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except OSError as error:
        raise GpufocusError(f"{path}: cannot write ({error.strerror or error})") from None
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _encode_16bit(pixels: np.ndarray, fmt: str, exif: bytes | None, icc: bytes | None) -> bytes:
    """16-bit colour, which Pillow cannot hold: PNG by OpenCV, TIFF written here."""
    if fmt == "TIFF":
        return _tiff_16bit(pixels, exif, icc)
    import cv2

    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(pixels[:, :, ::-1]))  # OpenCV takes BGR
    if not ok:
        raise OSError("the PNG encoder failed")
    # OpenCV writes no metadata; PNG takes it as extra chunks after the header.
    return _png_with_metadata(encoded.tobytes(), exif, icc)


_ROWS_PER_STRIP = 64


def _tiff_16bit(pixels: np.ndarray, exif: bytes | None, icc: bytes | None) -> bytes:
    """A little-endian TIFF of 16-bit RGB: deflate strips with horizontal differencing,
    the ICC profile (tag 34675) and the EXIF tags (its own IFD, through tag 34665)."""
    from PIL import TiffImagePlugin

    height, width, _ = pixels.shape
    differenced = pixels.astype("<u2")
    differenced[:, 1:] = pixels[:, 1:] - pixels[:, :-1]  # predictor 2, wrapping as uint16 does
    strips = [
        zlib.compress(differenced[top : top + _ROWS_PER_STRIP].tobytes(), 6) for top in range(0, height, _ROWS_PER_STRIP)
    ]
    ifd = TiffImagePlugin.ImageFileDirectory_v2()
    if exif:
        source = Image.Exif()
        source.load(exif)
        for tag, value in source.items():
            if tag not in (0x8769, 0x8825):
                ifd[tag] = value
        for tag in (0x8769, 0x8825):  # the Exif and GPS IFDs, written as IFDs of their own
            if source.get_ifd(tag):
                ifd[tag] = source.get_ifd(tag)
    # Pillow lays out header, IFD, its out-of-line values, then the strips, and adds
    # the strips' start to offsets given from there.
    offsets = [sum(len(strip) for strip in strips[:i]) for i in range(len(strips))]
    for tag, value in {
        256: width, 257: height, 258: (16, 16, 16), 259: 8, 262: 2, 273: tuple(offsets), 274: 1, 277: 3,
        278: _ROWS_PER_STRIP, 279: tuple(len(s) for s in strips), 284: 1, 317: 2,
    }.items():
        ifd[tag] = value
    if icc:
        ifd[34675] = icc
    return b"II*\x00" + struct.pack("<I", 8) + ifd.tobytes(8) + b"".join(strips)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_with_metadata(png: bytes, exif: bytes | None, icc: bytes | None) -> bytes:
    extra = b""
    if icc:
        extra += _png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(icc))
    if exif:
        extra += _png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
    header_end = 8 + 8 + 13 + 4  # signature, IHDR length + type, IHDR data, CRC
    return png[:header_end] + extra + png[header_end:]
