"""Encoding one image into an open file: TIFF (tifffile), PNG (imagecodecs), JPEG (Pillow;
or NVIDIA's nvImageCodec from GPU memory, ``jpeg_encoder``).

Every format carries the ICC profile, the EXIF block and a ``Software`` tag that marks
the file as ours (``gpufocus 0.1.0 (fused image)``), so that a later run that lists
the folder can tell its own outputs from frames.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import struct
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, TiffImagePlugin

from .nvcodec import CODEC_CALLS, nvimgcodec_for
from .options import COMPRESSIONS, OutputOptions

if TYPE_CHECKING:
    import torch

__all__ = ["TIFF_COMPRESSIONS", "JpegEncoder", "encode_image", "encode_jpeg", "jpeg_encoder"]

#: ``--compression`` for TIFF and what tifffile calls it; all lossless, with the
#: horizontal predictor. Deflate is the default: every TIFF reader has it.
TIFF_COMPRESSIONS = dict(zip(COMPRESSIONS, ("adobe_deflate", "lzw", "zstd", None)))

_SOFTWARE = 0x0131
_SUB_IFDS = (0x8769, 0x8825)  # Exif, GPS
# IFD0 tags tifffile writes from its own arguments, and the ones it refuses as extra tags.
_TIFFFILE_OWN = {270, 282, 283, 296, 305, 306, 274}


def encode_image(
    out,
    pixels: np.ndarray,
    fmt: str,
    *,
    quality: int = OutputOptions.quality,
    exif: bytes | None = None,
    icc: bytes | None = None,
    software: str | None = None,
    compression: str = OutputOptions.compression,
) -> None:
    """Write ``pixels`` to the binary file ``out`` (opened for reading and writing).

    Args:
        out: the file, at position 0.
        pixels: ``(H, W)`` or ``(H, W, C)``, ``uint8`` or ``uint16`` (1 or 3 channels
            for PNG and JPEG, any number for TIFF; 8 bits for JPEG).
        fmt: ``TIFF``, ``PNG`` or ``JPEG``.
        quality: JPEG quality, 1-100.
        exif: an EXIF block (as Pillow's ``Exif.tobytes`` makes it) to embed.
        icc: an ICC profile to embed.
        software: the ``Software`` tag.
        compression: TIFF compression, a key of ``TIFF_COMPRESSIONS``.
    """
    tags = _tags(exif, software)
    if fmt == "TIFF":
        _tiff(out, pixels, tags, icc, TIFF_COMPRESSIONS[compression])
    elif fmt == "PNG":
        _png(out, pixels, tags, icc)
    else:
        _jpeg(out, pixels, tags, icc, quality)


def _tags(exif: bytes | None, software: str | None) -> Image.Exif:
    tags = Image.Exif()
    if exif:
        tags.load(exif)
    if software:
        tags[_SOFTWARE] = software
    return tags


# -- JPEG --------------------------------------------------------------------------------


def _full_colour(quality: int) -> bool:
    """Whether JPEG keeps the colour at full resolution (4:4:4), else halves it (4:2:0)."""
    return quality >= 90


def _jpeg(out, pixels: np.ndarray, tags: Image.Exif, icc: bytes | None, quality: int) -> None:
    options = {"quality": quality, "subsampling": 0 if _full_colour(quality) else 2}
    if len(tags):
        options["exif"] = tags.tobytes()
    if icc:
        options["icc_profile"] = icc
    Image.fromarray(_squeezed(pixels)).save(out, format="JPEG", **options)


@dataclasses.dataclass(frozen=True)
class JpegEncoder:
    """A JPEG encoder of pixels where they are: ``encode(pixels, quality)`` takes an
    ``(H, W, 3)`` ``uint8`` tensor on the encoder's device and gives the file's bytes
    (JFIF, no metadata; Pillow's quantisation tables and subsampling for ``quality``),
    or raises ``RuntimeError``. A CUDA tensor is read in the order of the calling
    thread's current stream."""

    name: str
    encode: Callable[[torch.Tensor, int], bytes]


@functools.cache
def jpeg_encoder(device: torch.device) -> JpegEncoder | None:
    """The JPEG encoder for pixels on ``device``, chosen once: NVIDIA's nvImageCodec (the
    ``gpufocus[cuda]`` extra), else ``None`` (the result is downloaded and Pillow
    encodes it). On the CPU: nvImageCodec's ``CPU_ONLY`` backend, the same code path
    without a GPU (the tests run it), or ``None``."""
    found = nvimgcodec_for("Encoder", device)
    if found is None:
        return None
    nvimgcodec, encoder = found

    def encode(pixels: torch.Tensor, quality: int) -> bytes:
        import torch

        css = nvimgcodec.ChromaSubsampling
        params = nvimgcodec.EncodeParams(
            quality_type=nvimgcodec.QualityType.QUALITY, quality_value=quality,
            chroma_subsampling=css.CSS_444 if _full_colour(quality) else css.CSS_420,
        )
        if pixels.device.type == "cuda":
            source, stream = pixels, torch.cuda.current_stream(pixels.device).cuda_stream
        else:
            source, stream = pixels.numpy(), 0
        with CODEC_CALLS:  # one call at a time: the encoder keeps its state between calls
            coded = encoder.encode(source, ".jpg", params=params, cuda_stream=stream)
        if coded is None:
            raise RuntimeError("nvImageCodec could not encode the image")
        return bytes(coded)

    return JpegEncoder(f"nvImageCodec {nvimgcodec.__version__}", encode)


def encode_jpeg(
    encoder: JpegEncoder,
    pixels: torch.Tensor,
    *,
    quality: int = OutputOptions.quality,
    exif: bytes | None = None,
    icc: bytes | None = None,
    software: str | None = None,
) -> bytes:
    """A JPEG file of ``pixels`` by ``encoder``, with the metadata ``encode_image`` gives
    it: the same bytes as ``encode_image`` writes where the encoder codes as Pillow does.

    Args:
        encoder: see ``jpeg_encoder``.
        pixels: ``(H, W, 3)`` ``uint8``, on the encoder's device.
        quality, exif, icc, software: see ``encode_image``.

    Raises:
        RuntimeError: the encoder failed.
        ValueError: an EXIF block too long for JPEG (as Pillow's).
    """
    coded = encoder.encode(pixels, quality)
    tags = _tags(exif, software)
    segments = []
    if len(tags):
        block = tags.tobytes()
        if len(block) > _SEGMENT - 2:
            raise ValueError("EXIF data is too long")
        segments.append(_segment(0xE1, block))
    if icc:  # Pillow's chunks: 65519 bytes of the profile each, numbered from 1
        chunks = [icc[i : i + _SEGMENT - 16] for i in range(0, len(icc), _SEGMENT - 16)]
        segments += [_segment(0xE2, b"ICC_PROFILE\0" + bytes([n, len(chunks)]) + c) for n, c in enumerate(chunks, 1)]
    at = 4 + struct.unpack(">H", coded[4:6])[0] if coded[2:4] == b"\xff\xe0" else 2  # after JFIF's APP0, as Pillow
    return coded[:at] + b"".join(segments) + coded[at:]


_SEGMENT = 65535  # a JPEG marker segment's largest length, its length field included


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _squeezed(pixels: np.ndarray) -> np.ndarray:
    """One channel as ``(H, W)``, in C order (the encoders take no strides)."""
    return np.ascontiguousarray(pixels[:, :, 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels)


# -- PNG ---------------------------------------------------------------------------------


def _png(out, pixels: np.ndarray, tags: Image.Exif, icc: bytes | None) -> None:
    import imagecodecs

    # OpenCV's settings (fast deflate, RLE strategy, the Sub filter): 5x faster than
    # libpng's defaults on 16-bit photographs, files a few percent larger.
    encoded = imagecodecs.png_encode(_squeezed(pixels), level=1, strategy=3, filter=16)
    extra = b""
    if icc:
        extra += _png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(icc))
    if len(tags):
        extra += _png_chunk(b"eXIf", tags.tobytes()[6:])  # without the "Exif\0\0" of JPEG's APP1
    if _SOFTWARE in tags:
        extra += _png_chunk(b"tEXt", b"Software\x00" + str(tags[_SOFTWARE]).encode("latin-1", "replace"))
    header_end = 8 + 8 + 13 + 4  # signature, IHDR length + type, IHDR data, CRC
    out.write(encoded[:header_end] + extra + encoded[header_end:])


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


# -- TIFF --------------------------------------------------------------------------------


def _tiff(out, pixels: np.ndarray, tags: Image.Exif, icc: bytes | None, compression: str | None) -> None:
    import tifffile

    ascii_tags = [
        (tag, "s", 0, str(value), True)
        for tag, value in tags.items()
        if tag not in _TIFFFILE_OWN and tag not in _SUB_IFDS and isinstance(value, str) and value
    ]
    options = {}
    if 282 in tags and 283 in tags:
        options["resolution"] = (float(tags[282]), float(tags[283]))
        options["resolutionunit"] = int(tags.get(296, 2))
    colour = pixels.ndim == 3 and pixels.shape[2] == 3
    tifffile.imwrite(
        out, np.ascontiguousarray(pixels), bigtiff=False, byteorder="<", photometric="rgb" if colour else "minisblack", planarconfig="contig",
        compression=compression, predictor=compression is not None, maxworkers=os.cpu_count(),
        iccprofile=icc, software=tags.get(_SOFTWARE) or False, description=tags.get(270),
        datetime=tags.get(306) or False, metadata=None, extratags=ascii_tags, **options,
    )
    subs = {tag: tags.get_ifd(tag) for tag in _SUB_IFDS if tags.get_ifd(tag)}
    if subs:
        _append_sub_ifds(out, subs)


def _append_sub_ifds(out, subs: dict[int, dict]) -> None:
    """Add the Exif and GPS IFDs to a classic little-endian TIFF that tifffile wrote.

    tifffile writes no sub-IFDs of metadata, so they are appended: Pillow lays out the
    IFDs at the end of the file, then a copy of the first IFD with the pointers to them
    added is written after those and the header is pointed at the copy.
    """
    out.seek(0)
    (first,) = struct.unpack("<I", out.read(8)[4:])  # written as classic little-endian TIFF
    out.seek(first)
    (count,) = struct.unpack("<H", out.read(2))
    entries = [out.read(12) for _ in range(count)]
    following = out.read(4)

    end = _align(out.seek(0, os.SEEK_END))
    holder = TiffImagePlugin.ImageFileDirectory_v2(prefix=b"II")
    for tag, values in subs.items():
        holder[tag] = dict(values)
    block = holder.tobytes(end)  # an IFD that points to the sub-IFDs laid out after it
    out.seek(end)
    out.write(block)
    (pointers,) = struct.unpack("<H", block[:2])
    entries += [block[2 + 12 * i : 14 + 12 * i] for i in range(pointers)]
    entries.sort(key=lambda entry: struct.unpack("<H", entry[:2])[0])

    copy = _align(out.seek(0, os.SEEK_END))
    out.seek(copy)
    out.write(struct.pack("<H", len(entries)) + b"".join(entries) + following)
    out.seek(4)
    out.write(struct.pack("<I", copy))
    out.seek(0, os.SEEK_END)


def _align(offset: int) -> int:
    return offset + (offset & 1)  # TIFF wants IFDs at word boundaries
