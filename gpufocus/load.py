"""Finding the frames of a stack and reading them in chunks (``FrameStack``).

A stack is a folder of images, a list of files, or one multi-page TIFF (a microscope
z-stack); the files' formats are read by ``gpufocus.decode``. The frames of a stack
share one layout: grey frames in a colour stack become RGB, 8-bit frames in a 16-bit
stack are scaled to 16 bits, and an alpha channel, where a frame has one, comes last.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .decode import MIN_LEVEL_SIDE, RAW_SUFFIXES, ImageInfo, OpenFiles, probe_image, read_image
from .errors import DamagedFileWarning, GpufocusError, GpufocusWarning
from .memory import frame_needs, host_room
from .nvcodec import CODEC_CALLS, nvimgcodec_for
from .options import FuseOptions
from .timing import NO_TIMER, StageTimer
from .write import OWN_ROLES, own_role

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

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
FRAME_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".png", ".tif", ".tiff", ".bmp", ".webp", *RAW_SUFFIXES)

#: What a stack folder written by ``gpufocus synth`` holds beside its frames; a listing
#: leaves these out of folders that hold its ``params.json``, and only there.
SIDE_FILES = frozenset({"ground_truth.png", "depth.png", "focus_index.png"})



def natural_key(path: Path) -> list:
    """Sort key that orders ``f2`` before ``f10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name.lower())]


