"""Reading one image file: what its header says (``probe_image``) and its pixels (``read_image``).

Formats are recognised by content, not by file name (real stacks contain PNG files
named ``.jpg``), and each goes to the library made for it:

- JPEG, BMP, WebP and 8-bit PNG: Pillow;
- 16-bit PNG: imagecodecs (libpng), as Pillow has no 16-bit colour mode;
- TIFF, multi-page TIFF and OME-TIFF: tifffile (with imagecodecs' codecs); a file of
  several pages along Z (or along its one page axis) is a whole stack;
- camera RAW and DNG: rawpy (LibRaw), an optional extra, demosaiced to linear 16-bit.

Pixels keep their own channels: grey is one channel, colour three, a microscope image
as many as it has; an alpha channel, when there is one, comes last.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import GpufocusError

__all__ = ["RAW_SUFFIXES", "ImageInfo", "OpenFiles", "probe_image", "read_image"]

#: Camera RAW files, by name (most are TIFF inside, so content alone would read their
#: preview). DNG is also recognised by content.
RAW_SUFFIXES = (
    ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf",
    ".pef", ".srw", ".3fr", ".iiq", ".x3f", ".erf", ".mrw", ".rwl", ".kdc", ".dcr", ".mos",
)

_PILLOW_FORMATS = {"JPEG", "MPO", "PNG", "BMP", "WEBP"}
_EXIF_ORIENTATION = 0x0112
_SOFTWARE = 0x0131
_DNG_VERSION = 50706


#: The smallest side a pyramid level may have before it is reduced again; frames with a
#: shorter side cannot be fused (``gpufocus.pyramid``).
MIN_LEVEL_SIDE = 8


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an image file says.

    ``width`` and ``height`` are after the EXIF orientation is applied; ``exif`` is the
    file's EXIF block with the orientation reset to 1 (the pixels are turned already),
    ready to be written to an output.

    Attributes:
        channels: image channels, alpha not counted (1 grey, 3 colour, or a
            microscope image's channel count).
        alpha: the pixels carry an alpha channel after the image channels.
        colour: the channels are red, green and blue (decisions on their luminance);
            otherwise each channel is decided on its own.
        frames: frames in the file: 1, or the pages of a z-stack.
        series: image series in a TIFF file; only the first is read.
        linear: linear light (RAW); an output gets the sRGB transfer curve.
        software: the file's Software tag (gpufocus marks its own outputs there).
    """

    path: Path
    width: int
    height: int
    bits: int
    orientation: int
    exif: bytes | None
    icc: bytes | None
    format: str = ""
    channels: int = 3
    alpha: bool = False
    colour: bool = True
    frames: int = 1
    series: int = 1
    linear: bool = False
    software: str | None = None
    #: RAW: the camera's white balance (a stack decodes every frame with its first's).
    white_balance: tuple[float, ...] | None = None
    # TIFF: the series' pages that make each frame (several where channels are pages)
    pages: tuple[tuple[int, ...], ...] = field(default=(), repr=False, compare=False)
    decoder: str = field(default="pillow", repr=False, compare=False)  # pillow, tifffile or rawpy
    #: What the decoder found wrong in a file it could still read (TIFF tags that
    #: contradict the data, say), or ``None``.
    damage: str | None = field(default=None, compare=False)


@contextmanager
def decoding(path: Path) -> Iterator[None]:
    """The one place where a decoder's failure becomes a ``GpufocusError`` naming the file.

    Decoders raise almost any built-in exception on malformed bytes (Pillow's plugins:
    ``SyntaxError`` for a broken PNG chunk, ``ValueError`` for a short header,
    ``struct.error``, ``EOFError``, ``zlib.error``, ``IndexError``, ``KeyError``, ...;
    tifffile its ``TiffFileError``, imagecodecs its codecs' errors, rawpy LibRaw's), so
    everything but our own errors and an interrupt is taken as "the file is broken".
    ``probe_image`` and ``read_image`` run their whole work inside this.
    """
    try:
        yield
    except (GpufocusError, KeyboardInterrupt):
        raise
    except Image.DecompressionBombError as error:
        raise GpufocusError(f"{path}: too many pixels, refused as a possible decompression bomb ({error})") from None
    except UnidentifiedImageError:
        raise GpufocusError(f"{path}: not an image, or a format that cannot be read") from None
    except MemoryError:
        raise GpufocusError(f"{path}: its header asks for more memory than there is (corrupt?)") from None
    except OSError as error:
        if error.errno is not None:  # the file system's error, not the decoder's
            raise GpufocusError(f"{path}: cannot read ({error.strerror or error})") from None
        raise GpufocusError(f"{path}: truncated or corrupt image data ({_one_line(error)})") from None
    except _PYTHONS_OWN:  # a decoder tripped over values it did not expect: its words mean nothing to a user
        raise GpufocusError(f"{path}: corrupt image data (fields the decoder could not make sense of)") from None
    except Exception as error:  # noqa: BLE001 - see above: any decoder exception means bad bytes
        raise GpufocusError(f"{path}: corrupt image data ({type(error).__name__}: {_one_line(error)})") from None


