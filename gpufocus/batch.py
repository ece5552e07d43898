"""Many stacks: every sub-folder of a root is a stack, fused into a file named after it.

The stacks come from a folder (``find_stacks``: its sub-folders), a manifest
(``read_manifest``: CSV or JSON, each stack's frames and output), or a folder watched
while it fills (``watch_stacks``: a sub-folder is fused once it has been quiet for a
while, or holds a marker file). Three ways to run them, with one function,
``fuse_stack``, doing each stack:

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

import csv
import glob
import json
import multiprocessing
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .decode import RAW_SUFFIXES
from .errors import GpufocusError, GpufocusWarning
from .job import FusionJob, Targets
from .load import FrameStack, list_frames, natural_key
from .options import FuseOptions, OptionError, OutputOptions
from .timing import NO_TIMER, StageTimer

__all__ = [
    "BatchOutput", "StackSpec", "StackResult", "find_stacks", "read_manifest", "fuse_stack", "run_batch",
    "watch_stacks", "summarize",
]

#: Result formats of a batch, by file extension.
FORMATS = ("jpg", "png", "tif")


@dataclass(frozen=True)
class StackSpec:
    """One stack of a batch: its name (for reports and default file names), its frames
    (folders and/or files, as ``FrameStack`` takes them) and, if given, its output image."""

    name: str
    inputs: tuple[Path, ...]
    output: Path | None = None

    @staticmethod
    def of(stack: StackSpec | str | os.PathLike) -> StackSpec:
        """A folder as a stack named after it; a ``StackSpec`` as it is."""
        if isinstance(stack, StackSpec):
            return stack
        return StackSpec(Path(stack).name, (Path(stack),))


@dataclass(frozen=True)
class BatchOutput:
    """Where and how every stack's result is written.

    Args:
        folder: results go to ``folder/<stack>.<format>`` (or where a manifest says),
            with a depth map (when the fusion makes one) ``<stack>.depth.png`` and the
            transforms (``save_transforms``) ``<stack>.transforms.json`` beside them.
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

    def targets(self, stack: StackSpec | str | os.PathLike, options: FuseOptions) -> Targets:
        """The files of ``stack`` (a ``StackSpec``, or a stack folder)."""
        stack = StackSpec.of(stack)
        image = stack.output or self.folder / f"{stack.name}.{self.format or _default_format(stack)}"
        return Targets(
            image=image,
            depth=image.with_name(f"{stack.name}.depth.png") if options.depth_map else None,
            transforms=image.with_name(f"{stack.name}.transforms.json") if self.save_transforms else None,
        )


def _default_format(stack: StackSpec) -> str:
    try:
        frames = list_frames(list(stack.inputs))
    except GpufocusError:  # reading the stack names the problem
        frames = []
    return "tif" if any(frame.suffix.lower() in RAW_SUFFIXES for frame in frames) else "jpg"


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
    stacks = list(_sub_folders(root))
    if not stacks:
        raise GpufocusError(f"{root}: no stack folders in it (every sub-folder is one stack)")
    return stacks


