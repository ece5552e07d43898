"""Writing results: format from the extension, 8 or 16 bits, atomic, never over an input.

Every file is written to a temporary beside its target and renamed into place, so a
failed or interrupted run leaves no partial file; ``Outputs`` does that for several
files together (all or none). Temporaries are named after the writing process
(``.NAME.gpufocus-HOST-PID-XXXX.part``): a later write into the same folder removes
those of processes that are gone (killed mid-write).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING
from pathlib import Path

import numpy as np

from .encode import encode_image, encode_jpeg, jpeg_encoder
from .errors import GpufocusError
from .options import OutputOptions
from .timing import NO_TIMER, StageTimer

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

__all__ = [
    "OUTPUT_FORMATS",
    "OWN_ROLES",
    "Outputs",
    "software_tag",
    "own_role",
    "output_format",
    "check_output",
    "check_output_file",
    "check_distinct",
    "output_folder",
    "quantize",
    "to_array",
    "write_image",
    "write_json",
]

#: Output extensions and the format each one writes.
OUTPUT_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}


#: What the project writes, by the role in its ``Software`` tag, that a later run must
#: not take as a frame when it lists a folder (see ``software_tag``).
OWN_ROLES = ("fused image", "depth map", "step", "3-D view")


def software_tag(role: str) -> str:
    """The ``Software`` tag of a file the project writes: ``gpufocus 0.1.0 (fused image)``."""
    from . import __version__

    return f"gpufocus {__version__} ({role})"


def own_role(software: str | None) -> str | None:
    """The role in a ``Software`` tag that ``software_tag`` wrote; ``None`` for others."""
    found = re.fullmatch(r"gpufocus \S+ \((?P<role>[^)]*)\)", software or "")
    return found["role"] if found else None


def output_format(path: str | os.PathLike, bits: int = 8, channels: int = 3) -> str:
    """The format for ``path``'s extension, checked against the bit depth and channels.

    Raises:
        GpufocusError: unknown extension, 16 bits asked of JPEG, or other than 1 or 3
            channels asked of PNG or JPEG.
    """
    path = Path(path)
    fmt = OUTPUT_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise GpufocusError(f"{path}: unsupported output extension {path.suffix!r} (use {', '.join(OUTPUT_FORMATS)})")
    if bits not in (8, 16):
        raise GpufocusError(f"{path}: --bits must be 8 or 16, not {bits}")
    if bits == 16 and fmt == "JPEG":
        raise GpufocusError(f"{path}: JPEG holds 8 bits per channel; write .png or .tif for 16 bits")
    if channels not in (1, 3) and fmt != "TIFF":
        raise GpufocusError(f"{path}: {fmt} holds grey or RGB; write .tif for an image of {channels} channels")
    return fmt


def check_output(path: str | os.PathLike, bits: int = 8, overwrite: bool = False, channels: int = 3) -> str:
    """Fail early, before any work, if the image ``path`` cannot be written.

    Returns:
        The output format (see ``output_format``).

    Raises:
        GpufocusError: bad extension, or see ``check_output_file``.
    """
    fmt = output_format(path, bits, channels)
    check_output_file(path, overwrite)
    return fmt


def check_output_file(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Fail early, before any work, if the file ``path`` (any kind) cannot be written.

    Raises:
        GpufocusError: an existing file without ``overwrite``, a directory, a loop of
            symbolic links, a missing folder or one that is a file, an unwritable folder.
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise GpufocusError(f"{path}: is a directory; give an output file name")
        if path.exists() and not overwrite:
            raise GpufocusError(f"{path}: already exists (use --overwrite to replace it)")
        path.parent.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise GpufocusError(f"{path}: a loop of symbolic links") from None
        if error.errno == errno.ENOTDIR:
            raise GpufocusError(f"{path}: a part of its folder path is a file, not a folder") from None
        if error.errno == errno.ENOENT:
            raise GpufocusError(f"{path}: the folder {path.parent} does not exist") from None
        raise GpufocusError(f"{path}: cannot use this path ({error.strerror or error})") from None
    if not path.parent.is_dir():
        raise GpufocusError(f"{path}: {path.parent} is a file, not a folder")
    # Try it: permission bits do not tell (root, read-only mounts, ACLs).
    try:
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as error:
        raise GpufocusError(f"{path}: the folder {path.parent} is not writable ({error.strerror or error})") from None


def _identity(path: Path) -> tuple[Path, tuple[int, int] | None]:
    """Where a path really leads (symbolic links followed) and, if it exists, its inode."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a loop of links: check_output_file names it
        resolved = path.absolute()
    try:
        found = os.stat(path)
    except OSError:
        return resolved, None
    return resolved, (found.st_dev, found.st_ino)