def list_frames(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The image files named by ``inputs``: directories (natural order) and files.

    Raises:
        GpufocusError: a path that does not exist, or a directory without images.
    """
    return [path for path, _ in _listed(inputs)]


def _listed(inputs) -> list[tuple[Path, bool]]:
    """``list_frames``, each file with whether a directory listing found it."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    frames: list[tuple[Path, bool]] = []
    for item in map(Path, inputs):
        _check_reachable(item)
        if item.is_dir():
            try:
                entries = list(item.iterdir())
            except OSError as error:
                raise GpufocusError(f"{item}: cannot list this directory ({error.strerror or error})") from None
            side = SIDE_FILES if (item / "params.json").is_file() else frozenset()
            found = sorted(
                (p for p in entries if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES and p.name not in side),
                key=natural_key,
            )
            if not found:
                raise GpufocusError(f"{item}: no image files in this directory (.jpg, .png, .tif, .bmp, .webp, RAW)")
            frames.extend((path, True) for path in found)
        elif item.is_file():
            frames.append((item, False))
        elif item.exists():
            raise GpufocusError(f"{item}: not a regular file or directory")
        else:
            raise GpufocusError(f"{item}: no such file or directory")
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


def _check_sizes(infos: list[ImageInfo]) -> None:
    """Every frame of one size; else name the odd one out: the first frame whose size
    most frames do not have, or with no majority, the first frame that differs from the
    first one (and the first one beside it)."""
    sizes = [(info.width, info.height) for info in infos]
    counts = {size: sizes.count(size) for size in sizes}
    if len(counts) == 1:
        return
    common = max(counts, key=lambda size: (counts[size], -sizes.index(size)))  # ties: the earlier frame's
    odd = next(info for info, size in zip(infos, sizes) if size != common)
    shape = lambda info: f"{info.width}x{info.height}"  # noqa: E731
    if counts[common] * 2 > len(sizes):
        example = next(info for info, size in zip(infos, sizes) if size == common)
        raise GpufocusError(
            f"{odd.path}: {shape(odd)}, where the other frames are {shape(example)} ({example.path.name}, ...); "
            "frames must be aligned to the same size"
        )
    first = infos[0]  # no majority: the first frame that differs from the first one is named
    later = next(info for info in infos if shape(info) != shape(first))
    raise GpufocusError(
        f"{later.path}: {shape(later)}, and {first.path.name} (the first frame) is {shape(first)}; frames of "
        "different sizes (they must be aligned to the same size)"
    )


#: Of the host's free memory, what the frames a batch decodes ahead for its next stack
#: may take (``FrameStack.prefetch``), beside the stack it fuses.
_PREFETCH_SHARE = 1 / 8


class FrameStack:
    """The frames of one stack on disk, checked and read in chunks.

    Every header is read up front, so a bad file or a frame of another size is
    reported before any work starts. A multi-page TIFF gives one frame per page along
    its stack axis (Z, else its one page axis).

    Args:
        inputs: directories and/or files, as for ``list_frames``.

    Chunks carry ``channels`` image channels, and after them the alpha channel where
    any frame has one (``alpha``; opaque for frames without), which the engine takes as
    a mask (``FuseOptions.use_alpha``).

    A file its decoder reads although it finds it damaged is read with a warning
    (``DamagedFileWarning``), or refused where ``options.strict``.

    Files that a directory listing finds but that an earlier run of gpufocus wrote as
    a result (a fused image, a depth map; told by their ``Software`` tag) are left out
    with a warning; files named one by one are always frames.
    """

    def __init__(
        self, inputs: Sequence[str | os.PathLike] | str | os.PathLike, options: FuseOptions | None = None, *,
        warn: bool = True,
    ) -> None:
        strict = (options or FuseOptions()).strict
        infos, notes = [], []  # notes: warnings, given once every check has passed
        for path, listed in _listed(inputs):
            info = probe_image(path)
            if info.damage is not None and strict:
                raise GpufocusError(f"{path}: damaged ({info.damage}); refused under --strict")
            if info.damage is not None:
                notes.append((f"{path}: damaged ({info.damage}); read as it is, the result may be wrong",
                              DamagedFileWarning))
            role = own_role(info.software)
            if listed and role in OWN_ROLES:
                notes.append((f"{path}: skipped, a {role} that gpufocus wrote", GpufocusWarning))
                continue
            if info.series > 1:
                notes.append((f"{path}: holds {info.series} image series; fusing the first", GpufocusWarning))
            infos.append(info)
        # one entry per frame: the file and the frame within it
        self._frames = [(info, index) for info in infos for index in range(info.frames)]
        if len(self._frames) < 2:
            name = infos[0].path if infos else Path(inputs if isinstance(inputs, (str, os.PathLike)) else inputs[0])
            raise GpufocusError(f"{name}: a stack needs at least 2 frames, got {len(self._frames)}")
        self._early: list = []  # frames decoding (or files read) ahead, from prefetch
        self._early_bytes = False  # whether they are files read, for chunks_on
        self._early_chunk = None  # (chunk, device, future of _decoded_on's result): the first, from prefetch
        self._prefetcher: ThreadPoolExecutor | None = None
        self._files = OpenFiles()
        first = infos[0]
        if min(first.width, first.height) < MIN_LEVEL_SIDE:
            raise GpufocusError(
                f"{first.path}: {first.width}x{first.height} is too small to fuse "
                f"(at least {MIN_LEVEL_SIDE}x{MIN_LEVEL_SIDE})"
            )
        _check_sizes(infos)
        for info in infos[1:]:
            if info.linear != first.linear:
                raise GpufocusError(f"{info.path}: RAW and developed images cannot be mixed in one stack")
        self.colour = any(info.colour and info.channels == 3 for info in infos)
        self.channels = 3 if self.colour else first.channels
        for info in infos:
            if info.channels != self.channels and not (self.colour and info.channels == 1):
                raise GpufocusError(
                    f"{info.path}: {info.channels} channels, the first frame ({first.path.name}) has {first.channels}"
                )
        self.alpha = any(info.alpha for info in infos)
        self.linear = first.linear
        if first.white_balance is not None:  # every RAW frame developed alike: the first one's balance
            self._frames = [(dataclasses.replace(info, white_balance=first.white_balance), i) for info, i in self._frames]
        self.notes = notes  # (message, category): what it warned of, or with ``warn=False`` did not yet
        if warn:
            self.warn()

    def warn(self) -> None:
        """Give the warnings about the stack's files (``notes``): where several stacks are
        opened ahead on other threads, the caller gives them when it takes the stack."""
        for note, category in self.notes:
            warnings.warn(note, category, stacklevel=3)

    def __len__(self) -> int:
        return len(self._frames)

    def check_fits(self, options: FuseOptions, on_gpu: bool, gpu_room: int | None = None) -> None:
        """Refuse, from the headers alone and before anything is decoded, frames larger
        than ``options.max_megapixels`` or than the memory the run may use
        (``memory.frame_needs``: on the host no more than ``host_room``, on the GPU
        ``gpu_room`` where given). ``memory_budget`` sizes chunks and tiles; it does not
        refuse a stack that the machine can fuse."""
        info, (height, width) = self.infos[0], self.size
        pixels = height * width
        claimed = f"{width}x{height} ({pixels / 1e6:.0f} megapixels)"
        if pixels > options.max_megapixels * 1e6:
            raise GpufocusError(
                f"{info.path}: {claimed} is more than --max-megapixels {options.max_megapixels:g}; refused before "
                "decoding (a few bytes can claim that much); raise --max-megapixels if the frames are real"
            )
        needs = frame_needs(pixels, self.samples, 2 if self.bits > 8 else 1, on_gpu)
        rooms = {"host": host_room(), "device": gpu_room}
        for where, need in needs.items():
            room = rooms[where]
            if room is not None and need > room:
                place = "the GPU's" if where == "device" else "the"
                raise GpufocusError(
                    f"{info.path}: {claimed} needs at least {need / 2**30:.1f} GiB of {place} memory to fuse, and this "
                    f"run may use {room / 2**30:.1f} GiB; refused before decoding (a damaged header, or frames too "
                    "large for this machine; see --max-megapixels)"
                )

    @property
    def infos(self) -> list[ImageInfo]:
        """Each frame's file header (the same one for the pages of a z-stack)."""
        return [info for info, _ in self._frames]

    @property
    def paths(self) -> list[Path]:
        """Each frame's file."""
        return [info.path for info, _ in self._frames]

    @property
    def names(self) -> list[str]:
        """Each frame's name for messages: the file name, with the page for a z-stack."""
        return [info.path.name if info.frames == 1 else f"{info.path.name}[{i}]" for info, i in self._frames]

    @property
    def stems(self) -> list[str]:
        """A file-name stem per frame, for files made from the frames: the file's stem,
        with the frame's number for a z-stack (``zstack_003`` for ``zstack.ome.tif[3]``)."""
        stems = [re.sub(r"(?i)(\.ome)?\.[^.]*$", "", info.path.name) for info, _ in self._frames]
        return [stem if info.frames == 1 else f"{stem}_{i:03d}" for stem, (info, i) in zip(stems, self._frames)]

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of every frame."""
        return self.infos[0].height, self.infos[0].width

    @property
    def bits(self) -> int:
        """16 if any frame has 16 bits per channel, else 8."""
        return max(info.bits for info in self.infos)

    @property
    def samples(self) -> int:
        """Values per pixel of the chunks: ``channels``, plus one for ``alpha``."""
        return self.channels + self.alpha

    def _load(self, index: int) -> np.ndarray:
        info, frame = self._frames[index]
        dtype = np.uint16 if self.bits == 16 else np.uint8
        pixels = read_image(info.path, info, frame, self._files)
        image, alpha = pixels[:, :, : info.channels], pixels[:, :, info.channels :]
        if info.channels < self.channels:  # grey in a colour stack
            image = np.repeat(image, self.channels, axis=2)
        if self.alpha:
            top = np.iinfo(pixels.dtype).max
            image = np.concatenate([image, alpha if info.alpha else np.full_like(image[:, :, :1], top)], axis=2)
        if image.dtype != dtype:  # 8 bits in a 16-bit stack
            image = image.astype(dtype) * dtype(257)
        return np.ascontiguousarray(image)

    def prefetch(self, chunk: int, device: torch.device | None, timer: StageTimer = NO_TIMER) -> None:
        """Start reading the first ``2 * chunk`` frames now (in a thread of their own), for
        the ``chunks`` or ``chunks_on`` call that comes later: a batch reads the next stack
        while it fuses this one. Where ``device`` (the fusion's; ``None``: the CPU)
        decodes the stack (``decodable_on``), the files' bytes are read for its decoder;
        and the first chunk is decoded there too (on a CUDA stream of its own); else the
        frames are decoded on the host, no more of them than take an eighth of the host's
        free memory (``_PREFETCH_SHARE``). ``timer`` charges that work to the ``busy`` time
        of ``decode``."""
        self.close()
        self._prefetcher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpufocus-prefetch")
        self._early_bytes = device is not None and self.decodable_on(device)
        count = min(len(self), 2 * chunk)
        if not self._early_bytes:
            height, width = self.size
            decoded = height * width * self.samples * (2 if self.bits > 8 else 1)
            count = min(count, max(1, int(host_room() * _PREFETCH_SHARE) // decoded))
        work = self._read if self._early_bytes else self._load
        self._early = [self._prefetcher.submit(timer.worker, "decode", work, i) for i in range(min(count, chunk))]
        if self._early_bytes:  # one thread, in order: the first chunk's files, then it decoded
            decoding = self._prefetcher.submit(timer.worker, "decode", self._decoded_on, 0, chunk, device, self._early)
            self._early_chunk = (chunk, device, decoding)
        self._early += [self._prefetcher.submit(timer.worker, "decode", work, i) for i in range(chunk, count)]

    def _read(self, index: int) -> np.ndarray:
        """A frame's file, as bytes (``decodable_on`` stacks: one frame a file)."""
        return np.fromfile(self._frames[index][0].path, dtype=np.uint8)

    def _take_early(self, as_bytes: bool) -> list:
        """The frames ``prefetch`` started, if read as asked (decoded or as bytes)."""
        early, self._early = self._early, []
        return early if self._early_bytes == as_bytes else []

    def close(self) -> None:
        """Stop decoding ahead (``prefetch``), wait for its thread and close the files kept
        open; ``chunks`` does this once it has taken the frames."""
        if self._prefetcher is not None:
            self._prefetcher.shutdown(wait=True, cancel_futures=True)
            self._prefetcher = None
        self._early_chunk = None  # a first chunk decoded on the GPU for nobody: its memory goes
        self._files.close()

    def chunks(
        self, chunk: int, workers: int = 2, timer: StageTimer = NO_TIMER,
        into: Callable[[tuple[int, ...], np.dtype], np.ndarray] = np.empty,
    ) -> Iterator[np.ndarray]:
        """Frames as ``(B, H, W, samples)`` arrays of ``B <= chunk`` frames, in order.

        Decoding runs ahead in a thread pool (the decoders release the GIL), so the
        next chunk is read while the caller works on this one. ``timer`` charges the
        time spent waiting for decoded frames to the stage ``decode``, and the
        decoders' own time to its ``busy`` (frames decoded by ``prefetch``: see there).
        ``into(shape, dtype)`` makes each chunk's array (the CUDA path's: pinned memory,
        copied to the GPU from there).
        """
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gpufocus-decode")
        try:
            early = self._take_early(as_bytes=False)
            pending = early + [
                pool.submit(timer.worker, "decode", self._load, i) for i in range(len(early), min(len(self), 2 * chunk))
            ]
            next_index = len(pending)

            def taken(index: int) -> np.ndarray:
                if index < len(early) and pending[index].exception() is not None:
                    # read ahead while the stack before held the memory, say: read now (a
                    # broken file fails again, with its own error)
                    return timer.worker("decode", self._load, index)
                return pending[index].result()

            for start in range(0, len(self), chunk):
                with timer.stage("decode"):
                    batch = [taken(i) for i in range(start, min(start + chunk, len(self)))]
                for _ in batch:
                    if next_index < len(self):
                        pending.append(pool.submit(timer.worker, "decode", self._load, next_index))
                        next_index += 1
                for i in range(start, min(start + chunk, len(self))):
                    pending[i] = None  # let finished frames go
                frames = into((len(batch), *batch[0].shape), batch[0].dtype)
                for k, frame in enumerate(batch):
                    frames[k] = frame
                yield frames
        finally:  # also when the reader stops early: no decoding goes on for nobody
            pool.shutdown(wait=True, cancel_futures=True)
            self.close()

    def decodable_on(self, device: torch.device) -> bool:
        """Whether ``chunks_on`` can decode this stack on ``device``: a CUDA device, a GPU
        JPEG decoder (``jpeg_decoder``), and plain 8-bit colour JPEG frames with no EXIF
        turn."""
        if device.type != "cuda" or jpeg_decoder(device) is None:
            return False
        return all(i.format == "JPEG" and i.bits == 8 and i.orientation == 1 and i.channels == 3 for i in self.infos)

    def chunks_on(self, chunk: int, device: torch.device, timer: StageTimer = NO_TIMER) -> Iterator[torch.Tensor]:
        """Frames decoded by ``jpeg_decoder(device)`` in batches, ``(B, 3, H, W)`` uint8 on
        ``device``.

        The next chunk is read (the first files already, and the first chunk decoded, if
        ``prefetch`` was given ``device``) and decoded in a thread while the caller works
        on this one: on CUDA on a stream of its own, which the caller's stream waits for.
        A chunk the decoder rejects is decoded on the CPU instead, which names the file
        if it is broken. The frames ``prefetch`` decoded come in chunks of ``chunk`` too
        (it may have planned another size, with the memory then free).
        """
        from .device import arrived

        log.info("JPEG frames decoded on %s by %s", device, jpeg_decoder(device).name)
        first = self._early_chunk
        early = self._take_early(as_bytes=True)
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpufocus-decode") as pool:

                def decode(start: int):
                    return pool.submit(timer.worker, "decode", self._decoded_on, start, chunk, device, early)

                if first is not None and first[1] == device and first[2].exception() is None:
                    pending, begin = first[2], min(first[0], len(self))
                else:  # none, or it failed (the memory then in use by another stack, say): decoded now
                    pending, begin = decode(0), min(chunk, len(self))
                starts = list(range(begin, len(self), chunk))
                for n in range(len(starts) + 1):
                    with timer.stage("decode"):
                        frames, done = pending.result()
                    if n < len(starts):
                        pending = decode(starts[n])
                    yield from (frames if done is None else arrived(frames, done)).split(chunk)
        finally:  # as chunks: the prefetch stopped, the files closed
            self.close()

    def _decoded_on(
        self, start: int, chunk: int, device: torch.device, early: list
    ) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        """Frames ``start`` to ``start + chunk`` decoded by ``jpeg_decoder(device)``, their
        files taken from ``early`` (futures of ``_read``) where read: on CUDA on a stream
        of its own, with the event recorded after them (else ``None``)."""
        import torch

        indices = range(start, min(start + chunk, len(self)))
        data = [early[i].result() if i < len(early) else self._read(i) for i in indices]
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        with torch.cuda.stream(stream):  # no stream: as it is
            try:
                frames = torch.stack(jpeg_decoder(device).decode(data, device))
            except RuntimeError:
                cpu = np.stack([self._load(i) for i in indices])
                frames = torch.from_numpy(cpu).to(device).permute(0, 3, 1, 2)
            if stream is None:
                return frames, None
            done = torch.cuda.Event()
            done.record(stream)
        return frames, done


@dataclasses.dataclass(frozen=True)
class JpegDecoder:
    """A batch JPEG decoder: ``decode(data, device)`` takes the files' bytes (``uint8``
    arrays) and gives ``(3, H, W)`` ``uint8`` tensors on ``device``, or raises
    ``RuntimeError`` if it cannot decode one of them."""

    name: str
    decode: Callable[[list[np.ndarray], torch.device], list[torch.Tensor]]


@functools.cache
def jpeg_decoder(device: torch.device) -> JpegDecoder | None:
    """The batch JPEG decoder for ``device``, chosen once: NVIDIA's nvImageCodec (the
    ``gpufocus[cuda]`` extra: the card's hardware JPEG engine where it has one, else
    CUDA), else torchvision's nvJPEG; ``None`` where neither loads (the CPU decoders
    then read the frames). On the CPU: nvImageCodec's ``CPU_ONLY`` backend, the same
    code path without a GPU (the tests run it), or ``None``."""
    found = _nvimgcodec(device)
    if found is None and device.type == "cuda":
        found = _torchvision_jpeg()
    return None if found is None else _one_at_a_time(found)


def _one_at_a_time(decoder: JpegDecoder) -> JpegDecoder:
    """``decoder`` with its calls made one at a time (``CODEC_CALLS``): a batch decodes the
    next stack's first chunk while this stack's chunks decode in another thread, and
    nvImageCodec's decoder is not made to be called from two threads at once."""

    def decode(data: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
        with CODEC_CALLS:
            return decoder.decode(data, device)

    return JpegDecoder(decoder.name, decode)


def _nvimgcodec(device: torch.device) -> JpegDecoder | None:
    found = nvimgcodec_for("Decoder", device)
    if found is None:
        return None
    nvimgcodec, decoder = found
    params = nvimgcodec.DecodeParams(apply_exif_orientation=False)  # frames turned by EXIF are not given to it

    def decode(data: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
        import torch

        stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0  # in torch's order
        images = decoder.decode([nvimgcodec.CodeStream(d) for d in data], params=params, cuda_stream=stream)
        if any(image is None for image in images):
            raise RuntimeError("nvImageCodec could not decode a frame")
        if device.type == "cpu":
            return [torch.from_numpy(np.asarray(image.cpu())).permute(2, 0, 1) for image in images]
        return [torch.as_tensor(image, device=device).permute(2, 0, 1) for image in images]

    return JpegDecoder(f"nvImageCodec {nvimgcodec.__version__}", decode)


def _torchvision_jpeg() -> JpegDecoder | None:
    try:
        import torch
        import torchvision
        from torchvision.io import ImageReadMode, decode_jpeg
    except Exception:  # noqa: BLE001 - not installed, or built for another torch
        return None

    def decode(data: list[np.ndarray], device: torch.device) -> list[torch.Tensor]:
        return decode_jpeg([torch.from_numpy(d) for d in data], mode=ImageReadMode.RGB, device=device)

    return JpegDecoder(f"torchvision {torchvision.__version__} (nvJPEG)", decode)
