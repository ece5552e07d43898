"""gpufocus command line: ``fuse``, ``batch``, ``align``, ``eval``, ``synth``, ``bench``, ``demo``, ``info``.

A thin layer over the library: it parses options, shows progress on stderr and turns
``GpufocusError`` into a one-line message and exit code 1 (an ``OptionError`` names
the setting by its flag). Every option is declared once below; ``fuse`` and ``batch``
take the same fusion options, which become one ``FuseOptions``. Nothing heavy is
imported at the top: ``--help`` and ``--version`` never load torch, and each command
imports what it uses. The command starts at ``gpufocus.__main__.main``.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__
from .errors import GpufocusError, GpufocusWarning
from .options import ALIGN_MODELS, COMPRESSIONS, DTYPES, METHODS, SYNTH_FAMILIES, FuseOptions, OptionError, OutputOptions

#: Run once the fusion's modules (torch) are in, where the command line is a process of
#: gpufocus's own (``gpufocus.__main__`` puts ``gc.freeze`` here); empty where it runs
#: inside another program.
PROCESS_HOOKS: list[Callable[[], None]] = []


def _fusion_imported() -> None:
    while PROCESS_HOOKS:
        PROCESS_HOOKS.pop(0)()


app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Focus stacking by Laplacian-pyramid fusion, on CUDA or the CPU.",
)


def _console(stderr: bool = True, width: int | None = None):
    from rich.console import Console

    return Console(stderr=stderr, width=width)


def _say(text: str) -> None:
    """A message on stderr, as it is: no markup, no colours, no wrapping."""
    _console().print(text, markup=False, highlight=False, soft_wrap=True)


class _Notes(logging.Handler):
    """The library's notices (its ``logging`` warnings: a first run compiling the GPU
    kernels), a line each as they come, ``note: ...``, for every command; ``-q`` and
    ``-v`` (whose log shows them) turn them off for their block (``_verbose``)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.shown = True

    def emit(self, record: logging.LogRecord) -> None:
        if self.shown:
            _say(f"note: {record.getMessage()}")


_NOTES = _Notes()


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"gpufocus {__version__}")
        raise typer.Exit()


@app.callback()
def _start(
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_show_version, help="Print the version and stop.")
    ] = False,
) -> None:
    """Focus stacking by Laplacian-pyramid fusion, on CUDA or the CPU."""
    # Libraries log what they find in bad files (Pillow: "More samples per pixel than
    # can be decoded"); with no handler, Python prints such records on stderr. The
    # verdict on a file is the command's one line: give the root logger a handler.
    # Our own library's notices are shown, as they come (_Notes).
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())
    library = logging.getLogger("gpufocus")
    if _NOTES not in library.handlers:
        library.addHandler(_NOTES)


# -- every option, declared once -----------------------------------------------------

Method = Enum("Method", {name.replace("-", "_"): name for name in METHODS}, type=str)
DType = Enum("DType", {name: name for name in DTYPES}, type=str)
Compression = Enum("Compression", {name: name for name in COMPRESSIONS}, type=str)
AlignModel = Enum("AlignModel", {name: name for name in ALIGN_MODELS}, type=str)
Family = Enum("Family", {name: name for name in SYNTH_FAMILIES}, type=str)
BenchKind = Enum("BenchKind", {"core": "core", "e2e": "e2e"}, type=str)

_FUSE = FuseOptions()  # the defaults, from their one definition
_ALIGN = _FUSE.align
_OUTPUT = OutputOptions()

StackArgument = Annotated[list[Path], typer.Argument(help="A directory of frames, or the frame files in order.")]
MethodOption = Annotated[Method, typer.Option("-m", "--method", help="Selection rule.")]
NaiveOption = Annotated[bool, typer.Option("--naive", help="Same as --method max-log (the seed program's spelling).")]
LevelsOption = Annotated[
    Optional[int], typer.Option("--levels", "-d", "--depth", min=1, help="Pyramid detail levels. Default: from the frame size.")
]
KernelOption = Annotated[
    Optional[int],
    typer.Option("-k", "--kernel-size", help="Window of the local measure, odd. Default: 9 max-energy, 5 wang-chang, 3 max-log."),
]
PerChannelOption = Annotated[bool, typer.Option("--per-channel", help="Decide per colour channel (the seed program's way).")]
DeviceOption = Annotated[
    str, typer.Option("--device", help="auto, cpu, cuda or cuda:N; batch: several, comma-separated, a worker each.")
]
DTypeOption = Annotated[DType, typer.Option("--dtype", help="Arithmetic precision.")]
ChunkOption = Annotated[Optional[int], typer.Option("--chunk", min=1, help="Frames per step. Default: from free memory.")]
AlignOption = Annotated[
    bool, typer.Option("--align/--no-align", help="Align the frames first (focus breathing, shift, rotation).")
]
AlignModelOption = Annotated[AlignModel, typer.Option("--align-model", help="Motion model.")]
ReferenceOption = Annotated[
    int, typer.Option("--reference", min=0, help="Index of the frame whose geometry the result takes.")
]
MatchExposureOption = Annotated[
    bool, typer.Option("--match-exposure/--no-match-exposure", help="Match each frame's brightness to the reference.")
]
CropOption = Annotated[bool, typer.Option("--crop", help="Crop to the region every aligned frame covers.")]
AlignSizeOption = Annotated[
    int, typer.Option("--align-size", min=0, help="Longer side motion is estimated at (halving the frames); 0: full resolution.")
]
GlobalAlignOption = Annotated[
    bool, typer.Option("--global-align", help="Refine each frame against the reference itself (stacks moving one way).")
]
HaloGuardOption = Annotated[
    bool,
    typer.Option("--halo-guard/--no-halo-guard", help="Max-energy: at depth edges, finest detail from the frame in focus there."),
]
ConsistencyOption = Annotated[
    int, typer.Option("--consistency", min=0, max=2, help="Halo control (max-energy): 0 off, 1 or 2; reads the stack twice.")
]
DepthThresholdOption = Annotated[
    float,
    typer.Option("--depth-threshold", min=0, max=1, help="Depth map: fill pixels less sure than this (0-1) from surer ones."),
]
DepthSmoothOption = Annotated[
    int, typer.Option("--depth-smooth", min=0, help="Depth map: radius of its edge-aware smoothing, pixels; 0: none.")
]
TileOption = Annotated[
    Optional[int],
    typer.Option("--tile", min=0, help="Fuse in tiles of this size (same result). Default: only when memory needs it; 0: never."),
]
MemoryOption = Annotated[
    Optional[str],
    typer.Option("--memory-budget", help="Memory the fusion may use, e.g. 4G: sizes chunks and tiles. Default: 1/4 of free."),
]
MaxPixelsOption = Annotated[
    float,
    typer.Option("--max-megapixels", help="Refuse larger frames from their header, before decoding (a decompression bomb guard)."),
]
StrictOption = Annotated[
    bool, typer.Option("--strict", help="A damaged file that still decodes (TIFF tags against its data) is an error."),
]
BitsOption = Annotated[Optional[int], typer.Option("--bits", help="8 or 16 bits per channel. Default: the input's (8 for JPEG).")]
QualityOption = Annotated[int, typer.Option("--quality", min=1, max=100, help="JPEG quality.")]
CompressionOption = Annotated[
    Compression, typer.Option("--compression", help="TIFF compression (lossless; zstd: fastest, newer readers).")
]
IgnoreAlphaOption = Annotated[
    bool, typer.Option("--ignore-alpha", help="Fuse transparent pixels as image (by default they never win).")
]
OverwriteOption = Annotated[bool, typer.Option("--overwrite", help="Replace existing output files.")]
QuietOption = Annotated[bool, typer.Option("-q", "--quiet", help="No progress bar or summary.")]
VerboseOption = Annotated[
    bool, typer.Option("-v", "--verbose", help="Say what is decided (chunks, tiles, each frame's alignment) and time each stage.")
]
StepsOption = Annotated[
    Optional[Path],
    typer.Option("--save-steps", help="Write the intermediate results as pictures to this folder (see docs/algorithms.md)."),
]
TransformsOption = Annotated[Optional[Path], typer.Option("--save-transforms", help="Write the per-frame transforms (JSON).")]


