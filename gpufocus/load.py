"""Finding the frames of a stack and reading them as RGB arrays.

Formats are recognised by content, not by file name (real stacks contain PNG files
named ``.jpg``). Every frame becomes RGB: grey, palette, alpha, CMYK and 16-bit grey
modes are converted, alpha is dropped, the EXIF orientation is applied. 16-bit files
stay 16-bit (``uint16``), 8-bit files are ``uint8``.
"""

from __future__ import annotations

import errno
import functools
import os
import re
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import GpufocusError
from .pyramid import MIN_LEVEL_SIDE
from .timing import NO_TIMER, StageTimer

__all__ = [
    "FRAME_SUFFIXES",
    "SIDE_FILES",
    "ImageInfo",
    "list_frames",
    "probe_image",
    "read_image",
    "natural_key",
    "FrameStack",
]

#: File names a directory listing takes as frames (case-insensitive). Files given
#: one by one are read whatever their name.
FRAME_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".bmp", ".webp")

#: What a stack folder written by ``gpufocus synth`` holds beside its frames; a
#: directory listing leaves these out.
SIDE_FILES = frozenset({"ground_truth.png", "depth.png", "focus_index.png"})

_FORMATS = {"JPEG", "MPO", "PNG", "TIFF", "BMP", "WEBP"}
_EXIF_ORIENTATION = 0x0112


def natural_key(path: Path) -> list:
    """Sort key that orders ``f2`` before ``f10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name.lower())]


def list_frames(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The frame files named by ``inputs``: directories (natural order) and files.

    Raises:
        GpufocusError: a path that does not exist, a directory without frames, or
            fewer than two frames in all.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    frames: list[Path] = []
    for item in map(Path, inputs):
        _check_reachable(item)
        if item.is_dir():
            try:
                entries = list(item.iterdir())
            except OSError as error:
                raise GpufocusError(f"{item}: cannot list this directory ({error.strerror or error})") from None
            found = sorted(
                (
                    p
                    for p in entries
                    if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES and p.name not in SIDE_FILES
                ),
                key=natural_key,
            )
            if not found:
                raise GpufocusError(f"{item}: no image files in this directory ({', '.join(FRAME_SUFFIXES)})")
            frames.extend(found)
        elif item.is_file():
            frames.append(item)
        elif item.exists():
            raise GpufocusError(f"{item}: not a regular file or directory")
        else:
            raise GpufocusError(f"{item}: no such file or directory")
    if len(frames) < 2:
        raise GpufocusError(f"{frames[0] if frames else 'input'}: a stack needs at least 2 frames, got {len(frames)}")
    return frames


def _check_reachable(path: Path) -> None:
    """Name the real reason a path cannot be used: a symlink loop, a file where a
    folder should be, no permission; ``is_dir``/``is_file`` would only say False."""
    try:
        path.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise GpufocusError(f"{path}: a loop of symbolic links") from None
        if error.errno == errno.ENOTDIR:
            raise GpufocusError(f"{path}: a part of this path is a file, not a folder") from None
        if error.errno == errno.ENOENT:
            broken = " (a broken symbolic link)" if path.is_symlink() else ""
            raise GpufocusError(f"{path}: no such file or directory{broken}") from None
        raise GpufocusError(f"{path}: cannot read ({error.strerror or error})") from None


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an image file says.

    ``width`` and ``height`` are after the EXIF orientation is applied; ``exif`` is
    the file's EXIF block with the orientation reset to 1 (the pixels are turned
    already), ready to be written to an output.
    """

    path: Path
    width: int
    height: int
    bits: int
    orientation: int
    exif: bytes | None
    icc: bytes | None
    format: str = ""


@contextmanager
def _decoding(path: Path) -> Iterator[None]:
    """The one place where a decoder's failure becomes a ``GpufocusError`` naming the file.

    Decoders raise almost any built-in exception on malformed bytes (Pillow's plugins:
    ``SyntaxError`` for a broken PNG chunk, ``ValueError`` for a short header,
    ``struct.error``, ``EOFError``, ``zlib.error``, ``IndexError``, ``KeyError``, ...;
    OpenCV its ``cv2.error``), so everything but our own errors and an interrupt is
    taken as "the file is broken". Only calls into decoders run inside this.
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
    except Exception as error:  # noqa: BLE001 - see above: any decoder exception means bad bytes
        raise GpufocusError(f"{path}: corrupt image data ({type(error).__name__}: {_one_line(error)})") from None


def _one_line(error: BaseException) -> str:
    """An exception's message on one line, and not endless (decoders quote bytes)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


def _open(path: Path) -> Image.Image:
    with _decoding(path):
        image = Image.open(path)
    if image.format not in _FORMATS:
        image.close()
        raise GpufocusError(f"{path}: {image.format} is not a supported format (JPEG, PNG, TIFF, BMP, WebP)")
    return image