def read_manifest(path: str | os.PathLike) -> list[StackSpec]:
    """The stacks a manifest lists, paths taken relative to the manifest's folder.

    JSON: a list (or ``{"stacks": [...]}``) of objects with ``frames`` (a folder, a glob
    pattern, or a list of files and patterns), and optionally ``name`` and ``output``.
    CSV: a header with ``frames`` and optionally ``name`` and ``output``; ``frames`` as
    in JSON, several separated by ``;``. A stack's name defaults to its first folder's
    or file's name; names must differ.

    Raises:
        GpufocusError: unreadable manifest, a row without frames, a pattern that
            matches nothing, two stacks of one name.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise GpufocusError(f"{path}: cannot read the manifest ({getattr(error, 'strerror', None) or error})") from None
    if path.suffix.lower() == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise GpufocusError(f"{path}: not JSON ({error.msg}, line {error.lineno})") from None
        rows = rows.get("stacks") if isinstance(rows, dict) else rows
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise GpufocusError(f"{path}: a JSON manifest is a list of stacks, each an object with \"frames\"")
    else:
        rows = list(csv.DictReader(text.splitlines()))
        for row in rows:
            if isinstance(row.get("frames"), str):
                row["frames"] = [part.strip() for part in row["frames"].split(";") if part.strip()]
    stacks = [_manifest_stack(path, number, row) for number, row in enumerate(rows, start=1)]
    if not stacks:
        raise GpufocusError(f"{path}: the manifest lists no stacks")
    seen = set()
    for stack in stacks:
        if stack.name in seen:
            raise GpufocusError(f"{path}: two stacks are named {stack.name!r}; give them distinct names")
        seen.add(stack.name)
    return stacks


def _manifest_stack(manifest: Path, number: int, row: dict) -> StackSpec:
    frames = row.get("frames")
    frames = [frames] if isinstance(frames, str) else frames
    if not frames or not all(isinstance(f, str) for f in frames):
        raise GpufocusError(f"{manifest}: stack {number} has no frames (a folder, a pattern or a list of files)")
    inputs = []
    for item in frames:
        full = manifest.parent / item
        if glob.has_magic(item):
            found = sorted((Path(p) for p in glob.glob(str(full))), key=natural_key)
            if not found:
                raise GpufocusError(f"{manifest}: stack {number}: {item} matches no file")
            inputs += found
        else:
            inputs.append(full)
    name = row.get("name") or (inputs[0].name if inputs[0].is_dir() else inputs[0].stem)
    output = row.get("output")
    return StackSpec(str(name), tuple(inputs), manifest.parent / output if output else None)


def fuse_stack(stack: StackSpec | str | os.PathLike, options: FuseOptions, output: BatchOutput) -> StackResult:
    """Fuse a stack (a ``StackSpec``, or a folder) and write its files (see
    ``BatchOutput``); never raises for a bad stack: the result says what went wrong."""
    result, pending = _run_stack(StackSpec.of(stack), options, output)
    return _finish(result, pending)


def _run_stack(
    spec: StackSpec, options: FuseOptions, output: BatchOutput, stack=None, writer=None, timer: StageTimer = NO_TIMER
):
    """``fuse_stack``'s work. ``stack``: the ``FrameStack`` if read already (and decoding
    ahead), or the exception that reading it raised; ``writer``: write there, and return
    the pending write; ``timer``: charges the stages (the write in ``writer`` as busy)."""
    targets = output.targets(spec, options)
    result = StackResult(spec.name, str(targets.image), "written", options.device)
    if targets.image.exists() and not output.overwrite:
        result.status = "skipped"
        return result, None
    start, pending = time.perf_counter(), None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if isinstance(stack, BaseException):
                raise stack
            if stack is None:
                stack = FrameStack(list(spec.inputs), options)
            else:  # opened ahead, on another thread: its warnings belong to this stack
                stack.warn()
            result.frames = len(stack)
            steps = None
            if output.steps is not None:
                from .steps import StepWriter

                steps = StepWriter(Path(output.steps) / spec.name, len(stack), stack.stems)
            job = FusionJob(stack, targets, options, output.output, output.overwrite, steps)
            job.fuse(timer=timer)
            result.device = str(job.fuser.device)
            if writer is None:
                with timer.stage("write"):
                    job.write(timer)
            else:  # torch's part here (``settle``), the encoders' there
                with timer.stage("write"):
                    job.settle()
                pending = writer.submit(timer.worker, "write", job.write)
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


def _finish(result: StackResult, pending, timer: StageTimer = NO_TIMER) -> StackResult:
    """Wait for a result's file to be written; a failed write fails the stack."""
    if pending is not None:
        try:
            with timer.stage("write"):
                pending.result()
        except Exception as error:  # noqa: BLE001 - as in _run_stack
            _failed(result, error)
    return result