class _Setting:
    """A fusion option of the command line: its parameter, and the FuseOptions field it sets."""

    def __init__(self, field: str | None, annotation, default) -> None:
        self.field, self.annotation, self.default = field, annotation, default

    def flag(self) -> str:
        option = self.annotation.__metadata__[0]
        names = [part for decl in (option.default, *option.param_decls) for part in str(decl).split("/")]
        return max((n for n in names if n.startswith("--")), key=len)


# The options of ``fuse`` and ``batch`` that make a FuseOptions; parameter name -> setting.
_FUSION = {
    "method": _Setting("method", MethodOption, Method(_FUSE.method)),
    "naive": _Setting(None, NaiveOption, False),
    "levels": _Setting("levels", LevelsOption, _FUSE.levels),
    "kernel_size": _Setting("kernel_size", KernelOption, _FUSE.kernel_size),
    "per_channel": _Setting("per_channel", PerChannelOption, _FUSE.per_channel),
    "ignore_alpha": _Setting("use_alpha", IgnoreAlphaOption, not _FUSE.use_alpha),
    "device": _Setting("device", DeviceOption, _FUSE.device),
    "dtype": _Setting("dtype", DTypeOption, DType(_FUSE.dtype)),
    "chunk": _Setting("chunk", ChunkOption, _FUSE.chunk),
    "align": _Setting("align", AlignOption, _FUSE.align is not None),
    "align_model": _Setting("align.model", AlignModelOption, AlignModel(_ALIGN.model)),
    "reference": _Setting("align.reference", ReferenceOption, _ALIGN.reference),
    "match_exposure": _Setting("align.match_exposure", MatchExposureOption, _ALIGN.match_exposure),
    "crop": _Setting("align.crop", CropOption, _ALIGN.crop),
    "align_size": _Setting("align.size", AlignSizeOption, _ALIGN.size),
    "global_align": _Setting("align.global_align", GlobalAlignOption, _ALIGN.global_align),
    "halo_guard": _Setting("halo_guard", HaloGuardOption, _FUSE.halo_guard),
    "consistency": _Setting("consistency", ConsistencyOption, _FUSE.consistency),
    "depth_threshold": _Setting("depth_threshold", DepthThresholdOption, _FUSE.depth_threshold),
    "depth_smooth": _Setting("depth_smooth", DepthSmoothOption, _FUSE.depth_smooth),
    "tile": _Setting("tile", TileOption, _FUSE.tile),
    "memory_budget": _Setting("memory_budget", MemoryOption, _FUSE.memory_budget),
    "max_megapixels": _Setting("max_megapixels", MaxPixelsOption, _FUSE.max_megapixels),
    "strict": _Setting("strict", StrictOption, _FUSE.strict),
}

# Settings the library names in an OptionError -> the flag a user typed.
_FLAGS = {setting.field: setting.flag() for setting in _FUSION.values() if setting.field}
_FLAGS.update(bits="--bits", quality="--quality", compression="--compression", format="--format", family="--family", frames="--frames",
              depth_map="--depth-map")


def _check_fits_early(stack, options: FuseOptions) -> None:
    """``FrameStack.check_fits`` before torch is imported (a second or more): where the
    fusion will run is guessed from the options and the machine (an NVIDIA device
    file); the engine checks again, exactly, once it knows."""
    on_gpu = options.device.startswith("cuda") or (options.device == "auto" and os.path.exists("/dev/nvidiactl"))
    stack.check_fits(options, on_gpu)


