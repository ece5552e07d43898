"""Many stacks: every sub-folder of a root is a stack, fused into a file named after it.

Three ways to run them, with one function, ``fuse_stack``, doing each stack:

- in this process, one stack after another, pipelined: the next stack's headers are
  read and its first frames decoded while the current one fuses, and each result is
  encoded and written while the next one fuses;
- over several devices of this machine (``devices=["cuda:0", "cuda:1"]``): a worker
  process per device, each taking the next stack as it finishes one;
- on a Dask cluster (``scheduler="tcp://host:8786"``, or a ``distributed.Client``):
  every stack is a task; the workers need gpufocus and see the same paths.

A stack that fails is reported and the others go on; outputs that exist already
are skipped unless ``overwrite``, so an interrupted batch resumes where it stopped.
"""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .align import AlignOptions
from .engine import StackFuser, fuse
from .errors import GpufocusError, GpufocusWarning
from .load import FrameStack, natural_key
from .write import check_distinct, check_output, write_image

__all__ = ["FuseSettings", "StackResult", "find_stacks", "fuse_stack", "run_batch", "summarize"]


@dataclass(frozen=True)
class FuseSettings:
    """How every stack of a batch is fused and written (see ``StackFuser`` and ``write_image``)."""

    method: str = "max-energy"
    levels: int | None = None
    kernel_size: int | None = None
    per_channel: bool = False
    dtype: str = "float32"
    chunk: int | None = None
    align: AlignOptions | None = field(default_factory=AlignOptions)
    consistency: int = 0
    tile: int | None = None
    bits: int | None = None
    quality: int = 95
    format: str = "jpg"


@dataclass
class StackResult:
    """What became of one stack: ``status`` is ``written``, ``skipped`` or ``failed``."""

    name: str
    output: str
    status: str
    frames: int = 0
    seconds: float = 0.0
    device: str = ""
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


def find_stacks(root: str | os.PathLike) -> list[Path]:
    """The sub-folders of ``root``, in natural order (hidden ones left out).

    Raises:
        GpufocusError: ``root`` is not a directory, or has no sub-folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise GpufocusError(f"{root}: not a directory of stack folders")
    stacks = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_key)
    if not stacks:
        raise GpufocusError(f"{root}: no stack folders in it (every sub-folder is one stack)")
    return stacks


def _output(folder: Path, outdir: Path, settings: FuseSettings) -> Path:
    return outdir / f"{folder.name}.{settings.format}"


def fuse_stack(
    folder: str | os.PathLike,
    outdir: str | os.PathLike,
    settings: FuseSettings = FuseSettings(),
    device: str = "auto",
    overwrite: bool = False,
) -> StackResult:
    """Fuse the stack in ``folder`` into ``outdir/<folder name>.<format>``; never raises
    for a bad stack: the result says what went wrong."""
    result, pending = _run_stack(Path(folder), Path(outdir), settings, device, overwrite)
    return _finish(result, pending)


def _run_stack(folder, outdir, settings, device, overwrite, stack=None, writer=None):
    """``fuse_stack``'s work. ``stack``: the folder's ``FrameStack`` if read already (and
    decoding ahead), or the exception that reading it raised; ``writer``: encode and
    write there, and return the pending write."""
    output = _output(folder, outdir, settings)
    result = StackResult(folder.name, str(output), "written", device=device)
    if output.exists() and not overwrite:
        result.status = "skipped"
        return result, None
    start, pending = time.perf_counter(), None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if isinstance(stack, BaseException):
                raise stack
            stack = stack or FrameStack([folder])
            result.frames = len(stack)
            bits = settings.bits or (stack.bits if settings.format != "jpg" else 8)
            check_output(output, bits, overwrite)
            check_distinct([output], stack.paths)
            fuser = StackFuser(
                settings.method, levels=settings.levels, kernel_size=settings.kernel_size,
                per_channel=settings.per_channel, device=device, dtype=settings.dtype, align=settings.align,
                names=[p.name for p in stack.paths], consistency=settings.consistency, tile=settings.tile,
            )
            image = fuse(stack, chunk=settings.chunk, fuser=fuser)
            reference = stack.infos[settings.align.reference if settings.align else 0]
            options = dict(bits=bits, quality=settings.quality, exif=reference.exif, icc=reference.icc, overwrite=overwrite)
            if writer is None:
                write_image(output, image, **options)
            else:
                pending = writer.submit(write_image, output, image, **options)
        result.warnings = [str(w.message) for w in caught if issubclass(w.category, GpufocusWarning)]
    except Exception as error:  # noqa: BLE001 - one broken stack must not stop the batch
        _failed(result, error)
    result.seconds = time.perf_counter() - start
    return result, pending


def _failed(result: StackResult, error: BaseException) -> StackResult:
    """Mark a stack failed: our errors say it in their own words, others name their type."""
    text = str(error) if isinstance(error, GpufocusError) else f"{type(error).__name__}: {error}"
    result.status, result.error = "failed", " ".join(text.split())
    return result


def _finish(result: StackResult, pending) -> StackResult:
    """Wait for a result's file to be written; a failed write fails the stack."""
    if pending is not None:
        try:
            pending.result()
        except Exception as error:  # noqa: BLE001 - as in _run_stack
            _failed(result, error)
    return result


