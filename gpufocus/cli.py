"""gpufocus command line: ``gpufocus fuse``, ``batch``, ``align``, ``eval``, ``synth``, ``bench``, ``demo``, ``info``.

A thin layer over the ``gpufocus`` library: it parses options, shows progress on
stderr and turns ``GpufocusError`` into a one-line message and exit code 1. Every
output path is checked (writable, not an input, not another output) before any
work starts. The command starts at ``gpufocus.__main__.main``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import signal
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path

import click
import numpy as np
import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import __version__, benchmark, metrics
from .align import MODELS as ALIGN_MODELS
from .align import AlignOptions, StackAligner, transforms_to_json
from .batch import FuseSettings, StackResult, find_stacks, run_batch, summarize
from .device import DTYPES, parse_size
from .engine import StackFuser, align_stack, fuse
from .errors import GpufocusError, GpufocusWarning
from .load import FrameStack, read_image
from .rules import METHODS
from .synth import FAMILIES, make_stack, write_stack
from .write import Outputs, check_distinct, check_output, check_output_file, output_folder, write_json

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Focus stacking by Laplacian-pyramid fusion, on CUDA or the CPU.",
)
_stderr = Console(stderr=True)
_stdout = Console()


@app.callback()
def _start() -> None:
    """Focus stacking by Laplacian-pyramid fusion, on CUDA or the CPU."""
    # Libraries log what they find in bad files (Pillow: "More samples per pixel than
    # can be decoded"); with no handler, Python prints such records on stderr. The
    # verdict on a file is the command's one line: give the root logger a handler.
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())


def _say(text: str) -> None:
    """A message on stderr, as it is: no markup, no colours, no wrapping."""
    _stderr.print(text, markup=False, highlight=False, soft_wrap=True)


# Choices for Typer, made from the library's own lists.
Method = Enum("Method", {name.replace("-", "_"): name for name in METHODS}, type=str)
DType = Enum("DType", {name: name for name in DTYPES}, type=str)
DepthFamily = Enum("DepthFamily", {name: name for name in FAMILIES}, type=str)
BenchKind = Enum("BenchKind", {"core": "core", "e2e": "e2e"}, type=str)
AlignModel = Enum("AlignModel", {name: name for name in ALIGN_MODELS}, type=str)


# Set by ``run``: this process is the command, so a Ctrl-C may change its signal handling.
_standalone = False


@contextmanager
def _user_errors() -> Iterator[None]:
    """Bad input ends the command with one line on stderr and exit code 1; our warnings
    (alignment fall-backs, ...) are one line each, other libraries' are not shown."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", GpufocusWarning)
            warnings.showwarning = _show_warning
            yield
    except GpufocusError as error:
        _say(f"error: {error}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        if _standalone:
            from .__main__ import interrupted

            raise typer.Exit(interrupted()) from None
        _say("interrupted")
        raise typer.Exit(130) from None
    except MemoryError:
        _say("error: out of memory; try a smaller --chunk or --memory-budget")
        raise typer.Exit(1) from None


def _show_warning(message, category, *args, **kwargs) -> None:
    # Decoders warn about the files they read (Pillow: "Truncated File Read", EXIF
    # oddities); the verdict on a file is ours to give, in one line.
    if issubclass(category, GpufocusWarning):
        _say(f"warning: {message}")


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_stderr,
        disable=quiet or not _stderr.is_terminal,  # no bars in logs and pipes
        transient=True,
    )