def _fuse_options(devices: bool = False, **values) -> FuseOptions:
    """The FuseOptions that the fusion options' ``values`` describe."""
    value = lambda name: getattr(values[name], "value", values[name])  # noqa: E731 - Enum or plain
    align = None
    if values["align"]:
        from .options import AlignOptions

        align = AlignOptions(
            value("align_model"), values["reference"], values["match_exposure"], values["crop"], values["align_size"],
            values["global_align"],
        )
    device = values["device"]
    return FuseOptions(
        method="max-log" if values["naive"] else value("method"),
        levels=values["levels"],
        kernel_size=values["kernel_size"],
        per_channel=values["per_channel"],
        use_alpha=not values["ignore_alpha"],
        device=device.split(",")[0].strip() if devices else device,
        dtype=value("dtype"),
        chunk=values["chunk"],
        align=align,
        halo_guard=values["halo_guard"],
        consistency=values["consistency"],
        depth_threshold=values["depth_threshold"],
        depth_smooth=values["depth_smooth"],
        tile=values["tile"],
        memory_budget=values["memory_budget"],
        max_megapixels=values["max_megapixels"],
        strict=values["strict"],
    )


def _with_fusion_options(command):
    """Give ``command`` every fusion option; it receives them as one ``options`` (and
    as they were typed, ``fusion_values``)."""
    own = inspect.signature(command, eval_str=True)
    parameters = [p for p in own.parameters.values() if p.name not in ("options", "fusion_values")]
    parameters += [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=setting.default, annotation=setting.annotation)
        for name, setting in _FUSION.items()
    ]

    @functools.wraps(command)
    def wrapper(**values):
        fusion = {name: values.pop(name) for name in _FUSION}
        with _user_errors():
            options = _fuse_options(devices=command.__name__ == "batch_command", **fusion)
        return command(options=options, fusion_values=fusion, **values)

    wrapper.__signature__ = own.replace(parameters=parameters)
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper


# -- errors, warnings, progress --------------------------------------------------------

@contextmanager
def _user_errors() -> Iterator[None]:
    """Bad input ends the command with one line on stderr and exit code 1, and nothing
    else; our warnings (alignment fall-backs, ...) are one line each, shown when the
    block ends well (a frame found broken after others drew warnings is still one
    line); other libraries' warnings are not shown."""
    shown: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", GpufocusWarning)
            warnings.showwarning = lambda message, category, *args, **kwargs: _keep_warning(shown, message, category)
            yield
        for message in shown:
            _say(f"warning: {message}")
    except OptionError as error:  # a setting the user typed: a usage error, as Click's are
        _say(f"error: {_FLAGS.get(error.field, error.field)} {_shown(error.value)}: {error.problem}")
        raise typer.Exit(2) from None
    except GpufocusError as error:
        _say(f"error: {error}")
        raise typer.Exit(1) from None
    except MemoryError:
        _say("error: out of memory; try a smaller --chunk or --memory-budget")
        raise typer.Exit(1) from None


def _shown(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _keep_warning(shown: list[str], message, category) -> None:
    # Decoders warn about the files they read (Pillow: "Truncated File Read", EXIF
    # oddities); the verdict on a file is ours to give, in one line.
    if issubclass(category, GpufocusWarning) or getattr(category, "for_users", False):
        shown.append(str(message))


def _progress(quiet: bool):
    from rich.progress import (
        BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
    )

    console = _console()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal,  # no bars in logs and pipes
        transient=True,
    )


@contextmanager
def _verbose(on: bool, options: FuseOptions, quiet: bool = False):
    """With ``-v``: the library's log on stderr (``gpufocus.engine: ...``, its notices
    among it) while the block runs, and a timer of the stages (``NO_TIMER`` without).
    Timing synchronises a CUDA device at every stage. With ``quiet``: no notices."""
    from .timing import NO_TIMER, StageTimer

    shown, _NOTES.shown = _NOTES.shown, not (on or quiet)
    logger = logging.getLogger("gpufocus")
    level, handler, timer = logger.level, None, NO_TIMER
    try:
        if on:
            from .device import resolve_device

            timer = StageTimer(resolve_device(options.device))
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
        yield timer
    finally:
        if handler is not None:
            logger.removeHandler(handler)
        logger.setLevel(level)
        _NOTES.shown = shown


def _log_stages(timer) -> None:
    logging.getLogger("gpufocus.cli").info("time per stage: %s", timer.report())


def _stage_bar(progress):
    """A ``progress(done, total, stage)`` callback: one bar per pass, named after it, its
    time left estimated from this pass alone."""
    tasks: dict[str, int] = {}

    def update(done: int, total: int, stage: str) -> None:
        if stage not in tasks:
            for task in tasks.values():
                progress.update(task, visible=False)
            tasks[stage] = progress.add_task(stage, total=total)
        progress.update(tasks[stage], completed=done)

    return update


def _table(title: str, header: Sequence[str], rows, right: Sequence[str] = ()):
    from rich.table import Table

    table = Table(title=title, header_style="bold", pad_edge=False)
    for name in header:
        table.add_column(name, justify="right" if name in right else "left")
    for row in rows:
        table.add_row(*row)
    return table


# -- commands --------------------------------------------------------------------------