def _in_order(folders, outdir, settings, device, overwrite, on_result) -> list[StackResult]:
    """One stack after another in this process, the next one read while this one fuses."""
    results = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpufocus-write") as writer, ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="gpufocus-next"
    ) as reader:

        def open_stack(folder: Path) -> FrameStack | Exception | None:
            if _output(folder, outdir, settings).exists() and not overwrite:
                return None
            try:
                stack = FrameStack([folder])
            except Exception as error:  # noqa: BLE001 - _run_stack reports it as this stack's failure
                return error
            stack.prefetch(settings.chunk or 1)
            return stack

        def report(running: tuple) -> None:
            results.append(_finish(*running))
            if on_result is not None:
                on_result(results[-1])

        upcoming = reader.submit(open_stack, folders[0])
        writing = None  # the previous stack, its file still being written
        for n, folder in enumerate(folders):
            stack = upcoming.result()
            if n + 1 < len(folders):
                upcoming = reader.submit(open_stack, folders[n + 1])
            running = _run_stack(folder, outdir, settings, device, overwrite, stack, writer)
            if writing is not None:
                report(writing)
            writing = running
        report(writing)
    return results


_device_of_worker: str | None = None


def _take_device(devices, workers: int) -> None:
    """Worker start: take a device, and a fair share of the CPU cores (else the workers'
    thread pools fight over them: seen 7 times slower with 2 workers on 2 cores)."""
    global _device_of_worker
    _device_of_worker = devices.get()
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _fuse_on_worker_device(folder, outdir, settings, overwrite) -> StackResult:
    return fuse_stack(folder, outdir, settings, _device_of_worker or "auto", overwrite)


def _over_devices(folders, outdir, settings, devices, overwrite, on_result) -> list[StackResult]:
    """A worker process per device; each takes the next stack when it is done with one."""
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    queue = context.Manager().Queue()
    for device in devices:
        queue.put(device)
    workers = len(devices)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_take_device, initargs=(queue, workers)) as pool:
        futures = {pool.submit(_fuse_on_worker_device, folder, outdir, settings, overwrite): folder for folder in folders}
        return _collect(futures, as_completed(futures), outdir, settings, on_result)


def _collect(futures: dict, finished, outdir: Path, settings: FuseSettings, on_result) -> list[StackResult]:
    """Results of ``futures`` (future -> folder) as they finish, each passed to
    ``on_result`` too. A future that failed (a worker process died, a cluster lost
    its task) fails its stack."""
    results = []
    for future in finished:
        try:
            result = future.result()
        except Exception as error:  # noqa: BLE001 - one lost stack must not stop the batch
            folder = futures[future]
            result = _failed(StackResult(folder.name, str(_output(folder, outdir, settings)), "failed"), error)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _on_cluster(folders, outdir, settings, scheduler, overwrite, on_result) -> list[StackResult]:
    """Every stack a Dask task (``pip install gpufocus[cluster]``)."""
    try:
        from distributed import Client, as_completed as completed
    except ImportError:
        raise GpufocusError("--scheduler: needs Dask's distributed package (pip install 'gpufocus[cluster]')") from None
    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        futures = {
            client.submit(fuse_stack, str(folder), str(outdir), settings, "auto", overwrite, pure=False): folder
            for folder in folders
        }
        return _collect(futures, completed(list(futures)), outdir, settings, on_result)
    finally:
        if client is not scheduler:
            client.close()


def run_batch(
    folders: Sequence[str | os.PathLike],
    outdir: str | os.PathLike,
    settings: FuseSettings = FuseSettings(),
    *,
    devices: Sequence[str] = ("auto",),
    scheduler=None,
    overwrite: bool = False,
    on_result: Callable[[StackResult], None] | None = None,
) -> list[StackResult]:
    """Fuse every stack folder; return a result per stack, in the folders' order.

    Args:
        folders: the stack folders (``find_stacks(root)``, say).
        outdir: where the outputs go (created if missing).
        settings: how to fuse and write them.
        devices: one device runs the stacks in this process; several get a worker
            process each.
        scheduler: a Dask scheduler address or ``distributed.Client``: run there instead.
        overwrite: fuse stacks whose output exists too (otherwise they are skipped).
        on_result: called with each stack's result as it is done.
    """
    folders, outdir = [Path(f) for f in folders], Path(outdir)
    if settings.format not in ("jpg", "png", "tif"):
        raise GpufocusError(f"--format {settings.format}: use jpg, png or tif")
    target = outdir.resolve()
    for folder in folders:
        if target == folder.resolve() or folder.resolve() in target.parents:
            raise GpufocusError(f"{outdir}: is inside the stack folder {folder}; its results would become frames")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GpufocusError(f"{outdir}: cannot create the folder ({error.strerror or error})") from None
    if scheduler is not None:
        results = _on_cluster(folders, outdir, settings, scheduler, overwrite, on_result)
    elif len(devices) > 1:
        results = _over_devices(folders, outdir, settings, list(devices), overwrite, on_result)
    else:
        results = _in_order(folders, outdir, settings, devices[0], overwrite, on_result)
    order = {folder.name: i for i, folder in enumerate(folders)}
    return sorted(results, key=lambda r: order[r.name])


def summarize(results: list[StackResult], seconds: float) -> dict:
    """Counts by status, wall time and throughput, and every stack's result."""
    counts = {status: sum(r.status == status for r in results) for status in ("written", "skipped", "failed")}
    return {
        **counts,
        "stacks": len(results),
        "seconds": seconds,
        "stacks_per_minute": counts["written"] / seconds * 60 if seconds > 0 else 0.0,
        "results": [asdict(r) for r in results],
    }