def _in_order(stacks, options: FuseOptions, output: BatchOutput, on_result, timer: StageTimer) -> list[StackResult]:
    """One stack after another in this process, the next one read while this one fuses."""
    results = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpufocus-write") as writer, ThreadPoolExecutor(
        max_workers=1, thread_name_prefix="gpufocus-next"
    ) as reader:

        def open_stack(spec: StackSpec) -> FrameStack | Exception | None:
            from .device import resolve_device
            from .engine import check_fits, chunk_for

            if output.targets(spec, options).image.exists() and not output.overwrite:
                return None
            try:
                stack = FrameStack(list(spec.inputs), options, warn=False)
                device = resolve_device(options.device)
            except Exception as error:  # noqa: BLE001 - _run_stack reports it as this stack's failure
                return error
            try:  # nothing is decoded before the checks that refuse frames too large have passed
                check_fits(stack, options, device)
            except GpufocusError:  # the memory now in use may be free by its turn: its run checks again
                return stack
            stack.prefetch(chunk_for(stack, options, device), device, timer)  # the engine's first two chunks
            return stack

        def report(running: tuple) -> None:
            results.append(_finish(*running, timer))
            if on_result is not None:
                on_result(results[-1])

        upcoming = reader.submit(timer.worker, "decode", open_stack, stacks[0])
        writing = None  # the previous stack, its files still being written
        for n, spec in enumerate(stacks):
            with timer.stage("decode"):
                stack = upcoming.result()
            if n + 1 < len(stacks):
                upcoming = reader.submit(timer.worker, "decode", open_stack, stacks[n + 1])
            running = _run_stack(spec, options, output, stack, writer, timer)
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


def _fuse_on_worker(spec: StackSpec, options: FuseOptions, output: BatchOutput) -> StackResult:
    return fuse_stack(spec, options.replace(device=_worker_device), output)


def _over_devices(stacks, options: FuseOptions, output: BatchOutput, devices, on_result) -> list[StackResult]:
    """A worker process per device; each takes the next stack when it is done with one."""
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    workers = len(devices)
    with context.Manager() as manager:
        queue = manager.Queue()
        for device in devices:
            queue.put(device)
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(queue, workers)) as pool:
            futures = {pool.submit(_fuse_on_worker, spec, options, output): spec for spec in stacks}
            return _collect(futures, as_completed(futures), options, output, on_result)


def _collect(futures: dict, finished, options: FuseOptions, output: BatchOutput, on_result) -> list[StackResult]:
    """Results of ``futures`` (future -> stack) as they finish, each passed to
    ``on_result`` too. A future that failed (a worker process died, a cluster lost
    its task) fails its stack."""
    results = []
    for future in finished:
        try:
            result = future.result()
        except Exception as error:  # noqa: BLE001 - one lost stack must not stop the batch
            spec = futures[future]
            image = output.targets(spec, options).image
            result = _failed(StackResult(spec.name, str(image), "failed", options.device), error)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return results


def _on_cluster(stacks, options: FuseOptions, output: BatchOutput, scheduler, on_result) -> list[StackResult]:
    """Every stack a Dask task (``pip install gpufocus[cluster]``)."""
    try:
        from distributed import Client, as_completed as completed
    except ImportError:
        raise GpufocusError("the Dask scheduler needs Dask's distributed package (pip install 'gpufocus[cluster]')") from None
    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        futures = {client.submit(fuse_stack, spec, options, output, pure=False): spec for spec in stacks}
        return _collect(futures, completed(list(futures)), options, output, on_result)
    finally:
        if client is not scheduler:
            client.close()