@app.command("fuse")
@_with_fusion_options
def fuse_command(
    inputs: StackArgument,
    output: Annotated[Path, typer.Option("-o", "--output", help="Output image: .jpg, .png or .tif.")],
    depth_file: Annotated[
        Optional[Path],
        typer.Option("--depth-map", help="Also write which frame is in focus where: grey, 0 = first frame, white = last."),
    ] = None,
    save_transforms: TransformsOption = None,
    save_steps: StepsOption = None,
    bits: BitsOption = _OUTPUT.bits,
    quality: QualityOption = _OUTPUT.quality,
    compression: CompressionOption = Compression(_OUTPUT.compression),
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
    evaluate: Annotated[
        bool, typer.Option("--eval", help="Then print the sharpness table of the result (as gpufocus eval).")
    ] = False,
    *,
    options: FuseOptions,
    fusion_values: dict,
) -> None:
    """Fuse a focus stack into one image that is sharp throughout."""
    import time

    from .load import FrameStack

    with _user_errors():
        out = OutputOptions(bits=bits, quality=quality, compression=compression.value)
        options = options.replace(depth_map=depth_file is not None)
        stack = FrameStack(inputs, options)  # the headers, before torch loads: bad input is refused at once
        _check_fits_early(stack, options)
        from .job import FusionJob, Targets

        _fusion_imported()
        targets = Targets(output, depth_file, save_transforms)
        targets.check(options, out, overwrite)
        steps = None
        if save_steps is not None:
            from .steps import StepWriter

            StepWriter.check(save_steps)
            steps = StepWriter(save_steps, len(stack), stack.stems)
        job = FusionJob(stack, targets, options, out, overwrite, steps)
        started = time.perf_counter()
        with _verbose(verbose, options, quiet) as timer:
            with _progress(quiet) as progress:
                job.fuse(progress=_stage_bar(progress), timer=timer)
            with timer.stage("write"):
                job.write(timer)
            if verbose:
                _log_stages(timer)
        if not quiet:
            height, width = stack.size
            _say(
                f"wrote {output} ({width}x{height}, {job.bits}-bit) from {len(stack)} frames, "
                f"{options.method}, {time.perf_counter() - started:.2f} s"
            )
        if evaluate:  # the sources as fused: aligned, if they were
            from .metrics import evaluate as score

            _print_scores(score(stack, output, transforms=job.fuser.transforms))


@app.command("batch")
@_with_fusion_options
def batch_command(
    root: Annotated[
        Path, typer.Argument(help="A folder whose sub-folders are stacks, or a manifest (.csv or .json) of stacks.")
    ],
    outdir: Annotated[Path, typer.Option("-o", "--output", help="Folder for the results, named after the stacks.")],
    watch: Annotated[
        bool, typer.Option("--watch", help="Keep watching ROOT: fuse each sub-folder once complete; Ctrl-C stops.")
    ] = False,
    settle: Annotated[
        float, typer.Option("--settle", min=0, help="--watch: a folder is complete when quiet this many seconds.")
    ] = 10.0,
    marker: Annotated[
        Optional[str], typer.Option("--marker", help="--watch: a folder is complete when it holds this file instead.")
    ] = None,
    fmt: Annotated[
        Optional[str], typer.Option("--format", help="jpg, png or tif. Default: jpg, tif for stacks of RAW files.")
    ] = None,
    depth_map: Annotated[
        bool, typer.Option("--depth-map", help="Also write each stack's depth map, <stack>.depth.png.")
    ] = _FUSE.depth_map,
    save_transforms: Annotated[
        bool, typer.Option("--save-transforms", help="Also write each stack's transforms, <stack>.transforms.json.")
    ] = False,
    save_steps: Annotated[
        Optional[Path], typer.Option("--save-steps", help="Write each stack's intermediate results to DIR/<stack>/.")
    ] = None,
    bits: BitsOption = _OUTPUT.bits,
    quality: QualityOption = _OUTPUT.quality,
    compression: CompressionOption = Compression(_OUTPUT.compression),
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", help="Dask scheduler address: run the stacks there.")] = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Write every stack's result as JSON.")] = None,
    *,
    options: FuseOptions,
    fusion_values: dict,
) -> None:
    """Fuse every stack (sub-folder) of ROOT, or of a manifest; skip the ones done; report
    the ones that fail. With --watch, fuse sub-folders as they are completed."""
    import time

    from .batch import BatchOutput, find_stacks, read_manifest, run_batch, summarize

    _fusion_imported()
    from .write import check_output_file, write_json

    with _user_errors(), _verbose(verbose, options, quiet) as timer:
        devices = [d.strip() for d in fusion_values["device"].split(",") if d.strip()]
        for device in devices[1:]:
            FuseOptions(device=device)  # each one checked, as the first is
        options = options.replace(depth_map=depth_map)
        out = OutputOptions(bits=bits, quality=quality, compression=compression.value)
        if save_steps is not None:
            from .steps import StepWriter

            StepWriter.check(save_steps)
        output = BatchOutput(outdir, fmt, out, save_transforms, overwrite, save_steps)
        if report is not None:
            check_output_file(report, overwrite=True)
        started = time.perf_counter()
        if watch:
            results = _watch(root, options, output, settle, marker, quiet)
        else:
            stacks = read_manifest(root) if root.is_file() else find_stacks(root)
            with _progress(quiet) as progress:
                task = progress.add_task(f"{len(stacks)} stacks", total=len(stacks))

                def done(result) -> None:
                    progress.advance(task)
                    if result.status == "failed":
                        _say(f"failed: {result.name}: {result.error}")

                results = run_batch(
                    stacks, options, output, devices=devices if len(devices) > 1 else None, scheduler=scheduler,
                    on_result=done, timer=timer,
                )
            if verbose and timer.seconds:  # the stacks ran here
                _log_stages(timer)
        summary = summarize(results, time.perf_counter() - started)
        if report is not None:
            write_json(report, summary, overwrite=True)
    if not quiet:
        rows = [
            (r.name, r.status, str(r.frames), f"{r.seconds:.2f}", r.error or "; ".join(r.warnings)) for r in results
        ]
        table = _table(f"{root} -> {outdir}", ("stack", "status", "frames", "seconds", "note"), rows, ("frames", "seconds"))
        console = _console()
        _console(width=None if console.is_terminal else 200).print(table)
        _say(
            f"{summary['written']} written, {summary['skipped']} skipped, {summary['failed']} failed "
            f"in {summary['seconds']:.1f} s"
        )
    if summary["failed"]:
        raise typer.Exit(1)