def _is_16bit_colour(image: Image.Image) -> bool:
    # Pillow has no 16-bit RGB mode: it opens such PNG/TIFF files as 8-bit RGB and
    # tells the true depth only in the decoder's raw mode.
    if image.mode not in ("RGB", "RGBA"):
        return False
    for tile in image.tile:
        raw = tile[3] if isinstance(tile[3], str) else tile[3][0]
        if ";16" in raw:
            return True
    return False


def probe_image(path: str | os.PathLike) -> ImageInfo:
    """Read an image's header: size, bit depth, orientation, EXIF and ICC profile.

    Raises:
        GpufocusError: not an image, an unsupported format, or too many pixels.
    """
    path = Path(path)
    with _open(path) as image, _decoding(path):
        # Before getexif(): for PNG it may read the whole file, which clears the tiles.
        bits = 16 if image.mode.startswith("I;16") or _is_16bit_colour(image) else 8
        found = image.getexif()
        orientation = int(found.get(_EXIF_ORIENTATION, 1) or 1)
        if orientation not in range(1, 9):
            orientation = 1
        exif = _portable_exif(found)
        width, height = image.size
        if image.format in ("JPEG", "MPO"):
            _check_jpeg_structure(path, width, height)
        if orientation >= 5:  # a quarter turn swaps the sides
            width, height = height, width
        return ImageInfo(
            path=path,
            width=width,
            height=height,
            bits=bits,
            orientation=orientation,
            exif=exif.tobytes() if len(exif) else None,
            icc=image.info.get("icc_profile") or None,
            format=image.format,
        )


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


# What of a file's first IFD an output takes: the description of the picture, not the
# layout of the file (a TIFF's strips, tiles and sample formats are its own).
_PORTABLE_TAGS = (269, 270, 271, 272, 282, 283, 296, 305, 306, 315, 316, 33432)
_SUB_IFDS = (0x8769, 0x8825)  # Exif, GPS


def _portable_exif(found: Image.Exif) -> Image.Exif:
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
    return exif


def _decode(path: Path) -> np.ndarray:
    with _open(path) as image, _decoding(path):
        size = image.size
        if _is_16bit_colour(image):
            pixels = _decode_16bit_colour(path)
        elif image.mode.startswith("I;16"):
            grey = np.asarray(image).astype(np.uint16)
            pixels = np.repeat(grey[:, :, None], 3, axis=2)
        elif image.mode in ("I", "F"):
            raise GpufocusError(f"{path}: {image.mode} images (32-bit) are not supported")
        else:
            pixels = np.asarray(image.convert("RGB"))
    if pixels.shape[1::-1] != size:
        found = f"{pixels.shape[1]}x{pixels.shape[0]}"
        raise GpufocusError(f"{path}: corrupt image (decoded {found}, the header says {size[0]}x{size[1]})")
    return pixels