def run_batch(
    stacks: Sequence[StackSpec | str | os.PathLike],
    options: FuseOptions | None,
    output: BatchOutput,
    *,
    devices: Sequence[str] | None = None,
    scheduler=None,
    on_result: Callable[[StackResult], None] | None = None,
    timer: StageTimer = NO_TIMER,
) -> list[StackResult]:
    """Fuse every stack; return a result per stack, in the stacks' order.

    Args:
        stacks: ``StackSpec`` (``read_manifest``, say) or stack folders (``find_stacks(root)``).
        options: how to fuse them (``None``: the defaults).
        output: where and how to write them (the folder is made if missing).
        devices: several devices get a worker process each (the stacks go to them in
            turn); ``None`` or one device runs the stacks in this process (on
            ``options.device``, or that one device).
        scheduler: a Dask scheduler address or ``distributed.Client``: run there instead.
        on_result: called with each stack's result as it is done.
        timer: charges every stack's stages (``gpufocus.timing``) where the stacks run
            in this process (not with several ``devices`` or a ``scheduler``).
    """
    options = options or FuseOptions()
    stacks = [StackSpec.of(s) for s in stacks]
    target = output.folder.resolve()
    for spec in stacks:
        for folder in (item for item in spec.inputs if item.is_dir()):
            if target == folder.resolve() or folder.resolve() in target.parents:
                raise GpufocusError(
                    f"{output.folder}: is inside the stack folder {folder}; its results would become frames"
                )
    for folder in {output.folder, *(spec.output.parent for spec in stacks if spec.output is not None)}:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise GpufocusError(f"{folder}: cannot create the folder ({error.strerror or error})") from None
    devices = list(devices or [])
    if len(devices) == 1:
        options = options.replace(device=devices[0])
    if scheduler is not None:
        results = _on_cluster(stacks, options, output, scheduler, on_result)
    elif len(devices) > 1:
        results = _over_devices(stacks, options, output, devices, on_result)
    else:
        results = _in_order(stacks, options, output, on_result, timer)
    order = {spec.name: i for i, spec in enumerate(stacks)}
    return sorted(results, key=lambda r: order[r.name])


def watch_stacks(
    root: str | os.PathLike,
    options: FuseOptions | None,
    output: BatchOutput,
    *,
    settle: float = 10.0,
    marker: str | None = None,
    poll: float = 1.0,
    stop: threading.Event | None = None,
    on_result: Callable[[StackResult], None] | None = None,
) -> list[StackResult]:
    """Fuse each sub-folder of ``root`` once it is complete, until ``stop`` is set.

    A folder is complete when it holds the file ``marker`` (if given), or else when
    none of its files has changed for ``settle`` seconds. Stacks whose output exists
    are skipped (so a restarted watch resumes); a stack that fails is reported once
    and not retried until its folder changes. ``stop`` is checked between stacks: the
    stack in hand is always finished.

    Returns:
        The results of the stacks fused (or failed), in the order they were done.
    """
    options = options or FuseOptions()
    root, stop = Path(root), stop or threading.Event()
    if not root.is_dir():
        raise GpufocusError(f"{root}: not a directory to watch")
    results: list[StackResult] = []
    done: dict[str, tuple] = {}  # folder name -> the state it was fused (or failed) in
    while not stop.is_set():
        for folder in _sub_folders(root):
            if stop.is_set():
                break
            state = _folder_state(folder)
            if state is None or done.get(folder.name) == state or not _complete(folder, state, settle, marker):
                continue
            spec = StackSpec(folder.name, (folder,))
            if output.targets(spec, options).image.exists() and not output.overwrite:
                done[folder.name] = state
                continue
            result = run_batch([spec], options, output)[0]
            done[folder.name] = state
            results.append(result)
            if on_result is not None:
                on_result(result)
        stop.wait(poll)
    return results


def _sub_folders(root: Path) -> Iterable[Path]:
    try:
        return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_key)
    except OSError:
        return []


def _folder_state(folder: Path) -> tuple | None:
    """The folder's files with their sizes and modification times; ``None`` if empty."""
    try:
        entries = [(e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(folder) if e.is_file()]
    except OSError:
        return None
    return tuple(sorted(entries)) or None


def _complete(folder: Path, state: tuple, settle: float, marker: str | None) -> bool:
    if marker is not None:
        return any(name == marker for name, _, _ in state)
    newest = max(mtime for _, _, mtime in state) / 1e9
    return time.time() - newest >= settle


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