@app.command("align")
def align_command(
    inputs: StackArgument,
    outdir: Annotated[Path, typer.Option("-o", "--output", help="Folder for the aligned frames.")],
    align_model: AlignModelOption = AlignModel(_ALIGN.model),
    reference: ReferenceOption = _ALIGN.reference,
    match_exposure: MatchExposureOption = _ALIGN.match_exposure,
    align_size: AlignSizeOption = _ALIGN.size,
    global_align: GlobalAlignOption = _ALIGN.global_align,
    fmt: Annotated[str, typer.Option("--format", help="png or tif (lossless; 16-bit stacks stay 16-bit).")] = "png",
    device: DeviceOption = _FUSE.device,
    chunk: ChunkOption = _FUSE.chunk,
    save_transforms: TransformsOption = None,
    overwrite: OverwriteOption = False,
    quiet: QuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Align a stack and write the aligned frames, for fusing elsewhere."""
    from .align import transforms_to_json
    from .color import linear_to_srgb
    from .engine import align_stack
    from .load import FrameStack
    from .options import AlignOptions
    from .write import Outputs, check_distinct, check_output, check_output_file, output_folder

    with _user_errors(), ExitStack() as scope:
        if fmt not in ("png", "tif"):
            raise OptionError("format", fmt, "use png or tif")
        align = AlignOptions(align_model.value, reference, match_exposure, size=align_size, global_align=global_align)
        options = FuseOptions(device=device, chunk=chunk, align=align)
        scope.enter_context(_verbose(verbose, options, quiet))
        stack = FrameStack(inputs)
        targets = [outdir / f"{stem}.{fmt}" for stem in stack.stems]
        if len(set(targets)) < len(targets):
            raise GpufocusError(f"{outdir}: two frames have the same name; give them distinct names")
        if save_transforms is not None:
            check_output_file(save_transforms, overwrite)
        check_distinct([*targets, *([save_transforms] if save_transforms else [])], stack.paths)
        with output_folder(outdir), Outputs() as out, _progress(quiet) as progress:
            for target in targets:
                check_output(target, stack.bits, overwrite)
            aligner, frames = align_stack(stack, options, progress=_stage_bar(progress))
            for index, frame in frames:
                info = stack.infos[index]
                out.image(
                    targets[index], linear_to_srgb(frame) if stack.linear else frame, bits=stack.bits, exif=info.exif,
                    icc=info.icc, overwrite=overwrite, role="aligned frame",
                )
            if save_transforms is not None:
                height, width = stack.size
                report = transforms_to_json(aligner.results, stack.names, height, width, align)
                out.json(save_transforms, report, overwrite)
        if not quiet:
            _say(f"wrote {len(targets)} aligned frames to {outdir} (reference: frame {reference})")


def _watch(root: Path, options: FuseOptions, output, settle: float, marker: str | None, quiet: bool) -> list:
    """``watch_stacks`` until Ctrl-C: the first one lets the stack in hand finish, a
    second one interrupts it."""
    import os
    import signal
    import threading

    from .batch import watch_stacks

    stop = threading.Event()

    def on_interrupt(number, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        # Straight to the file descriptor: the handler may run while a print is half done,
        # and a buffered stream refuses a reentrant write.
        try:
            os.write(sys.stderr.fileno(), b"stopping once the stack in hand is done (Ctrl-C again to interrupt it)\n")
        except (OSError, ValueError, AttributeError):
            pass

    def report(result) -> None:
        if result.status == "failed":
            _say(f"failed: {result.name}: {result.error}")
        elif not quiet:
            _say(f"{result.status}: {result.name} -> {result.output} ({result.frames} frames, {result.seconds:.1f} s)")

    if not quiet:
        what = f"the file {marker}" if marker else f"{settle:g} s without changes"
        _say(f"watching {root}: a folder is fused once complete ({what}); Ctrl-C stops")
    previous = signal.signal(signal.SIGINT, on_interrupt) if threading.current_thread() is threading.main_thread() else None
    try:
        return watch_stacks(root, options, output, settle=settle, marker=marker, stop=stop, on_result=report)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _read_transforms(path: Path, stack) -> list:
    """A ``--save-transforms`` file read back for ``stack``'s frames; a ``GpufocusError``
    naming the file for whatever is wrong with it."""
    from .align import transforms_from_json

    try:
        report = json.loads(path.read_text())
    except OSError as error:
        raise GpufocusError(f"{path}: cannot be read ({error.strerror or error})") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise GpufocusError(f"{path}: not JSON") from None
    height, width = stack.size
    try:
        found = transforms_from_json(report, height, width)
    except ValueError as error:
        raise GpufocusError(f"{path}: {error}") from None
    if len(found) != len(stack):
        raise GpufocusError(f"{path}: transforms of {len(found)} frames, for a stack of {len(stack)}")
    return found


def _print_scores(scores: dict) -> None:
    """The seed program's sharpness table, then the fusion metrics."""
    rows = [
        ("average of source images", f"{scores['avg_gradient_sources']:.2f}"),
        ("final result", f"{scores['avg_gradient_fused']:.2f}"),
        ("result / sources", f"{scores['sharpness_gain']:.3f}"),
    ]
    title = f"{scores['frames']} frames, compared on {scores['width']}x{scores['height']}"
    console = _console(stderr=False)
    console.print(_table(title, ("", "average gradient"), rows, ("average gradient",)))
    extra = [f"Q^AB/F {scores['qabf']:.4f}"]
    if "psnr" in scores:
        extra += [f"PSNR {scores['psnr']:.2f} dB", f"SSIM {scores['ssim']:.4f}"]
    console.print(", ".join(extra), highlight=False)


@app.command("view")
def view_command(
    image: Annotated[Path, typer.Argument(help="The fused image.")],
    depth: Annotated[Path, typer.Argument(help="Its depth map (gpufocus fuse --depth-map).")],
    output: Annotated[Path, typer.Option("-o", "--output", help="The picture: .png or .jpg.")],
    angle: Annotated[float, typer.Option("--angle", min=0, max=80, help="Tilt from straight above, degrees.")] = 50.0,
    relief: Annotated[
        float, typer.Option("--relief", min=0, max=2, help="Height of the depth range, as a fraction of the image height.")
    ] = 0.25,
    far_is_high: Annotated[bool, typer.Option("--far-is-high", help="Raise the far frames instead of the near ones.")] = False,
    overwrite: OverwriteOption = False,
) -> None:
    """Render a shaded 3-D relief of IMAGE over its DEPTH map."""
    from .decode import read_image
    from .relief import render_relief
    from .write import check_distinct, check_output, write_image

    with _user_errors():
        check_output(output, 8, overwrite)
        check_distinct([output], [image, depth])
        pixels, heights = read_image(image), read_image(depth)
        if pixels.shape[:2] != heights.shape[:2]:
            raise GpufocusError(
                f"{depth}: {heights.shape[1]}x{heights.shape[0]} differs from the image's "
                f"{pixels.shape[1]}x{pixels.shape[0]}; give the depth map written with this image"
            )
        picture = render_relief(pixels, heights[..., 0], angle=angle, relief=relief, near_is_high=not far_is_high)
        write_image(output, picture, overwrite=overwrite, role="3-D view")


@app.command("eval")
def eval_command(
    inputs: StackArgument,
    result: Annotated[Path, typer.Option("-r", "--result", help="The fused image to score.")],
    ground_truth: Annotated[
        Optional[Path],
        typer.Option("--gt", help="Ground truth image. Default: ground_truth.png in a stack directory, if there is one."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    transforms: Annotated[
        Optional[Path],
        typer.Option("--transforms", help="The fusion's --save-transforms file: score the frames aligned, as fused."),
    ] = None,
) -> None:
    """Score a fused image: sharpness against its sources, Q^AB/F, and PSNR/SSIM against a ground truth."""
    from .load import FrameStack
    from .metrics import evaluate

    with _user_errors():
        if ground_truth is None and len(inputs) == 1 and (inputs[0] / "ground_truth.png").is_file():
            ground_truth = inputs[0] / "ground_truth.png"
        stack = FrameStack(inputs)
        aligned = None if transforms is None else _read_transforms(transforms, stack)
        scores = evaluate(stack, result, ground_truth, transforms=aligned)
    if as_json:
        # JSON has no infinity: identical images have no finite PSNR.
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in scores.items()}
        typer.echo(json.dumps(clean, indent=1))
    else:
        _print_scores(scores)


@app.command("synth")
def synth_command(
    outdir: Annotated[Path, typer.Argument(help="Folder for the frames, ground_truth.png, depth.png and params.json.")],
    image: Annotated[Optional[Path], typer.Option("--image", help="Scene to use. Default: a procedural scene.")] = None,
    scene_size: Annotated[str, typer.Option("--size", help="WIDTHxHEIGHT of the procedural scene.")] = "640x480",
    frames: Annotated[int, typer.Option("--frames", min=2, help="Number of frames.")] = 8,
    family: Annotated[Family, typer.Option("--family", help="Depth map.")] = Family.objects,
    max_blur: Annotated[float, typer.Option("--max-blur", min=0, help="Blur radius (pixels) across the depth range.")] = 8.0,
    noise: Annotated[float, typer.Option("--noise", min=0, help="Gaussian noise, standard deviation in 0-255 units.")] = 0.0,
    breathing: Annotated[float, typer.Option("--breathing", help="Magnification step per frame (0.002 = 0.2 %).")] = 0.0,
    shift: Annotated[float, typer.Option("--shift", min=0, help="Largest random shift of a frame, pixels.")] = 0.0,
    exposure_jitter: Annotated[
        float, typer.Option("--exposure-jitter", min=0, help="Largest relative gain change.")
    ] = 0.0,
    fmt: Annotated[str, typer.Option("--format", help="png or jpg frames.")] = "png",
    quality: Annotated[int, typer.Option("--quality", min=1, max=100, help="JPEG quality of jpg frames.")] = _OUTPUT.quality,
    seed: Annotated[int, typer.Option("--seed", help="The same seed gives the same stack.")] = 0,
    overwrite: OverwriteOption = False,
) -> None:
    """Generate a focus stack with known ground truth (thin-lens defocus model)."""
    with _user_errors():
        width, height = _size(scene_size)
        import torch

        from .load import read_image
        from .synth import make_stack, write_stack

        scene = None
        if image is not None:
            pixels = read_image(image)
            scene = torch.from_numpy(pixels.astype("float32") / (65535 if pixels.dtype.itemsize == 2 else 255))
            scene = scene.permute(2, 0, 1)
        stack = make_stack(
            height, width, frames, family=family.value, max_blur=max_blur, noise=noise, breathing=breathing,
            shift=shift, exposure_jitter=exposure_jitter, seed=seed, scene=scene,
        )
        paths = write_stack(stack, outdir, fmt=fmt, quality=quality, overwrite=overwrite, keep=[image] if image else [])
        _say(f"wrote {len(paths)} frames, ground_truth.png, depth.png, focus_index.png, params.json to {outdir}")


@app.command("bench")
def bench_command(
    quick: Annotated[bool, typer.Option("--quick", help="A small matrix that finishes in seconds (a smoke test).")] = False,
    devices: Annotated[
        Optional[list[str]], typer.Option("--device", help="Repeatable. Default: cpu, and cuda if available.")
    ] = None,
    sizes: Annotated[Optional[list[str]], typer.Option("--size", help="WIDTHxHEIGHT, repeatable. Default: 2000x1500.")] = None,
    frames: Annotated[Optional[list[int]], typer.Option("--frames", help="Frame count, repeatable. Default: 10 and 30.")] = None,
    dtypes: Annotated[Optional[list[DType]], typer.Option("--dtype", help="Repeatable. Default: float32.")] = None,
    chunks: Annotated[Optional[list[int]], typer.Option("--chunk", help="Repeatable. Default: the engine's choice.")] = None,
    methods: Annotated[Optional[list[Method]], typer.Option("--method", help="Repeatable. Default: max-energy.")] = None,
    kinds: Annotated[Optional[list[BenchKind]], typer.Option("--kind", help="core, e2e; repeatable. Default: both.")] = None,
    aligns: Annotated[
        Optional[list[bool]], typer.Option("--align/--no-align", help="With alignment (default) or without.")
    ] = None,
    repeat: Annotated[int, typer.Option("--repeat", min=1, help="Timed runs per case (the median is reported).")] = 3,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs first.")] = 1,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the full report as JSON.")] = None,
    markdown: Annotated[Optional[Path], typer.Option("--markdown", help="Write the tables as markdown.")] = None,
    chart: Annotated[Path, typer.Option("--chart", help="PNG chart of throughput.")] = Path("gpufocus-bench.png"),
    cache: Annotated[
        Optional[Path], typer.Option("--cache", help="Folder for the e2e JPEG stacks. Default: in the temporary folder.")
    ] = None,
    traffic: Annotated[
        bool,
        typer.Option(
            "--traffic",
            help="Instead of timing: count the operations and the bytes the CUDA path moves per stage, without a GPU "
            "(default 6000x4000, 32 frames, chunks of 16; Triton kernels and their torch twins).",
        ),
    ] = False,
) -> None:
    """Time the fusion on CPU and CUDA: per stage, median of repeats, peak memory."""
    import numpy as np
    import torch

    from . import benchmark
    from .write import Outputs, check_distinct, check_output, check_output_file

    if traffic:
        with _user_errors():
            if json_out is not None:
                check_output_file(json_out, overwrite=True)
            width, height = _size((sizes or ["6000x4000"])[0])
            _traffic_report(width, height, (frames or [32])[0], (chunks or [16])[0], json_out)
        return
    with _user_errors():
        check_output(chart, overwrite=True)
        for path in (json_out, markdown):
            if path is not None:
                check_output_file(path, overwrite=True)
        check_distinct([p for p in (chart, json_out, markdown) if p is not None])
        if not devices:
            devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        if quick:
            sizes, frames = sizes or ["320x240"], frames or [4, 8]
            repeat = min(repeat, 2)
        cases = [
            benchmark.Case(kind.value, device, *_size(size), count, dtype.value, chunk, method.value, align)
            for align in (aligns or [True])
            for kind in (kinds or list(BenchKind))
            for device in devices
            for size in (sizes or ["2000x1500"])
            for count in (frames or [10, 30])
            for dtype in (dtypes or [DType.float32])
            for chunk in (chunks or [None])
            for method in (methods or [Method.max_energy])
        ]
        _say(f"{len(cases)} cases, each in a process of its own; machine: {benchmark.machine_description()}")
        report = benchmark.run_matrix(
            cases,
            repeat=repeat,
            warmup=warmup,
            cache=cache or benchmark.DEFAULT_CACHE,
            on_result=lambda r: _say(
                f"  {r['kind']} {r['device']} {r['width']}x{r['height']} x{r['frames']}: "
                + (f"error: {r['error']}" if "error" in r else f"{r['seconds']:.3f} s")
            ),
        )
    header, rows = benchmark.table_rows(report, compact=True)
    # Logs and pipes get the whole table rather than columns cut to 80 characters.
    stdout = _console(stderr=False)
    stdout = _console(stderr=False, width=None if stdout.is_terminal else 240)
    stdout.print(_table(report["machine"], header, rows, [h for h in header if h not in ("kind", "device", "dtype", "size")]))
    for pair in report["cuda_vs_cpu"]:
        stdout.print(
            f"CUDA over CPU, {pair['kind']} {pair['width']}x{pair['height']} x{pair['frames']} {pair['dtype']}: "
            f"{pair['speedup']:.1f}x",
            highlight=False,
        )
    with _user_errors(), Outputs() as out:
        out.image(chart, np.asarray(benchmark.draw_chart(report)), overwrite=True)
        if json_out:
            out.json(json_out, report, overwrite=True)
        if markdown:
            out.write(markdown, benchmark.to_markdown(report).encode())
    _say(f"chart: {chart}" + (f", json: {json_out}" if json_out else "") + (f", markdown: {markdown}" if markdown else ""))
    if any("error" in r for r in report["results"]):
        raise typer.Exit(1)