def fuse_files(
    inputs: list[Path],
    output: Path,
    *,
    method: str,
    levels: int | None,
    kernel_size: int | None,
    per_channel: bool,
    device: str,
    dtype: str,
    chunk: int | None,
    bits: int | None,
    quality: int,
    overwrite: bool,
    quiet: bool,
    evaluate: bool = False,
    align: AlignOptions | None = None,
    save_transforms: Path | None = None,
    depth_map: Path | None = None,
    consistency: int = 0,
    tile: int | None = None,
    memory_budget: str | None = None,
) -> None:
    """Fuse a stack of files into ``output``, checking everything before the work starts."""
    budget = None if memory_budget is None else parse_size(memory_budget)
    if save_transforms is not None and align is None:
        raise GpufocusError(f"{save_transforms}: --save-transforms needs alignment (drop --no-align)")
    fmt = check_output(output, bits or 8, overwrite)
    if depth_map is not None:
        depth_bits = 8 if check_output(depth_map, 8, overwrite) == "JPEG" else 16
    if save_transforms is not None:
        check_output_file(save_transforms, overwrite)
    stack = FrameStack(inputs)
    check_distinct([p for p in (output, depth_map, save_transforms) if p is not None], stack.paths)
    if bits is None:  # the input's depth, where the output format can hold it
        bits = stack.bits if fmt != "JPEG" else 8
    started = time.perf_counter()
    with _progress(quiet) as progress:
        task = progress.add_task(f"fusing {len(stack)} frames", total=len(stack))
        fuser = StackFuser(
            method, levels=levels, kernel_size=kernel_size, per_channel=per_channel, device=device, dtype=dtype,
            align=align, names=[p.name for p in stack.paths], depth_map=depth_map is not None,
            consistency=consistency, tile=tile, memory_budget=budget,
        )
        image = fuse(
            stack,
            chunk=chunk,
            fuser=fuser,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    reference = stack.infos[align.reference if align else 0]
    with Outputs() as out:  # all or none
        out.image(output, image, bits=bits, quality=quality, exif=reference.exif, icc=reference.icc, overwrite=overwrite)
        if depth_map is not None:
            scale = (fuser.depth_map() / max(len(stack) - 1, 1))[None]
            out.image(depth_map, scale, bits=depth_bits, overwrite=overwrite)
        if save_transforms is not None:
            out.json(save_transforms, _transforms_report(fuser.transforms, stack, align), overwrite)
    if not quiet:
        height, width = stack.size
        _say(
            f"wrote {output} ({width}x{height}, {bits}-bit) from {len(stack)} frames, "
            f"{method}, {time.perf_counter() - started:.2f} s"
        )
    if evaluate:
        _print_scores(metrics.evaluate(stack, output))


@app.command("fuse")
def fuse_command(
    inputs: list[Path] = typer.Argument(..., help="A directory of frames, or the frame files in order."),
    output: Path = typer.Option(..., "-o", "--output", help="Output image: .jpg, .png or .tif."),
    method: Method = typer.Option(Method.max_energy, "-m", "--method", help="Selection rule."),
    naive: bool = typer.Option(False, "--naive", help="Same as --method max-log (the seed program's spelling)."),
    levels: int | None = typer.Option(
        None, "--levels", "-d", "--depth", min=1, help="Pyramid detail levels. Default: from the frame size."
    ),
    kernel_size: int | None = typer.Option(
        None, "-k", "--kernel-size", help="Window of the local measure, odd. Default: 9 max-energy, 5 wang-chang, 3 max-log."
    ),
    per_channel: bool = typer.Option(False, "--per-channel", help="Decide per colour channel (the seed program's way)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    dtype: DType = typer.Option(DType.float32, "--dtype", help="Arithmetic precision."),
    chunk: int | None = typer.Option(None, "--chunk", min=1, help="Frames per step. Default: from free memory."),
    bits: int | None = typer.Option(None, "--bits", help="8 or 16 bits per channel. Default: the input's."),
    quality: int = typer.Option(95, "--quality", min=1, max=100, help="JPEG quality."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar or summary."),
    evaluate: bool = typer.Option(False, "--eval", help="Then print the sharpness table of the result (as gpufocus eval)."),
    align: bool = typer.Option(True, "--align/--no-align", help="Align the frames first (focus breathing, shift, rotation)."),
    align_model: AlignModel = typer.Option(AlignModel.similarity, "--align-model", help="Motion model."),
    reference: int = typer.Option(0, "--reference", min=0, help="Index of the frame whose geometry the result takes."),
    match_exposure: bool = typer.Option(
        True, "--match-exposure/--no-match-exposure", help="Match each frame's brightness to the reference."
    ),
    crop: bool = typer.Option(False, "--crop", help="Crop to the region every aligned frame covers."),
    save_transforms: Path | None = typer.Option(None, "--save-transforms", help="Write the per-frame transforms (JSON)."),
    depth_map: Path | None = typer.Option(
        None, "--depth-map", help="Also write which frame is in focus where: grey, 0 = first frame, white = last."
    ),
    consistency: int = typer.Option(
        0, "--consistency", min=0, max=2, help="Halo control (max-energy): 0 off, 1 or 2; reads the stack twice."
    ),
    tile: int | None = typer.Option(
        None, "--tile", min=0, help="Fuse in tiles of this size (same result). Default: only when memory needs it; 0: never."
    ),
    memory_budget: str | None = typer.Option(
        None, "--memory-budget", help="Memory the fusion may use, e.g. 4G: sizes chunks and tiles. Default: 1/4 of free."
    ),
) -> None:
    """Fuse a focus stack into one image that is sharp throughout."""
    with _user_errors():
        fuse_files(
            inputs,
            output,
            method=Method.max_log.value if naive else method.value,
            levels=levels,
            kernel_size=kernel_size,
            per_channel=per_channel,
            device=device,
            dtype=dtype.value,
            chunk=chunk,
            bits=bits,
            quality=quality,
            overwrite=overwrite,
            quiet=quiet,
            evaluate=evaluate,
            align=_align_options(align, align_model, reference, match_exposure, crop),
            save_transforms=save_transforms,
            depth_map=depth_map,
            consistency=consistency,
            tile=tile,
            memory_budget=memory_budget,
        )


def _transforms_report(results, stack: FrameStack, align: AlignOptions) -> dict:
    height, width = stack.size
    return transforms_to_json(results, [p.name for p in stack.paths], height, width, align)


def _align_options(align: bool, model: AlignModel, reference: int, match_exposure: bool, crop: bool):
    return AlignOptions(model.value, reference, match_exposure, crop) if align else None


def _print_scores(scores: dict) -> None:
    """The seed program's sharpness table, then the fusion metrics."""
    table = Table(title=f"{scores['frames']} frames, compared on {scores['width']}x{scores['height']}")
    table.add_column("")
    table.add_column("average gradient", justify="right")
    table.add_row("average of source images", f"{scores['avg_gradient_sources']:.2f}")
    table.add_row("final result", f"{scores['avg_gradient_fused']:.2f}")
    table.add_row("result / sources", f"{scores['sharpness_gain']:.3f}")
    _stdout.print(table)
    extra = [f"Q^AB/F {scores['qabf']:.4f}"]
    if "psnr" in scores:
        extra += [f"PSNR {scores['psnr']:.2f} dB", f"SSIM {scores['ssim']:.4f}"]
    _stdout.print(", ".join(extra), highlight=False)


@app.command("eval")
def eval_command(
    inputs: list[Path] = typer.Argument(..., help="The stack: a directory of frames, or the frame files."),
    result: Path = typer.Option(..., "-r", "--result", help="The fused image to score."),
    ground_truth: Path | None = typer.Option(
        None, "--gt", help="Ground truth image. Default: ground_truth.png in a stack directory, if there is one."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
) -> None:
    """Score a fused image: sharpness against its sources, Q^AB/F, and PSNR/SSIM against a ground truth."""
    with _user_errors():
        if ground_truth is None and len(inputs) == 1 and (inputs[0] / "ground_truth.png").is_file():
            ground_truth = inputs[0] / "ground_truth.png"
        scores = metrics.evaluate(inputs, result, ground_truth)
    if as_json:
        # JSON has no infinity: identical images have no finite PSNR.
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in scores.items()}
        typer.echo(json.dumps(clean, indent=1))
    else:
        _print_scores(scores)


@app.command("synth")
def synth_command(
    outdir: Path = typer.Argument(..., help="Folder for the frames, ground_truth.png, depth.png and params.json."),
    image: Path | None = typer.Option(None, "--image", help="Scene to use. Default: a procedural scene."),
    size: str = typer.Option("640x480", "--size", help="WIDTHxHEIGHT of the procedural scene."),
    frames: int = typer.Option(8, "--frames", min=2, help="Number of frames."),
    family: DepthFamily = typer.Option(DepthFamily.objects, "--family", help="Depth map."),
    max_blur: float = typer.Option(8.0, "--max-blur", min=0, help="Blur radius (pixels) across the depth range."),
    noise: float = typer.Option(0.0, "--noise", min=0, help="Gaussian noise, standard deviation in 0-255 units."),
    breathing: float = typer.Option(0.0, "--breathing", help="Magnification step per frame (0.002 = 0.2 %)."),
    shift: float = typer.Option(0.0, "--shift", min=0, help="Largest random shift of a frame, pixels."),
    exposure_jitter: float = typer.Option(0.0, "--exposure-jitter", min=0, help="Largest relative gain change."),
    fmt: str = typer.Option("png", "--format", help="png or jpg frames."),
    quality: int = typer.Option(95, "--quality", min=1, max=100, help="JPEG quality of jpg frames."),
    seed: int = typer.Option(0, "--seed", help="The same seed gives the same stack."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files."),
) -> None:
    """Generate a focus stack with known ground truth (thin-lens defocus model)."""
    with _user_errors():
        scene = None
        if image is not None:
            pixels = read_image(image)
            scene = torch.from_numpy(pixels.astype("float32") / (65535 if pixels.dtype.itemsize == 2 else 255))
            scene = scene.permute(2, 0, 1)
        width, height = _size(size)
        stack = make_stack(
            height, width, frames, family=family.value, max_blur=max_blur, noise=noise, breathing=breathing,
            shift=shift, exposure_jitter=exposure_jitter, seed=seed, scene=scene,
        )
        paths = write_stack(stack, outdir, fmt=fmt, quality=quality, overwrite=overwrite, keep=[image] if image else [])
        _say(f"wrote {len(paths)} frames, ground_truth.png, depth.png, focus_index.png, params.json to {outdir}")


@app.command("batch")
def batch_command(
    root: Path = typer.Argument(..., help="A folder whose sub-folders are stacks."),
    outdir: Path = typer.Option(..., "-o", "--output", help="Folder for the results, named after the stacks."),
    fmt: str = typer.Option("jpg", "--format", help="jpg, png or tif."),
    method: Method = typer.Option(Method.max_energy, "-m", "--method", help="Selection rule."),
    levels: int | None = typer.Option(None, "--levels", "-d", "--depth", min=1, help="Pyramid detail levels."),
    kernel_size: int | None = typer.Option(None, "-k", "--kernel-size", help="Window of the local measure, odd."),
    align: bool = typer.Option(True, "--align/--no-align", help="Align the frames first."),
    align_model: AlignModel = typer.Option(AlignModel.similarity, "--align-model", help="Motion model."),
    consistency: int = typer.Option(0, "--consistency", min=0, max=2, help="Halo control (max-energy)."),
    dtype: DType = typer.Option(DType.float32, "--dtype", help="Arithmetic precision."),
    chunk: int | None = typer.Option(None, "--chunk", min=1, help="Frames per step. Default: from free memory."),
    tile: int | None = typer.Option(None, "--tile", min=0, help="Tile size; 0: never. Default: when memory needs it."),
    bits: int | None = typer.Option(None, "--bits", help="8 or 16. Default: each stack's (8 for jpg)."),
    quality: int = typer.Option(95, "--quality", min=1, max=100, help="JPEG quality."),
    devices: str = typer.Option("auto", "--devices", help="Comma-separated, e.g. cuda:0,cuda:1: a worker per device."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="Dask scheduler address: run the stacks there."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Fuse stacks whose output exists too."),
    report: Path | None = typer.Option(None, "--report", help="Write every stack's result as JSON."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar or table."),
) -> None:
    """Fuse every stack (sub-folder) of ROOT; skip the ones done; report the ones that fail."""
    with _user_errors():
        folders = find_stacks(root)
        settings = FuseSettings(
            method=method.value, levels=levels, kernel_size=kernel_size, dtype=dtype.value, chunk=chunk,
            align=AlignOptions(align_model.value) if align else None, consistency=consistency, tile=tile,
            bits=bits, quality=quality, format=fmt,
        )
        if report is not None:
            check_output_file(report, overwrite=True)
        started = time.perf_counter()
        with _progress(quiet) as progress:
            task = progress.add_task(f"{len(folders)} stacks", total=len(folders))

            def done(result: StackResult) -> None:
                progress.advance(task)
                if result.status == "failed":
                    _say(f"failed: {result.name}: {result.error}")

            results = run_batch(
                folders, outdir, settings, devices=[d.strip() for d in devices.split(",") if d.strip()],
                scheduler=scheduler, overwrite=overwrite, on_result=done,
            )
        summary = summarize(results, time.perf_counter() - started)
        if report is not None:
            write_json(report, summary, overwrite=True)
    if not quiet:
        table = Table(title=f"{root} -> {outdir}")
        for name in ("stack", "status", "frames", "seconds", "note"):
            table.add_column(name, justify="right" if name in ("frames", "seconds") else "left")
        for r in results:
            note = r.error or ("; ".join(r.warnings) if r.warnings else "")
            table.add_row(r.name, r.status, str(r.frames), f"{r.seconds:.2f}", note)
        Console(stderr=True, width=None if _stderr.is_terminal else 200).print(table)
        _say(
            f"{summary['written']} written, {summary['skipped']} skipped, {summary['failed']} failed "
            f"in {summary['seconds']:.1f} s"
        )
    if summary["failed"]:
        raise typer.Exit(1)


@app.command("align")
def align_command(
    inputs: list[Path] = typer.Argument(..., help="A directory of frames, or the frame files in order."),
    outdir: Path = typer.Option(..., "-o", "--output", help="Folder for the aligned frames."),
    align_model: AlignModel = typer.Option(AlignModel.similarity, "--align-model", help="Motion model."),
    reference: int = typer.Option(0, "--reference", min=0, help="Index of the frame the others are mapped onto."),
    match_exposure: bool = typer.Option(
        True, "--match-exposure/--no-match-exposure", help="Match each frame's brightness to the reference."
    ),
    fmt: str = typer.Option("png", "--format", help="png or tif (lossless; 16-bit stacks stay 16-bit)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    chunk: int | None = typer.Option(None, "--chunk", min=1, help="Frames per step. Default: from free memory."),
    save_transforms: Path | None = typer.Option(None, "--save-transforms", help="Write the per-frame transforms (JSON)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing files."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bar or summary."),
) -> None:
    """Align a stack and write the aligned frames, for fusing elsewhere."""
    with _user_errors():
        if fmt not in ("png", "tif"):
            raise GpufocusError(f"--format {fmt}: use png or tif")
        stack = FrameStack(inputs)
        targets = [outdir / f"{path.stem}.{fmt}" for path in stack.paths]
        if len(set(targets)) < len(targets):
            raise GpufocusError(f"{outdir}: two frames have the same name; give them distinct names")
        if save_transforms is not None:
            check_output_file(save_transforms, overwrite)
        check_distinct([*targets, *([save_transforms] if save_transforms else [])], stack.paths)
        options = AlignOptions(align_model.value, reference, match_exposure)
        aligner = StackAligner(options.model, options.reference, options.match_exposure)
        with output_folder(outdir), Outputs() as out, _progress(quiet) as progress:
            for target in targets:
                check_output(target, stack.bits, overwrite)
            task = progress.add_task(f"aligning {len(stack)} frames", total=len(stack))
            frames = align_stack(
                stack, aligner, device=device, chunk=chunk,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
            for index, frame in frames:
                info = stack.infos[index]
                out.image(targets[index], frame, bits=stack.bits, exif=info.exif, icc=info.icc, overwrite=overwrite)
            if save_transforms is not None:
                out.json(save_transforms, _transforms_report(aligner.results, stack, options), overwrite)
        if not quiet:
            _say(f"wrote {len(targets)} aligned frames to {outdir} (reference: frame {reference})")


@app.command("bench")
def bench_command(
    quick: bool = typer.Option(False, "--quick", help="A small matrix that finishes in seconds (a smoke test)."),
    devices: list[str] | None = typer.Option(None, "--device", help="Repeatable. Default: cpu, and cuda if available."),
    sizes: list[str] | None = typer.Option(None, "--size", help="WIDTHxHEIGHT, repeatable. Default: 2000x1500."),
    frames: list[int] | None = typer.Option(None, "--frames", help="Frame count, repeatable. Default: 10 and 30."),
    dtypes: list[DType] | None = typer.Option(None, "--dtype", help="Repeatable. Default: float32."),
    chunks: list[int] | None = typer.Option(None, "--chunk", help="Repeatable. Default: the engine's choice."),
    methods: list[Method] | None = typer.Option(None, "--method", help="Repeatable. Default: max-energy."),
    kinds: list[BenchKind] | None = typer.Option(None, "--kind", help="core, e2e; repeatable. Default: both."),
    aligns: list[bool] | None = typer.Option(None, "--align/--no-align", help="With alignment (default) or without."),
    repeat: int = typer.Option(3, "--repeat", min=1, help="Timed runs per case (the median is reported)."),
    warmup: int = typer.Option(1, "--warmup", min=0, help="Untimed runs first."),
    json_out: Path | None = typer.Option(None, "--json", help="Write the full report as JSON."),
    markdown: Path | None = typer.Option(None, "--markdown", help="Write the tables as markdown."),
    chart: Path = typer.Option(Path("gpufocus-bench.png"), "--chart", help="PNG chart of throughput."),
    cache: Path = typer.Option(benchmark.DEFAULT_CACHE, "--cache", help="Folder for the e2e JPEG stacks."),
) -> None:
    """Time the fusion on CPU and CUDA: per stage, median of repeats, peak memory."""
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
            cache=cache,
            on_result=lambda r: _say(
                f"  {r['kind']} {r['device']} {r['width']}x{r['height']} x{r['frames']}: "
                + (f"error: {r['error']}" if "error" in r else f"{r['seconds']:.3f} s")
            ),
        )
    header, rows = benchmark.table_rows(report, compact=True)
    table = Table(title=report["machine"], header_style="bold", pad_edge=False)
    for name in header:
        table.add_column(name, justify="left" if name in ("kind", "device", "dtype", "size") else "right")
    for row in rows:
        table.add_row(*row)
    # Logs and pipes get the whole table rather than columns cut to 80 characters.
    Console(width=None if _stdout.is_terminal else 240).print(table)
    for pair in report["cuda_vs_cpu"]:
        _stdout.print(
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
    outdir: Path = typer.Argument(Path("gpufocus-demo"), help="Folder for the demo's files."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Make a synthetic stack, fuse it, and write a side-by-side comparison."""
    from gpufocus.demo import run_demo

    with _user_errors():
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
    import cv2
    import kornia
    import numpy
    import PIL

    lines = [
        f"gpufocus {__version__}",
        f"python {platform.python_version()} ({sys.executable})",
        f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        f"kornia {kornia.__version__}, numpy {numpy.__version__}, pillow {PIL.__version__}, "
        f"opencv {cv2.__version__}, typer {typer.__version__}",
        f"cpu: {platform.machine()}, {os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads",
    ]
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            lines.append(f"cuda:{index}: {props.name}, {props.total_memory / 2**30:.1f} GiB")
    else:
        lines.append("cuda: not available")
    typer.echo("\n".join(lines))


def run(args: Sequence[str]) -> int:
    """Run the command line on ``args`` in this process; return the exit code.

    Usage errors print Click's message; Ctrl-C prints ``interrupted`` (130).
    """
    global _standalone
    _standalone = True
    command = typer.main.get_command(app)
    try:
        code = command.main(list(args), prog_name="gpufocus", standalone_mode=False)
    except click.exceptions.Abort:  # Ctrl-C while Click parsed, or end of input at a prompt
        from .__main__ import interrupted

        return interrupted()
    except click.ClickException as error:
        error.show()
        return error.exit_code
    return code if isinstance(code, int) else 0