def check_distinct(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse an output that is an input or another output (with or without ``--overwrite``).

    Paths are compared as resolved (symbolic links followed) and, where they exist,
    by inode, so links of either kind count as the same file.

    Raises:
        GpufocusError: naming the output and what it would replace.
    """
    seen: dict[object, tuple[str, Path]] = {}
    for path in map(Path, inputs):
        resolved, inode = _identity(path)
        seen[resolved] = seen[inode] = ("input", path)
    for path in map(Path, outputs):
        resolved, inode = _identity(path)
        for key in (resolved, inode):
            if key is not None and key in seen:
                kind, other = seen[key]
                what = f"the input {other}" if kind == "input" else f"another output ({other})"
                raise GpufocusError(f"{path}: is the same file as {what}; choose another output path")
        seen[resolved] = ("output", path)
        if inode is not None:
            seen[inode] = ("output", path)


@contextmanager
def output_folder(folder: str | os.PathLike) -> Iterator[Path]:
    """Make ``folder`` (and its parents) if missing; if the block then fails, remove it
    again where it stayed empty, so a failed command leaves no trace."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise GpufocusError(f"{folder}: not a directory")
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GpufocusError(f"{folder}: cannot create the folder ({error.strerror or error})") from None
    try:
        yield folder
    except BaseException:
        if created:
            try:
                folder.rmdir()
            except OSError:
                pass
        raise


_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
_TEMPORARY = re.compile(r"^\..+\.gpufocus-(?P<host>[^-]+)-(?P<pid>\d+)-[^-]*\.part$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _remove_stale(folder: Path) -> None:
    """Remove temporaries that processes of this host left when they were killed."""
    try:
        names = [entry.name for entry in os.scandir(folder) if entry.name.endswith(".part")]
    except OSError:
        return
    for name in names:
        found = _TEMPORARY.match(name)
        if found and found["host"] == _HOST and not _alive(int(found["pid"])):
            try:
                os.unlink(folder / name)
            except OSError:
                pass


def _wait_for(work: list[Future]) -> None:
    """Until every one of ``work`` is done, in short sleeps: an interrupt is not raised
    inside the standard library's waits (``gpufocus.__main__``), and an encoder may take
    long."""
    while not all(done.done() for done in work):
        time.sleep(0.005)


def _fill(path: Path, temporary: str, data: bytes | None, encode) -> None:
    """``Outputs.write``'s work: the temporary written and made readable as a file made anew would be."""
    try:
        with open(temporary, "r+b") as out:  # made by mkstemp, empty: never made anew once discarded
            if encode is not None:
                encode(out)
            else:
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
    except OSError as error:
        raise GpufocusError(f"{path}: cannot write ({error.strerror or error})") from None


class Outputs:
    """Files written to temporaries and put in place together when the block ends.

    If anything fails (an encoder, a full disk, an interrupt) before the end of the
    ``with`` block, every temporary is removed and no target is touched.

    Files are encoded in two threads while the block goes on (the encoders release the
    GIL): the fused image and the depth map are written at once, and a block that
    writes many files has at most two waiting. An encoder's error is raised by the next
    ``write`` or at the end of the block.

    Args:
        timer: charges the encoders' time to the ``busy`` time of the stage ``write``
            (``gpufocus.timing``).

    Example:
        >>> with Outputs() as out:
        ...     out.image("fused.png", image, bits=16)
        ...     out.json("transforms.json", report)
    """

    _WORKERS = 2

    def __init__(self, timer: StageTimer = NO_TIMER) -> None:
        self._timer = timer  # the encoders' time, as the busy time of the stage "write"
        self._pending: list[tuple[str, Path]] = []
        self._pool: ThreadPoolExecutor | None = None
        self._work: list[Future] = []

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()

    def _start(self, path: Path) -> tuple[int, str]:
        _remove_stale(path.parent)
        try:
            handle, temporary = tempfile.mkstemp(
                prefix=f".{path.name}.gpufocus-{_HOST}-{os.getpid()}-", suffix=".part", dir=path.parent
            )
        except OSError as error:
            raise GpufocusError(f"{path}: cannot write ({error.strerror or error})") from None
        self._pending.append((temporary, path))
        return handle, temporary

    def write(self, path: str | os.PathLike, data: bytes | None = None, *, encode=None) -> None:
        """Write ``data``, or what ``encode(file)`` writes (the file is open for reading
        too), to ``path`` (on commit), in a thread of the block's."""
        path = Path(path)
        handle, temporary = self._start(path)
        os.close(handle)  # opened again by name: tifffile wants a file with a name
        self._work = [work for work in self._work if not work.done() or work.exception() is not None]
        if len(self._work) >= self._WORKERS:  # no more waiting than threads to take it
            _wait_for(self._work[:1])
            self._work.pop(0).result()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._WORKERS, thread_name_prefix="gpufocus-encode")
        self._work.append(self._pool.submit(self._timer.worker, "write", _fill, path, temporary, data, encode))

    def _finish(self) -> None:
        """Wait for every encoder; raise the first one's error, once all are done."""
        work, self._work = self._work, []
        _wait_for(work)
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        for done in work:
            done.result()

    def image(
        self,
        path: str | os.PathLike,
        image: torch.Tensor | np.ndarray,
        *,
        bits: int = 8,
        quality: int = OutputOptions.quality,
        exif: bytes | None = None,
        icc: bytes | None = None,
        overwrite: bool = False,
        role: str | None = None,
        compression: str = OutputOptions.compression,
    ) -> None:
        """An image, as ``write_image`` takes it, put in place on commit."""
        path = Path(path)
        pixels = image if isinstance(image, np.ndarray) else quantize(image, bits)
        channels = 1 if pixels.ndim == 2 else pixels.shape[2]
        fmt = check_output(path, bits, overwrite, channels)
        if not 1 <= quality <= 100:
            raise GpufocusError(f"{path}: --quality must be between 1 and 100, not {quality}")
        software = software_tag(role) if role else None
        if not isinstance(pixels, np.ndarray):
            encoder = jpeg_encoder(pixels.device) if fmt == "JPEG" and channels == 3 and pixels.is_cuda else None
            if encoder is not None:
                try:  # here, not in a thread: in the order of this thread's stream, a few ms
                    data = encode_jpeg(encoder, pixels, quality=quality, exif=exif, icc=icc, software=software)
                except RuntimeError as error:
                    log.info("%s: %s; Pillow encodes it", path, error)
                else:
                    log.info("%s: JPEG encoded on %s by %s", path, pixels.device, encoder.name)
                    return self.write(path, data)
            pixels = pixels.cpu().numpy()
        pixels = pixels.astype(np.uint16 if bits == 16 else np.uint8, copy=False)

        def encode(out) -> None:
            encode_image(
                out, pixels, fmt, quality=quality, exif=exif, icc=icc, software=software, compression=compression
            )

        self.write(path, encode=encode)

    def json(self, path: str | os.PathLike, report, overwrite: bool = False) -> None:
        """``report`` as indented JSON, put in place on commit."""
        check_output_file(path, overwrite)
        self.write(path, (json.dumps(report, indent=1) + "\n").encode())

    def commit(self) -> None:
        """Rename every temporary onto its target, once all are written."""
        try:
            self._finish()
            while self._pending:
                temporary, path = self._pending[0]
                try:
                    os.replace(temporary, path)
                except OSError as error:
                    raise GpufocusError(f"{path}: cannot write ({error.strerror or error})") from None
                self._pending.pop(0)
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove every temporary not yet put in place. Encoders not started never
        start; one at work is not waited for (an interrupt must not wait for it): it
        writes on into its removed temporary, and cannot make it anew."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool, self._work = None, []
        for temporary, _ in self._pending:
            try:
                os.unlink(temporary)
            except OSError:
                pass
        self._pending.clear()


def quantize(image: torch.Tensor, bits: int) -> torch.Tensor:
    """``(C, H, W)`` floats in [0, 1] to rounded ``uint8``/``uint16``, on their device.

    ``C`` channels give ``(H, W, C)`` (contiguous), one channel ``(H, W)``: a result
    on a GPU is made integers there, and downloaded a quarter (or half) the size.
    """
    top = 65535 if bits == 16 else 255
    import torch

    # one float copy, scaled in place and let go once it is integers, which are then laid
    # out as the encoders take them: on top of a 24-megapixel result, 288 MB + 72 MB,
    # then 2 x 72 MB (``memory.frame_needs``), not three float copies
    integers = image.detach().float().clamp(0, 1).mul_(top).round_().to(torch.uint16 if bits == 16 else torch.uint8)
    pixels = integers.permute(1, 2, 0).contiguous()
    return pixels[:, :, 0] if pixels.shape[2] == 1 else pixels


def to_array(image: torch.Tensor, bits: int) -> np.ndarray:
    """``quantize`` on the CPU: an ``(H, W, C)`` or ``(H, W)`` array."""
    return quantize(image, bits).cpu().numpy()


def write_image(
    path: str | os.PathLike,
    image: torch.Tensor | np.ndarray,
    *,
    bits: int = 8,
    quality: int = OutputOptions.quality,
    exif: bytes | None = None,
    icc: bytes | None = None,
    overwrite: bool = False,
    role: str | None = None,
    compression: str = OutputOptions.compression,
) -> Path:
    """Write an image, atomically: to a temporary file in the same folder, then renamed.

    Args:
        path: output file; ``.jpg``/``.jpeg``, ``.png`` or ``.tif``/``.tiff``.
        image: ``(C, H, W)`` float tensor in [0, 1], or an ``(H, W, C)`` or ``(H, W)``
            uint8/uint16 array. One channel writes a grey image, three RGB; other
            channel counts only to TIFF. A tensor on a GPU is made integers there
            (``quantize``); an RGB JPEG is encoded there where ``jpeg_encoder`` has an
            encoder (else Pillow encodes it on the CPU).
        bits: 8 or 16 bits per channel (16 for PNG and TIFF only).
        quality: JPEG quality, 1-100.
        exif: EXIF block to embed.
        icc: ICC profile to embed.
        overwrite: replace an existing file.
        role: what the file is (``"fused image"``, say), for its ``Software`` tag
            (``software_tag``); ``None`` for no tag.
        compression: TIFF compression (``deflate``, ``lzw``, ``zstd`` or ``none``).

    Returns:
        The path written.

    Raises:
        GpufocusError: see ``check_output``; also a failed write (disk full, ...).
    """
    with Outputs() as out:
        out.image(
            path, image, bits=bits, quality=quality, exif=exif, icc=icc, overwrite=overwrite, role=role,
            compression=compression,
        )
    return Path(path)


def write_json(path: str | os.PathLike, report, overwrite: bool = False) -> Path:
    """Write ``report`` as JSON, atomically (see ``write_image``)."""
    with Outputs() as out:
        out.json(path, report, overwrite)
    return Path(path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