def _traffic_report(width: int, height: int, frames: int, chunk: int, json_out: Path | None) -> None:
    """``gpufocus bench --traffic``: one table, and the rows as JSON."""
    from .options import AlignOptions, FuseOptions
    from .traffic import H200_BANDWIDTH, count_traffic, report
    from .write import Outputs

    rows = []
    for triton in (True, False):
        for breathing in (False, True):
            counted = count_traffic(height, width, frames, chunk, FuseOptions(align=AlignOptions()), triton=triton,
                                    breathing=breathing)
            for row in report(counted, height, width, frames):
                if breathing and not row["stage"].startswith("align"):
                    continue  # the other stages do not depend on the motion
                row["path"] = "triton" if triton else "torch twins"
                row["frames"] = "breathing" if breathing else "still"
                rows.append(row)
    stdout = _console(stderr=False)

    def line(text: str) -> None:
        stdout.print(text, markup=False, highlight=False, soft_wrap=True)

    line(f"Traffic of the CUDA path, counted on the meta device: {width}x{height} x{frames} uint8 RGB, float32, "
         f"defaults, chunks of {chunk}; time at {H200_BANDWIDTH / 1e12:.2f} TB/s (the H200's copy bandwidth)")
    line("| stage | path | frames | ops/frame | launches/frame | bytes/pixel-frame | predicted ms/frame "
         "| largest (B/pixel-frame) |")
    line("|---|---|---|---|---|---|---|---|")
    for row in rows:
        largest = ", ".join(f"{name} {value:.1f}" for name, value in row["largest"][:4])
        line(f"| {row['stage']} | {row['path']} | {row['frames']} | {row['operations_per_frame']:.1f} | "
             f"{row['launches_per_frame']:.2f} | {row['bytes_per_pixel_frame']:.1f} | "
             f"{row['predicted_ms_per_frame']:.2f} | {largest} |")
    line("floor: 3 bytes a pixel-frame (each 8-bit frame read once); \"align, in its graph\": the operations a CUDA "
         "graph replays, one launch a chunk")
    if json_out is not None:
        with Outputs() as out:
            out.json(json_out, {"width": width, "height": height, "frames": frames, "chunk": chunk,
                                "bandwidth": H200_BANDWIDTH, "rows": rows}, overwrite=True)