def _decode_16bit_colour(path: Path) -> np.ndarray:
    import cv2  # Pillow cannot hold 16 bits per colour channel

    data = np.fromfile(path, dtype=np.uint8)
    pixels = cv2.imdecode(data, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None or pixels.dtype != np.uint16 or pixels.ndim != 3:
        raise GpufocusError(f"{path}: truncated or corrupt 16-bit image data")
    return np.ascontiguousarray(pixels[:, :, 2::-1])  # BGR(A) -> RGB


def _orient(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an (H, W, C) array.

    Not ``PIL.ImageOps.exif_transpose``: it turns PIL images, and 16-bit colour frames
    never are one (Pillow has no such mode); one way for every frame.
    """
    if orientation in (2, 4, 5, 7):  # mirrored ones: flip first
        pixels = pixels[:, ::-1]
    turns = {3: 2, 4: 2, 5: 1, 6: 3, 7: 3, 8: 1}.get(orientation, 0)  # quarter turns counter-clockwise
    return np.ascontiguousarray(np.rot90(pixels, turns))


def read_image(path: str | os.PathLike, info: ImageInfo | None = None) -> np.ndarray:
    """Decode an image as an ``(H, W, 3)`` RGB array, ``uint8`` or ``uint16``.

    Args:
        path: the file; its format is recognised by content.
        info: its ``probe_image`` result, if already known.

    Raises:
        GpufocusError: unreadable, truncated or unsupported file.
    """
    path = Path(path)
    info = info or probe_image(path)
    return _orient(_decode(path), info.orientation)


class FrameStack:
    """The frames of one stack on disk, checked and read in chunks.

    Every header is read up front, so a bad file or a frame of another size is
    reported before any work starts.

    Args:
        inputs: directories and/or files, as for ``list_frames``.
    """

    def __init__(self, inputs: Sequence[str | os.PathLike] | str | os.PathLike) -> None:
        self.paths = list_frames(inputs)
        self.infos = [probe_image(path) for path in self.paths]
        self._early: list = []  # frames decoding ahead, from prefetch
        self._prefetcher: ThreadPoolExecutor | None = None
        first = self.infos[0]
        if min(first.width, first.height) < MIN_LEVEL_SIDE:
            raise GpufocusError(
                f"{first.path}: {first.width}x{first.height} is too small to fuse "
                f"(at least {MIN_LEVEL_SIDE}x{MIN_LEVEL_SIDE})"
            )
        for info in self.infos[1:]:
            if (info.width, info.height) != (first.width, first.height):
                raise GpufocusError(
                    f"{info.path}: {info.width}x{info.height} differs from the first frame's "
                    f"{first.width}x{first.height} ({first.path.name}); frames must be aligned to the same size"
                )

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of every frame."""
        return self.infos[0].height, self.infos[0].width

    @property
    def bits(self) -> int:
        """16 if any frame has 16 bits per channel, else 8."""
        return max(info.bits for info in self.infos)

    def _load(self, index: int) -> np.ndarray:
        dtype = np.uint16 if self.bits == 16 else np.uint8
        pixels = read_image(self.paths[index], self.infos[index])
        return pixels if pixels.dtype == dtype else pixels.astype(dtype) * dtype(257)  # 8 bits in a 16-bit stack

    def prefetch(self, chunk: int) -> None:
        """Start decoding the first ``2 * chunk`` frames now (in a thread of their own), for
        the ``chunks`` call that comes later: a batch reads the next stack while it fuses
        this one."""
        self.close()
        self._prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpufocus-prefetch")
        self._early = [self._prefetcher.submit(self._load, i) for i in range(min(len(self), 2 * chunk))]

    def close(self) -> None:
        """Stop decoding ahead (``prefetch``) and wait for its thread; ``chunks`` does this
        once it has taken the frames."""
        if self._prefetcher is not None:
            self._prefetcher.shutdown(wait=True, cancel_futures=True)
            self._prefetcher = None

    def chunks(self, chunk: int, workers: int = 2, timer: StageTimer = NO_TIMER) -> Iterator[np.ndarray]:
        """Frames as ``(B, H, W, 3)`` arrays of ``B <= chunk`` frames, in order.

        Decoding runs ahead in a thread pool (the decoders release the GIL), so the
        next chunk is read while the caller works on this one. ``timer`` charges the
        time spent waiting for decoded frames to the stage ``decode``.
        """
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpufocus-decode")
        try:
            early, self._early = self._early, []
            pending = early + [pool.submit(self._load, i) for i in range(len(early), min(len(self), 2 * chunk))]
            next_index = len(pending)
            for start in range(0, len(self), chunk):
                with timer.stage("decode"):
                    batch = [pending[i].result() for i in range(start, min(start + chunk, len(self)))]
                for _ in batch:
                    if next_index < len(self):
                        pending.append(pool.submit(self._load, next_index))
                        next_index += 1
                for i in range(start, min(start + chunk, len(self))):
                    pending[i] = None  # let finished frames go
                yield np.stack(batch)
        finally:  # also when the reader stops early: no decoding goes on for nobody
            pool.shutdown(wait=True, cancel_futures=True)
            self.close()

    def decodable_on(self, device: torch.device) -> bool:
        """Whether ``chunks_on`` can decode this stack on ``device`` (nvJPEG).

        Needs a CUDA device, torchvision, and plain 8-bit JPEG frames with no EXIF turn.
        """
        if device.type != "cuda" or _gpu_decoder() is None:
            return False
        return all(i.format == "JPEG" and i.bits == 8 and i.orientation == 1 for i in self.infos)

    def chunks_on(self, chunk: int, device: torch.device, timer: StageTimer = NO_TIMER) -> Iterator[torch.Tensor]:
        """Frames decoded on the GPU (nvJPEG, batched), ``(B, 3, H, W)`` uint8 on ``device``.

        Files are read ahead in a thread; a chunk the GPU decoder rejects is decoded on
        the CPU instead, which names the file if it is broken.
        """
        decode = _gpu_decoder()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpufocus-read") as pool:

            def read(start: int) -> list[torch.Tensor]:
                return [torch.from_numpy(np.fromfile(p, dtype=np.uint8)) for p in self.paths[start : start + chunk]]

            starts = list(range(0, len(self), chunk))
            pending = pool.submit(read, starts[0])
            for n, start in enumerate(starts):
                with timer.stage("decode"):
                    data = pending.result()
                    if n + 1 < len(starts):
                        pending = pool.submit(read, starts[n + 1])
                    try:
                        frames = torch.stack(decode(data, device))
                    except RuntimeError:
                        indices = range(start, min(start + chunk, len(self)))
                        cpu = np.stack([read_image(self.paths[i], self.infos[i]) for i in indices])
                        frames = torch.from_numpy(cpu).to(device).permute(0, 3, 1, 2)
                yield frames


@functools.cache
def _gpu_decoder():
    """torchvision's nvJPEG batch decoder, or ``None`` where torchvision does not load."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception:  # not installed, or built for another torch
        return None
    return lambda data, device: decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
