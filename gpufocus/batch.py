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

from .decode import RAW_SUFFIXES
from .errors import GpufocusError, GpufocusWarning
from .job import FusionJob, Targets
from .load import FrameStack, natural_key
from .options import FuseOptions, OptionError, OutputOptions

__all__ = ["BatchOutput", "StackResult", "find_stacks", "fuse_stack", "run_batch", "summarize"]

#: Result formats of a batch, by file extension.
FORMATS = ("jpg", "png", "tif")


@dataclass(frozen=True)
class BatchOutput:
    """Where and how every stack's result is written.

    Args:
        folder: results go to ``folder/<stack>.<format>``, with a depth map (when the
            fusion makes one) ``<stack>.depth.png`` and the transforms (``save_transforms``)
            ``<stack>.transforms.json``.
        format: ``jpg``, ``png`` or ``tif``; ``None``: ``tif`` for a stack of RAW files
            (16 bits), ``jpg`` for others.
        output: bits and JPEG quality.
        save_transforms: also write each stack's per-frame transforms.
        steps: write each stack's intermediate results to ``steps/<stack>/``
            (``gpufocus.steps``).
        overwrite: fuse stacks whose result exists too (otherwise they are skipped).
    """

    folder: Path
    format: str | None = None
    output: OutputOptions = OutputOptions()
    save_transforms: bool = False
    overwrite: bool = False
    steps: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "folder", Path(self.folder))
        if self.format is not None and self.format not in FORMATS:
            raise OptionError("format", self.format, f"use one of {', '.join(FORMATS)}")

    def targets(self, stack: Path, options: FuseOptions) -> Targets:
        """The files of the stack in folder ``stack``."""
        name = self.folder / stack.name
        return Targets(
            image=name.with_name(f"{stack.name}.{self.format or _default_format(stack)}"),
            depth=name.with_name(f"{stack.name}.depth.png") if options.depth_map else None,
            transforms=name.with_name(f"{stack.name}.transforms.json") if self.save_transforms else None,
        )


def _default_format(stack: Path) -> str:
    try:
        raw = any(entry.name.lower().endswith(RAW_SUFFIXES) for entry in os.scandir(stack))
    except OSError:  # reading the stack names the problem
        raw = False
    return "tif" if raw else "jpg"


@dataclass
class StackResult:
    """What became of one stack: ``status`` is ``written``, ``skipped`` or ``failed``."""

    name: str
    output: str
    status: str
    device: str
    frames: int = 0
    seconds: float = 0.0
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


def fuse_stack(folder: str | os.PathLike, options: FuseOptions, output: BatchOutput) -> StackResult:
    """Fuse the stack in ``folder`` and write its files (see ``BatchOutput``); never
    raises for a bad stack: the result says what went wrong."""
    result, pending = _run_stack(Path(folder), options, output)
    return _finish(result, pending)


def _run_stack(folder: Path, options: FuseOptions, output: BatchOutput, stack=None, writer=None):
    """``fuse_stack``'s work. ``stack``: the folder's ``FrameStack`` if read already (and
    decoding ahead), or the exception that reading it raised; ``writer``: write there,
    and return the pending write."""
    targets = output.targets(folder, options)
    result = StackResult(folder.name, str(targets.image), "written", options.device)
    if targets.image.exists() and not output.overwrite:
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
            steps = None
            if output.steps is not None:
                from .steps import StepWriter

                steps = StepWriter(Path(output.steps) / folder.name, len(stack), stack.names)
            job = FusionJob(stack, targets, options, output.output, output.overwrite, steps)
            job.fuse()
            result.device = str(job.fuser.device)
            if writer is None:
                job.write()
            else:
                pending = writer.submit(job.write)
        result.warnings = [str(w.message) for w in caught if issubclass(w.category, GpufocusWarning)]
    except Exception as error:  # noqa: BLE001 - one broken stack must not stop the batch
        _failed(result, error)
    finally:
        if isinstance(stack, FrameStack):
            stack.close()  # a stack that failed before it was read still decodes ahead
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