def _size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` as ``(width, height)``."""
    try:
        width, height = map(int, text.lower().split("x"))
    except ValueError:
        raise GpufocusError(f"--size {text}: use WIDTHxHEIGHT, e.g. 640x480") from None
    if width < 8 or height < 8:
        raise GpufocusError(f"--size {text}: at least 8x8")
    return width, height


@app.command("demo")
def demo_command(
    outdir: Annotated[Path, typer.Argument(help="Folder for the demo's files.")] = Path("gpufocus-demo"),
    device: DeviceOption = _FUSE.device,
) -> None:
    """Make a synthetic stack, fuse it, and write a side-by-side comparison."""
    with _user_errors():
        from .demo import run_demo

        report = run_demo(outdir, device=device)
        _say(
            f"fused {report.frames} synthetic frames ({report.width}x{report.height}) on {report.device}\n"
            f"PSNR against the ground truth: fused {report.psnr_fused:.1f} dB, "
            f"best single frame {report.psnr_best_frame:.1f} dB\n"
            f"frames in {report.frames_dir}, result {report.fused}, comparison {report.comparison}"
        )


@app.command("info")
def info_command() -> None:
    """Versions and devices."""
    import os
    import platform
    import sys

    import imagecodecs
    import kornia
    import tifffile
    import numpy
    import PIL
    import torch

    lines = [
        f"gpufocus {__version__}",
        f"python {platform.python_version()} ({sys.executable})",
        f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        f"kornia {kornia.__version__}, numpy {numpy.__version__}, pillow {PIL.__version__}, "
        f"tifffile {tifffile.__version__}, imagecodecs {imagecodecs.__version__}, rawpy {_version_of('rawpy')}, "
        f"typer {typer.__version__}",
        f"cpu: {platform.machine()}, {os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads",
        _triton_line(),
    ]
    if torch.cuda.is_available():
        from .encode import jpeg_encoder
        from .load import jpeg_decoder

        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            decoder, encoder = jpeg_decoder(torch.device("cuda", index)), jpeg_encoder(torch.device("cuda", index))
            lines.append(f"cuda:{index}: {props.name}, {props.total_memory / 2**30:.1f} GiB; JPEG decoded there by "
                         + (decoder.name if decoder else "the CPU (no nvImageCodec or torchvision)")
                         + ", encoded by " + (encoder.name if encoder else "the CPU (no nvImageCodec)"))
    else:
        lines.append("cuda: not available")
    typer.echo("\n".join(lines))


def _triton_line() -> str:
    """Triton's version and where it keeps the kernels it compiled (without importing it)."""
    from .kernels.dispatch import triton_cache_dir

    triton = _version_of("triton")
    if triton == "not installed":
        return "triton not installed: on CUDA, the kernels' torch twins run"
    off = "; off (GPUFOCUS_TRITON=0)" if os.environ.get("GPUFOCUS_TRITON") == "0" else ""
    return f"triton {triton}: the GPU kernels, compiled once per card into {triton_cache_dir()}{off}"


def _version_of(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _click_errors() -> tuple[tuple[type, ...], tuple[type, ...]]:
    """Click's abort and usage-error classes as this Typer raises them: Typer 0.29 and
    later carry a copy of Click whose exceptions derive from ``typer.TyperException``
    (and ``click`` need not be installed); earlier ones raise Click's own, and depend on
    Click."""
    aborts: list[type] = [typer.Abort]
    usage: list[type] = [typer.TyperException] if hasattr(typer, "TyperException") else []
    try:
        import click
    except ImportError:
        pass
    else:
        aborts.append(click.exceptions.Abort)
        usage.append(click.ClickException)
    return tuple(aborts), tuple(usage)


def _usage_line(error, args: Sequence[str]) -> str:
    """One line for a usage error: ``error: --option VALUE: what is wrong``."""
    kind = type(error).__name__
    message = " ".join(str(getattr(error, "message", error)).split())
    message = message.removeprefix("Value error, ").rstrip(".")
    message = message[:1].lower() + message[1:]
    if kind == "NoSuchOption":
        possible = getattr(error, "possibilities", None)
        hint = f" (did you mean {', '.join(sorted(possible))}?)" if possible else ""
        return f"error: {error.option_name}: no such option{hint}"
    param = getattr(error, "param", None)
    if kind == "MissingParameter" and param is not None:
        what = "argument" if getattr(param, "param_type_name", "") == "argument" else "option"
        name = max(param.opts, key=len) if what == "option" else str(param.name).upper()
        return f"error: missing {what} {name}"
    if param is not None and getattr(param, "opts", None):
        flag = max(param.opts, key=len)
        return f"error: {flag} {_given(args, param.opts)}: {message}"
    return f"error: {message}"


def _given(args: Sequence[str], opts: Sequence[str]) -> str:
    """The value given for an option (its last use), as typed."""
    value = "?"
    for i, arg in enumerate(args):
        for opt in opts:
            if arg == opt and i + 1 < len(args):
                value = args[i + 1]
            elif arg.startswith(opt + "="):
                value = arg[len(opt) + 1 :]
    return value


def run(args: Sequence[str]) -> int:
    """Run the command line on ``args`` in this process; return the exit code.

    A usage error is one line, ``error: --option VALUE: what is wrong``, and exit code 2;
    Ctrl-C gives 130, for the caller to say so.
    """
    aborts, usage_errors = _click_errors()
    command = typer.main.get_command(app)
    try:
        code = command.main(list(args), prog_name="gpufocus", standalone_mode=False)
    except aborts:  # end of input at a prompt, or Ctrl-C while Click parsed
        code = 130
    except usage_errors as error:
        if not hasattr(error, "exit_code"):
            raise
        _say(_usage_line(error, args))
        return error.exit_code
    # Typer turns a Ctrl-C in a command into exit code 130, silently: the caller says it.
    return code if isinstance(code, int) else 0
