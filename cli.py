"""gpufocus command line: ``gpufocus fuse``, ``gpufocus demo``, ``gpufocus info``.

A thin layer over the ``gpufocus`` library: it parses options, shows progress on
stderr and turns ``GpufocusError`` into a one-line message and exit code 1.
Run it as ``gpufocus ...`` once installed, or ``python cli.py ...`` in a checkout.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import gpufocus
from gpufocus import METHODS, FrameStack, GpufocusError, fuse, write_image
from gpufocus.device import DTYPES
from gpufocus.write import check_output

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Focus stacking by Laplacian-pyramid fusion, on CUDA or the CPU.",
)
_stderr = Console(stderr=True)


def _say(text: str) -> None:
    """A message on stderr, as it is: no markup, no colours, no wrapping."""
    _stderr.print(text, markup=False, highlight=False, soft_wrap=True)


# Choices for Typer, made from the library's own lists.
Method = Enum("Method", {name.replace("-", "_"): name for name in METHODS}, type=str)
DType = Enum("DType", {name: name for name in DTYPES}, type=str)


@contextmanager
def _user_errors() -> Iterator[None]:
    """Bad input ends the command with one line on stderr and exit code 1."""
    try:
        yield
    except GpufocusError as error:
        _say(f"error: {error}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        _say("interrupted")
        raise typer.Exit(130) from None
    except MemoryError:
        _say("error: out of memory; try a smaller --chunk")
        raise typer.Exit(1) from None


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
) -> None:
    """Fuse a stack of files into ``output``, checking everything before the work starts."""
    fmt = check_output(output, bits or 8, overwrite)
    stack = FrameStack(inputs)
    if bits is None:  # the input's depth, where the output format can hold it
        bits = stack.bits if fmt != "JPEG" else 8
    started = time.perf_counter()
    with _progress(quiet) as progress:
        task = progress.add_task(f"fusing {len(stack)} frames", total=len(stack))
        image = fuse(
            stack,
            method=method,
            levels=levels,
            kernel_size=kernel_size,
            per_channel=per_channel,
            device=device,
            dtype=dtype,
            chunk=chunk,
            progress=lambda done, total: progress.update(task, completed=done),
        )
    reference = stack.infos[0]
    write_image(
        output, image, bits=bits, quality=quality, exif=reference.exif, icc=reference.icc, overwrite=overwrite
    )
    if not quiet:
        height, width = stack.size
        _say(
            f"wrote {output} ({width}x{height}, {bits}-bit) from {len(stack)} frames, "
            f"{method}, {time.perf_counter() - started:.2f} s"
        )


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
        )


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
    import torch

    lines = [
        f"gpufocus {gpufocus.__version__}",
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