def _in_order(folders, options: FuseOptions, output: BatchOutput, on_result) -> list[StackResult]:
    """One stack after another in this process, the next one read while this one fuses."""
    results = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpufocus-write") as writer, ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="gpufocus-next"
    ) as reader:

        def open_stack(folder: Path) -> FrameStack | Exception | None:
            if output.targets(folder, options).image.exists() and not output.overwrite:
                return None
            try:
                stack = FrameStack([folder])
            except Exception as error:  # noqa: BLE001 - _run_stack reports it as this stack's failure
                return error
            stack.prefetch(options.chunk or 1)
            return stack

        def report(running: tuple) -> None:
            results.append(_finish(*running))
            if on_result is not None:
                on_result(results[-1])

        upcoming = reader.submit(open_stack, folders[0])
        writing = None  # the previous stack, its files still being written
        for n, folder in enumerate(folders):
            stack = upcoming.result()
            if n + 1 < len(folders):
                upcoming = reader.submit(open_stack, folders[n + 1])
            running = _run_stack(folder, options, output, stack, writer)
            if writing is not None:
                report(writing)
            writing = running
        report(writing)
    return results


_worker_device: str | None = None


def _start_worker(devices, workers: int) -> None:
    """Worker start: take a device, and a fair share of the CPU cores (else the workers'
    thread pools fight over them: seen 7 times slower with 2 workers on 2 cores)."""
    global _worker_device
    _worker_device = devices.get()
    import torch

    from .allocator import tune_host_allocator

    tune_host_allocator()  # a process of our own
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _fuse_on_worker(folder: Path, options: FuseOptions, output: BatchOutput) -> StackResult:
    return fuse_stack(folder, options.replace(device=_worker_device), output)


def _over_devices(folders, options: FuseOptions, output: BatchOutput, devices, on_result) -> list[StackResult]:
    """A worker process per device; each takes the next stack when it is done with one."""
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    workers = len(devices)
    with context.Manager() as manager:
        queue = manager.Queue()
        for device in devices:
            queue.put(device)
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(queue, workers)) as pool:
            futures = {pool.submit(_fuse_on_worker, folder, options, output): folder for folder in folders}
            return _collect(futures, as_completed(futures), options, output, on_result)


def _collect(futures: dict, finished, options: FuseOptions, output: BatchOutput, on_result) -> list[StackResult]:
    """Results of ``futures`` (future -> folder) as they finish, each passed to
    ``on_result`` too. A future that failed (a worker process died, a cluster lost
    its task) fails its stack."""
    results = []
    for future in finished:
        try:
            result = future.result()
        except Exception as error:  # noqa: BLE001 - one lost stack must not stop the batch
            folder = futures[future]
            image = output.targets(folder, options).image
            result = _failed(StackResult(folder.name, str(image), "failed", options.device), error)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _on_cluster(folders, options: FuseOptions, output: BatchOutput, scheduler, on_result) -> list[StackResult]:
    """Every stack a Dask task (``pip install gpufocus[cluster]``)."""
    try:
        from distributed import Client, as_completed as completed
    except ImportError:
        raise GpufocusError("the Dask scheduler needs Dask's distributed package (pip install 'gpufocus[cluster]')") from None
    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        futures = {client.submit(fuse_stack, folder, options, output, pure=False): folder for folder in folders}
        return _collect(futures, completed(list(futures)), options, output, on_result)
    finally:
        if client is not scheduler:
            client.close()


def run_batch(
    folders: Sequence[str | os.PathLike],
    options: FuseOptions | None,
    output: BatchOutput,
    *,
    devices: Sequence[str] | None = None,
    scheduler=None,
    on_result: Callable[[StackResult], None] | None = None,
) -> list[StackResult]:
    """Fuse every stack folder; return a result per stack, in the folders' order.

    Args:
        folders: the stack folders (``find_stacks(root)``, say).
        options: how to fuse them (``None``: the defaults).
        output: where and how to write them (the folder is made if missing).
        devices: several devices get a worker process each (the stacks go to them in
            turn); ``None`` or one device runs the stacks in this process (on
            ``options.device``, or that one device).
        scheduler: a Dask scheduler address or ``distributed.Client``: run there instead.
        on_result: called with each stack's result as it is done.
    """
    options = options or FuseOptions()
    folders = [Path(f) for f in folders]
    target = output.folder.resolve()
    for folder in folders:
        if target == folder.resolve() or folder.resolve() in target.parents:
            raise GpufocusError(f"{output.folder}: is inside the stack folder {folder}; its results would become frames")
    try:
        output.folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GpufocusError(f"{output.folder}: cannot create the folder ({error.strerror or error})") from None
    devices = list(devices or [])
    if len(devices) == 1:
        options = options.replace(device=devices[0])
    if scheduler is not None:
        results = _on_cluster(folders, options, output, scheduler, on_result)
    elif len(devices) > 1:
        results = _over_devices(folders, options, output, devices, on_result)
    else:
        results = _in_order(folders, options, output, on_result)
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