# Errors that a decoder raises from its own code, not about the file: their message
# ("'>' not supported between instances of 'tuple' and 'int'") would show its internals.
_PYTHONS_OWN = (TypeError, AttributeError, NameError, AssertionError, ZeroDivisionError, RecursionError)


def _one_line(error: BaseException) -> str:
    """An exception's message on one line, and not endless (decoders quote bytes)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _sniff(path: Path, by_name: bool = True) -> str:
    """``RAW`` (by name, unless ``by_name`` is false), ``TIFF``, ``PNG`` or ``PILLOW``
    (Pillow finds out the rest)."""
    if by_name and path.suffix.lower() in RAW_SUFFIXES:
        return "RAW"
    with open(path, "rb") as file:
        head = file.read(8)
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head == b"\x89PNG\r\n\x1a\n":
        return "PNG"
    return "PILLOW"


def probe_image(path: str | os.PathLike) -> ImageInfo:
    """Read an image's header: size, bit depth, channels, orientation, EXIF and ICC profile.

    Raises:
        GpufocusError: not an image, an unsupported format, too many pixels, or a
            RAW file without the ``raw`` extra.
    """
    path = Path(path)
    with decoding(path):
        kind = _sniff(path)
        if kind == "TIFF":
            info = _probe_tiff(path)
            return _probe_raw(path) if info is None else info
        if kind == "RAW":
            return _probe_raw(path)
        return _probe_pillow(path)


class OpenFiles:
    """Multi-page files kept open while a stack is read: opening a TIFF parses its page
    directories, which for a z-stack of thousands of pages costs more than a page. One
    handle per file and thread (tifffile's handles are not for sharing); ``close``
    closes them all."""

    def __init__(self) -> None:
        self._open: dict = {}
        self._lock = threading.Lock()

    def tiff(self, path: Path):
        import tifffile

        key = (path, threading.get_ident())
        with self._lock:
            found = self._open.get(key)
        if found is None:
            found = tifffile.TiffFile(path)
            with self._lock:
                self._open[key] = found
        return found

    def close(self) -> None:
        with self._lock:
            handles, self._open = list(self._open.values()), {}
        for handle in handles:
            handle.close()


def read_image(
    path: str | os.PathLike, info: ImageInfo | None = None, frame: int = 0, files: OpenFiles | None = None
) -> np.ndarray:
    """Decode an image as an ``(H, W, C)`` array, ``uint8`` or ``uint16``, upright.

    ``C`` is ``info.channels``, plus one for alpha where ``info.alpha``.

    Args:
        path: the file; its format is recognised by content.
        info: its ``probe_image`` result, if already known.
        frame: which frame of a multi-page file (a z-stack).
        files: keep multi-page files open here between calls (a stack's reader does).

    Raises:
        GpufocusError: unreadable, truncated or unsupported file.
    """
    path = Path(path)
    info = info or probe_image(path)
    if not 0 <= frame < info.frames:
        raise GpufocusError(f"{path}: has {info.frames} frames, there is no frame {frame}")
    with decoding(path):
        if info.decoder == "tifffile":
            pixels = _decode_tiff(info, frame, files)
        elif info.decoder == "rawpy":
            pixels = _decode_raw(info)
        else:
            pixels = _decode_pillow(info)
    pixels = _orient(pixels, info.orientation)
    expected = (info.height, info.width, info.channels + info.alpha)
    if pixels.shape != expected:
        found = f"{pixels.shape[1]}x{pixels.shape[0]}x{pixels.shape[2]}"
        raise GpufocusError(
            f"{path}: corrupt image (decoded {found}, the header says {info.width}x{info.height}x{expected[2]})"
        )
    return pixels


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an (H, W, C) array.

    Not ``PIL.ImageOps.exif_transpose``: it turns PIL images, and 16-bit colour frames
    never are one (Pillow has no such mode); one way for every frame.
    """
    if orientation in (2, 4, 5, 7):  # mirrored ones: flip first
        pixels = pixels[:, ::-1]
    turns = {3: 2, 4: 2, 5: 1, 6: 3, 7: 3, 8: 1}.get(orientation, 0)  # quarter turns counter-clockwise
    return np.ascontiguousarray(np.rot90(pixels, turns))


def _upright(width: int, height: int, orientation: int) -> tuple[int, int]:
    return (height, width) if orientation >= 5 else (width, height)  # a quarter turn swaps the sides


# -- metadata --------------------------------------------------------------------------

# What of a file's first IFD an output takes: the description of the picture, not the
# layout of the file (a TIFF's strips, tiles and sample formats are its own). Not the
# ImageDescription: OME-TIFF and ImageJ keep their layout of pages there.
_PORTABLE_TAGS = (269, 271, 272, 282, 283, 296, 305, 306, 315, 316, 33432)
_SUB_IFDS = (0x8769, 0x8825)  # Exif, GPS


def _portable_exif(found: Image.Exif) -> bytes | None:
    """The EXIF tags worth copying to a fused image, with the orientation upright."""
    exif = Image.Exif()
    for tag in _PORTABLE_TAGS:
        if tag in found:
            exif[tag] = found[tag]
    for tag in _SUB_IFDS:
        sub = found.get_ifd(tag)
        if sub:
            exif.get_ifd(tag).update(sub)
    if _EXIF_ORIENTATION in found or len(exif) or any(exif.get_ifd(tag) for tag in _SUB_IFDS):
        exif[_EXIF_ORIENTATION] = 1  # the pixels are turned upright when read
    return exif.tobytes() if len(exif) else None


def _orientation(found: Image.Exif) -> int:
    orientation = int(found.get(_EXIF_ORIENTATION, 1) or 1)
    return orientation if orientation in range(1, 9) else 1


def _tiff_exif(path: Path) -> Image.Exif:
    """A TIFF file's first IFD and its Exif/GPS IFDs, as Pillow reads EXIF."""
    exif = Image.Exif()
    with open(path, "rb") as file:
        exif.load_from_fp(file)
        for tag in _SUB_IFDS:  # read the sub-IFDs while the file is open
            exif.get_ifd(tag)
    return exif


# -- Pillow: JPEG, PNG, BMP, WebP -------------------------------------------------------

# Pillow modes and what they hold: (channels, alpha); others are converted to RGB.
_MODES = {"1": (1, False), "L": (1, False), "LA": (1, True), "RGB": (3, False), "RGBA": (3, True), "PA": (3, True)}


def _open(path: Path, formats=_PILLOW_FORMATS) -> Image.Image:
    image = Image.open(path)
    if image.format not in formats:
        image.close()
        raise GpufocusError(f"{path}: {image.format} is not a supported format (JPEG, PNG, TIFF, BMP, WebP, RAW)")
    return image


def _probe_pillow(path: Path, formats=_PILLOW_FORMATS) -> ImageInfo:
    with _open(path, formats) as image:
        mode = image.mode
        bits, channels, alpha = 8, *_MODES.get(mode, (3, False))
        if mode == "P":
            alpha = "transparency" in image.info
        if image.format == "PNG":
            bits, channels, alpha = _png_header(path, bits, channels, alpha)
        elif mode in ("I", "F"):
            raise GpufocusError(f"{path}: {mode} images (32-bit) are not supported")
        if image.format == "PNG":  # Pillow's getexif decodes a PNG's pixels to find a late eXIf
            found, text = _png_metadata(path)
        else:
            found, text = image.getexif(), None
        software = found.get(_SOFTWARE) or image.info.get("Software") or text
        width, height = image.size
        if image.format in ("JPEG", "MPO"):
            _check_jpeg_structure(path, width, height)
        orientation = _orientation(found)
        width, height = _upright(width, height, orientation)
        return ImageInfo(
            path=path, width=width, height=height, bits=bits, orientation=orientation,
            exif=_portable_exif(found), icc=image.info.get("icc_profile") or None,
            format=image.format, channels=channels, alpha=alpha, software=_text(software),
        )


def _text(value) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value.strip("\x00 ") if isinstance(value, str) else None


def _png_metadata(path: Path) -> tuple[Image.Exif, str | None]:
    """A PNG's EXIF (its ``eXIf`` chunk) and ``Software`` text, from its chunk headers
    alone: the pixel data is skipped, not decoded (a bomb's header claims gigabytes)."""
    import struct

    exif, software, ended = Image.Exif(), None, False
    with open(path, "rb") as file:
        file.seek(8)
        while len(head := file.read(8)) == 8:
            length, kind = struct.unpack(">I4s", head)
            if not kind.isalpha():
                raise GpufocusError(f"{path}: corrupt image data (broken PNG file: its chunk lengths do not add up)")
            if kind == b"eXIf" or (kind in (b"tEXt", b"iTXt") and length < 1 << 20):
                data = file.read(length)
                if kind == b"eXIf":
                    exif.load(data)
                else:
                    key, _, value = data.partition(b"\0")
                    if key == b"Software":
                        software = value.lstrip(b"\0").decode("latin-1") if kind == b"tEXt" else value.rsplit(b"\0", 1)[-1].decode("utf-8", "replace")
                file.seek(4, 1)
            elif kind == b"IEND":
                ended = True
                break
            else:
                file.seek(length + 4, 1)
    if not ended:
        raise GpufocusError(f"{path}: truncated or corrupt image data (the PNG ends before its IEND chunk)")
    return exif, software


def _png_header(path: Path, bits: int, channels: int, alpha: bool) -> tuple[int, int, bool]:
    """Bits, channels and alpha from a PNG's IHDR: Pillow opens 16-bit colour as 8-bit."""
    with open(path, "rb") as file:
        header = file.read(33)
    depth, colour_type = header[24], header[25]
    if depth != 16:
        return bits, channels, alpha
    found = {0: (1, False), 2: (3, False), 4: (1, True), 6: (3, True)}.get(colour_type)
    if found is None:
        raise GpufocusError(f"{path}: corrupt PNG (colour type {colour_type} with 16 bits)")
    return 16, *found


def _decode_pillow(info: ImageInfo) -> np.ndarray:
    path = info.path
    if info.format == "PNG" and info.bits == 16:
        import imagecodecs

        pixels = imagecodecs.png_decode(path.read_bytes())
        return pixels[:, :, None] if pixels.ndim == 2 else pixels
    with _open(path, {info.format}) as image:  # 8 bits: 16-bit PNG is above, 16-bit TIFF tifffile's
        target = {(1, False): "L", (1, True): "LA", (3, False): "RGB", (3, True): "RGBA"}[info.channels, info.alpha]
        pixels = np.asarray(image if image.mode == target else image.convert(target))
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # not DHT, JPG, DAC
_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RSTn: no length


def _check_jpeg_structure(path: Path, width: int, height: int) -> None:
    """Walk a JPEG's marker segments up to the scan and check the decoder's size.

    A broken segment length (an APP1 of length 0, say) can make a decoder skip into
    the EXIF block and read its thumbnail as the image: the frame (the first SOF
    found by following the segment lengths) must be the one that is decoded.
    """
    with open(path, "rb") as file:
        if file.read(2) != b"\xff\xd8":
            raise GpufocusError(f"{path}: corrupt JPEG (no start-of-image marker)")
        while True:
            byte = file.read(1)
            if not byte:
                raise GpufocusError(f"{path}: truncated JPEG (ends before the image data)")
            if byte != b"\xff":
                raise GpufocusError(f"{path}: corrupt JPEG (a marker segment is broken before the image data)")
            marker = file.read(1)
            while marker == b"\xff":  # fill bytes
                marker = file.read(1)
            if not marker:
                raise GpufocusError(f"{path}: truncated JPEG (ends before the image data)")
            code = marker[0]
            if code in _STANDALONE_MARKERS:
                continue
            header = file.read(2)
            length = int.from_bytes(header, "big") if len(header) == 2 else 0
            if length < 2:
                raise GpufocusError(f"{path}: corrupt JPEG (marker 0x{code:02X} has a segment length of {length})")
            if code in _SOF_MARKERS:
                frame = file.read(5)
                if len(frame) < 5:
                    raise GpufocusError(f"{path}: truncated JPEG (ends in its frame header)")
                found = (int.from_bytes(frame[3:5], "big"), int.from_bytes(frame[1:3], "big"))
                if found != (width, height):
                    raise GpufocusError(
                        f"{path}: corrupt JPEG (the decoder found a {width}x{height} image, the file's frame "
                        f"header says {found[0]}x{found[1]}: an embedded thumbnail instead of the image?)"
                    )
                return
            if code == 0xDA:  # start of scan before any frame header
                raise GpufocusError(f"{path}: corrupt JPEG (image data before a frame header)")
            file.seek(length - 2, os.SEEK_CUR)


# -- tifffile: TIFF, multi-page TIFF, OME-TIFF ------------------------------------------

# Axes a stack runs along, in order of preference; C is channels, never a stack axis.
_STACK_AXES = "ZTIQ"


def _probe_tiff(path: Path) -> ImageInfo | None:
    """A TIFF's layout, or ``None`` for a DNG (a RAW file in TIFF's clothes)."""
    import tifffile

    with _tiff_complaints() as complaints, tifffile.TiffFile(path) as tif:
        first = tif.pages.first
        if _DNG_VERSION in first.tags:
            return None
        series = tif.series[0]
        count = len(tif.series)
        axes, shape = series.get_axes(False), series.get_shape(False)
        dtype = np.dtype(series.dtype)
        icc = first.tags.valueof(34675)
        photometric = int(first.photometric)
        extras = tuple(int(e) for e in first.extrasamples)
        pages = len(series.pages)
        stored, needed = sum(first.databytecounts), first.size * np.dtype(first.dtype).itemsize
        if int(first.compression) == 1 and stored < needed:  # uncompressed strips shorter than the image
            complaints.append(f"its strips hold {stored} bytes, the image needs {needed}")
    if photometric in (3, 5) and pages == 1:  # palette, CMYK: Pillow turns them into RGB
        return _probe_pillow(path, {"TIFF"})
    if dtype not in (np.uint8, np.uint16):
        raise GpufocusError(f"{path}: {dtype} samples are not supported (8 or 16-bit unsigned integers)")
    grid = _page_grid(path, axes, shape, pages)
    samples = math.prod(shape[len(grid) :]) // (shape[axes.index("Y")] * shape[axes.index("X")])
    sizes = dict(zip(grid, shape[: len(grid)]))
    stack = next((a for a in _STACK_AXES if sizes.get(a, 1) > 1), None)
    others = [a for a in grid if sizes[a] > 1 and a not in (stack, "C")]
    if others:
        raise GpufocusError(
            f"{path}: an image of axes {axes} {tuple(shape)} has more than one axis to stack along "
            f"({', '.join([stack, *others])}); save one z-stack per file"
        )
    channels_as_pages = sizes.get("C", 1)
    alpha = bool(extras) and extras[0] in (1, 2) and samples in (2, 4)  # associated or unassociated alpha
    channels = samples * channels_as_pages - alpha
    colour = photometric in (2, 6) and channels == 3 and channels_as_pages == 1  # RGB, YCbCr
    index = np.arange(pages).reshape([sizes[a] for a in grid])
    order = [grid.index(stack)] if stack else []
    order += [i for i, a in enumerate(grid) if a != stack]  # the stack axis first, channels last
    per_frame = index.transpose(order).reshape(sizes.get(stack, 1), -1)
    exif = _tiff_exif(path)
    orientation = _orientation(exif)
    width, height = _upright(shape[axes.index("X")], shape[axes.index("Y")], orientation)
    return ImageInfo(
        path=path, width=width, height=height, bits=dtype.itemsize * 8, orientation=orientation,
        exif=_portable_exif(exif), icc=bytes(icc) if icc else None, format="TIFF", channels=channels,
        alpha=alpha, colour=colour, frames=per_frame.shape[0], series=count, software=_text(exif.get(_SOFTWARE)),
        pages=tuple(tuple(int(p) for p in row) for row in per_frame), decoder="tifffile",
        damage="; ".join(dict.fromkeys(complaints)) or None,
    )


class _Complaints(logging.Handler):
    """tifffile's warnings and errors about the file this thread reads (it logs what it
    can read past: tag counts that contradict the data, shapes that do not fit)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            text = record.getMessage()
            self.found.append(text.split("> ", 1)[-1] if text.startswith("<tifffile.") else text)


@contextmanager
def _tiff_complaints() -> Iterator[list[str]]:
    handler = _Complaints()
    logger = logging.getLogger("tifffile")
    logger.addHandler(handler)
    try:
        yield handler.found
    finally:
        logger.removeHandler(handler)


def _page_grid(path: Path, axes: str, shape: tuple[int, ...], pages: int) -> str:
    """The series' axes over pages: the leading ones whose sizes multiply to the page
    count, the rest (Y, X and samples) being within a page."""
    count = 1
    for n, size in enumerate(shape):
        if count == pages and set(axes[n:]) <= set("YXSC") and {"Y", "X"} <= set(axes[n:]):
            return axes[:n]
        count *= size
    raise GpufocusError(f"{path}: a TIFF layout that is not a stack of images (axes {axes}, shape {tuple(shape)})")


def _decode_tiff(info: ImageInfo, frame: int, files: OpenFiles | None) -> np.ndarray:
    import tifffile

    planes = []
    tif = tifffile.TiffFile(info.path) if files is None or info.frames == 1 else files.tiff(info.path)
    try:
        for page in info.pages[frame]:
            data = tif.asarray(key=page, series=0, maxworkers=1)  # frames are decoded in parallel already
            page_axes = tif.series[0].pages[page].axes
            if data.ndim == 2:
                data = data[:, :, None]
            elif page_axes.index("Y") > page_axes.index("S" if "S" in page_axes else "C"):  # planar: S Y X
                data = np.moveaxis(data, 0, -1)
            planes.append(data)
    finally:
        if files is None or info.frames == 1:
            tif.close()
    pixels = planes[0] if len(planes) == 1 else np.concatenate(planes, axis=-1)
    return pixels if pixels.dtype.isnative else pixels.astype(pixels.dtype.newbyteorder("="))


# -- rawpy: camera RAW and DNG -----------------------------------------------------------


@functools.cache
def _rawpy():
    try:
        import rawpy
    except ImportError:
        return None
    return rawpy


def _need_rawpy(path: Path):
    rawpy = _rawpy()
    if rawpy is None:
        raise GpufocusError(f"{path}: RAW files need the raw extra: pip install 'gpufocus[raw]'")
    return rawpy


def _probe_raw(path: Path) -> ImageInfo:
    rawpy = _need_rawpy(path)
    with rawpy.imread(str(path)) as raw:  # opens and reads the header only
        sizes = raw.sizes
        width, height = (sizes.height, sizes.width) if sizes.flip in (5, 6) else (sizes.width, sizes.height)
        balance = tuple(float(w) for w in raw.camera_whitebalance)
    exif = _tiff_exif(path) if _sniff(path, by_name=False) == "TIFF" else Image.Exif()
    return ImageInfo(
        path=path, width=width, height=height, bits=16, orientation=1, exif=_portable_exif(exif), icc=None,
        format="RAW", channels=3, linear=True, software=_text(exif.get(_SOFTWARE)), white_balance=balance,
        decoder="rawpy",
    )


def _decode_raw(info: ImageInfo) -> np.ndarray:
    """Demosaiced, linear 16-bit RGB: ``info.white_balance`` (a stack gives every frame
    its first frame's), no auto-brightening, no gamma curve."""
    rawpy = _need_rawpy(info.path)
    balance = info.white_balance
    with rawpy.imread(str(info.path)) as raw:
        return raw.postprocess(
            user_wb=list(balance) if balance and any(balance) else None, use_camera_wb=not (balance and any(balance)),
            no_auto_bright=True, output_bps=16, gamma=(1, 1), output_color=rawpy.ColorSpace.sRGB,
        )
