"""Benchmark matrix: devices x sizes x frame counts x dtypes x chunks x methods.

Two kinds of case:

- ``core``: frames already on the device (uint8, synthetic), fused and downloaded.
  Stages: upload (to float on the device), fuse, collapse, download.
- ``e2e``: JPEG files on disk to a written JPEG, inside one process (start-up not
  counted). Stages: decode (time spent waiting for decoded frames), upload, fuse,
  collapse, download, encode.

Every case runs in a child process of its own, so that its peak host memory
(``ru_maxrss``) and peak CUDA memory are its own; one warm-up run, then the median
of ``repeat`` runs. On CUDA the stages are synchronised (see ``gpufocus.timing``) in
runs of their own, and the whole is timed in ``repeat`` runs that synchronise nothing
between stages. A stage a case does not have (``align`` with alignment off) is ``None``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

from .engine import StackFuser, fuse
from .load import FrameStack
from .timing import NO_TIMER, StageTimer

__all__ = [
    "STAGES",
    "DEFAULT_CACHE",
    "Case",
    "bench_frames",
    "stack_files",
    "run_case",
    "run_matrix",
    "cuda_vs_cpu",
    "to_markdown",
    "draw_chart",
    "machine_description",
    "run_command",
    "time_command",
    "torch_start_seconds",
    "split_at_dashes",
]

STAGES = ("decode", "upload", "align", "fuse", "collapse", "download", "encode")
#: Where e2e cases keep their JPEG stacks between runs.
DEFAULT_CACHE = Path(tempfile.gettempdir()) / "gpufocus-bench"
_DISTINCT_FRAMES = 8  # frames made for a case; longer stacks cycle through them
_RENDER_PIXELS = 300_000  # synthetic frames are rendered at most this large, then enlarged


@dataclass(frozen=True)
class Case:
    """One cell of the matrix. ``chunk`` ``None`` lets the engine choose."""

    kind: str
    device: str
    width: int
    height: int
    frames: int
    dtype: str
    chunk: int | None
    method: str
    align: bool


def machine_description() -> str:
    """CPU model and cores, GPUs, torch and Python versions."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    gpu = f"; GPU: {', '.join(gpus)}" if gpus else "; no GPU"
    return f"{model}, {os.cpu_count()} cores{gpu}; torch {torch.__version__}, Python {platform.python_version()}"


def bench_frames(height: int, width: int, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` distinct synthetic frames, ``(count, 3, H, W)`` uint8 on the CPU.

    Rendered by ``gpufocus.synth`` at a reduced size (large renders are slow), enlarged,
    with fine grain added so that the frames carry detail at full resolution.
    """
    from .synth import make_stack

    scale = min(1.0, (_RENDER_PIXELS / (height * width)) ** 0.5)
    small = make_stack(max(int(height * scale), 16), max(int(width * scale), 16), max(count, 2), seed=seed).frames
    gen = torch.Generator().manual_seed(seed)
    frames = torch.empty(count, 3, height, width, dtype=torch.uint8)
    for i in range(count):  # one at a time: a float copy of a 24 MP stack is large
        big = torch.nn.functional.interpolate(small[i : i + 1], size=(height, width), mode="bilinear")[0]
        big += (torch.rand(1, height, width, generator=gen) - 0.5) * 0.08
        frames[i] = big.clamp_(0, 1).mul_(255).round_().to(torch.uint8)
    return frames


def run_command(args: list[str]) -> tuple[float, str]:
    """Run ``python -m gpufocus ARGS`` and time it from outside, start-up included:
    ``(seconds, what it wrote on stderr)``. A failed command raises ``RuntimeError``
    with its last words."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "gpufocus", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"gpufocus {' '.join(args[:1])} failed: {done.stderr.strip()[-300:]}")
    return seconds, done.stderr


def time_command(args: list[str]) -> tuple[float, dict[str, float]]:
    """``run_command`` (give it ``-v``): ``(seconds, stages)``, the stages as its ``-v``
    line reports them: the time the command spent in each, and ``"<stage> busy"`` for a
    stage that runs ahead in worker threads (``gpufocus.timing``)."""
    seconds, stderr = run_command(args)
    line = next((line for line in stderr.splitlines() if "time per stage:" in line), "")
    stages = {}
    reported = line.partition("time per stage:")[2]
    for name, value, busy in re.findall(r"(\w+) ([\d.]+) s(?: \(busy ([\d.]+) s\))?", reported):
        stages[name] = float(value)
        if busy:
            stages[f"{name} busy"] = float(busy)
    return seconds, stages


def split_at_dashes(argv: list[str] | None) -> tuple[list[str], list[str]]:
    """A bench script's own arguments, and the ``gpufocus`` options after ``--``
    (argparse takes no ``--`` after a positional argument)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" not in argv:
        return argv, []
    cut = argv.index("--")
    return argv[:cut], argv[cut + 1 :]


def torch_start_seconds(device: str) -> float:
    """What a fresh process takes to ``import torch`` (and on CUDA to initialise it):
    the floor under every command, timed from outside."""
    code = "import torch"
    if device.startswith("cuda"):
        code += f"; torch.zeros(1, device={device!r}); torch.cuda.synchronize()"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return time.perf_counter() - started


def stack_files(folder: Path, height: int, width: int, frames: int) -> list[Path]:
    """A JPEG stack of ``frames`` files for e2e cases, cycling through a few distinct ones.

    The distinct files are written once into ``folder`` and reused by later runs.
    """
    from .write import write_image

    distinct = min(frames, _DISTINCT_FRAMES)
    folder = Path(folder) / f"jpeg_{width}x{height}_{distinct}"
    paths = [folder / f"frame_{i:02d}.jpg" for i in range(distinct)]
    if not all(p.is_file() for p in paths):
        folder.mkdir(parents=True, exist_ok=True)
        for path, frame in zip(paths, bench_frames(height, width, distinct)):
            write_image(path, frame.permute(1, 2, 0).numpy(), quality=95, overwrite=True)
    return [paths[i % distinct] for i in range(frames)]


def _core_run(case: Case, pool: torch.Tensor, chunk: int, timer: StageTimer) -> None:
    fuser = StackFuser(method=case.method, device=case.device, dtype=case.dtype, align=case.align)
    for start in range(0, case.frames, chunk):
        offset = start % pool.shape[0]
        fuser.add(pool[offset : offset + min(chunk, case.frames - start)], timer)
    image = fuser.result(timer)
    with timer.stage("download"):
        image.cpu()


def _e2e_run(case: Case, paths: list[Path], chunk: int | None, out: Path, timer: StageTimer) -> None:
    from .write import write_image

    with timer.stage("decode"):  # the headers
        stack = FrameStack(paths)
    image = fuse(
        stack, method=case.method, device=case.device, dtype=case.dtype, chunk=chunk, align=case.align, timer=timer,
        on_device=True,  # as the command: written from the device
    )
    with timer.stage("encode"):  # downloaded as integers (or encoded on the GPU) and written
        write_image(out, image, quality=95, overwrite=True)


def run_case(case: Case, repeat: int = 3, warmup: int = 1, cache: Path | None = None) -> dict:
    """Run one case in this process and return its measurements.

    On CUDA the stages are timed in runs of their own: ``StageTimer`` synchronises the
    device at each stage's ends, which stops the stages from overlapping (the next
    chunk's decode on its own stream with this chunk's fusion), so ``seconds`` comes
    from ``repeat`` more runs that time nothing but the whole.

    Returns:
        The case's fields, plus ``seconds`` (median wall time), ``runs`` (all of them),
        ``staged_seconds`` (the median of the runs that timed the stages: ``seconds`` on
        the CPU), ``mpix_frames_per_s``, ``stages`` (median seconds per stage, ``None``
        for a stage the case does not have), ``peak_cuda_bytes`` (``None`` on the CPU)
        and ``peak_host_bytes`` (this process's peak resident memory so far).
    """
    from .device import default_chunk, resolve_device

    device = resolve_device(case.device)
    cache = Path(cache or DEFAULT_CACHE)
    chunk = case.chunk or default_chunk(device, 3, case.height, case.width, torch.float32, None)
    if case.kind == "core":
        count = min(case.frames, max(_DISTINCT_FRAMES, chunk))
        count = -(-count // chunk) * chunk  # a whole number of chunks: slices never wrap
        distinct = bench_frames(case.height, case.width, min(count, _DISTINCT_FRAMES))
        pool = distinct[torch.arange(count) % distinct.shape[0]].to(device)

        def once(timer: StageTimer) -> None:
            _core_run(case, pool, chunk, timer)

    elif case.kind == "e2e":
        paths = stack_files(cache, case.height, case.width, case.frames)
        out = cache / f"e2e_result_{os.getpid()}.jpg"

        def once(timer: StageTimer) -> None:
            _e2e_run(case, paths, case.chunk, out, timer)

    else:
        raise ValueError(f"unknown case kind {case.kind!r}")
    for _ in range(warmup):
        once(StageTimer(device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def timed(timer) -> float:
        start = time.perf_counter()
        once(timer)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    staged, stage_runs = [], []
    for _ in range(repeat):
        timer = StageTimer(device)
        staged.append(timed(timer))
        stage_runs.append(timer.seconds)
    runs = [timed(NO_TIMER) for _ in range(repeat)] if device.type == "cuda" else staged
    seconds = statistics.median(runs)
    present = set().union(*stage_runs)
    return {
        **dataclasses.asdict(case),
        "chunk": chunk,
        "repeat": repeat,
        "seconds": seconds,
        "runs": runs,
        "staged_seconds": statistics.median(staged),
        "mpix_frames_per_s": case.frames * case.width * case.height / seconds / 1e6,
        "stages": {
            name: statistics.median(r.get(name, 0.0) for r in stage_runs) if name in present else None
            for name in STAGES
        },
        "peak_cuda_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "peak_host_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def _run_in_child(case: Case, repeat: int, warmup: int, cache: Path) -> dict:
    job = json.dumps({"case": dataclasses.asdict(case), "repeat": repeat, "warmup": warmup, "cache": str(cache)})
    done = subprocess.run(
        [sys.executable, "-m", "gpufocus.benchmark", job], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {**dataclasses.asdict(case), "error": last}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_matrix(
    cases: Iterable[Case],
    *,
    repeat: int = 3,
    warmup: int = 1,
    cache: Path | None = None,
    on_result: Callable[[dict], None] | None = None,
) -> dict:
    """Run every case in a child process; pair CPU and CUDA results.

    Returns:
        ``{"machine", "date", "torch", "results": [...], "cuda_vs_cpu": [...]}``; each
        ``cuda_vs_cpu`` entry names a case and gives ``cpu_seconds``, ``cuda_seconds``
        and ``speedup`` (CPU time over CUDA time, both measured in this run).
    """
    cache = Path(cache or DEFAULT_CACHE)
    results = []
    for case in cases:
        result = _run_in_child(case, repeat, warmup, cache)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return {
        "machine": machine_description(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "results": results,
        "cuda_vs_cpu": cuda_vs_cpu(results),
    }


def cuda_vs_cpu(results: list[dict]) -> list[dict]:
    """Pair every CUDA result with the CPU result of the same case (chunk aside)."""
    key_fields = ("kind", "width", "height", "frames", "dtype", "method", "align")
    pairs = []
    for cuda in (r for r in results if r["device"].startswith("cuda") and "error" not in r):
        cpu = next(
            (r for r in results if r["device"] == "cpu" and "error" not in r and all(r[k] == cuda[k] for k in key_fields)),
            None,
        )
        if cpu is not None:
            pairs.append(
                {
                    **{k: cuda[k] for k in key_fields},
                    "cpu_seconds": cpu["seconds"],
                    "cuda_seconds": cuda["seconds"],
                    "speedup": cpu["seconds"] / cuda["seconds"],
                }
            )
    return pairs


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def table_rows(report: dict, compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the results table (shared by the terminal and markdown).

    ``compact`` drops the stage columns that no case has.
    """
    header = ["kind", "device", "align", "dtype", "chunk", "frames", "size", "median s", "Mpix-frames/s"]
    header += [f"{s} s" for s in STAGES] + ["peak CUDA MiB", "peak host MiB"]
    rows = []
    for r in report["results"]:
        size = f"{r['width']}x{r['height']}"
        if "error" in r:
            rows.append([r["kind"], r["device"], _on(r["align"]), r["dtype"], str(r["chunk"] or "auto"), str(r["frames"]),
                         size, f"error: {r['error']}"] + [""] * (len(header) - 8))
            continue
        stages = [("-" if r["stages"][s] is None else f"{r['stages'][s]:.3f}") for s in STAGES]
        rows.append(
            [r["kind"], r["device"], _on(r["align"]), r["dtype"], str(r["chunk"]), str(r["frames"]), size,
             f"{r['seconds']:.3f}",
             f"{r['mpix_frames_per_s']:.1f}", *stages, _mib(r["peak_cuda_bytes"]), _mib(r["peak_host_bytes"])]
        )
    if compact:
        keep = [i for i, name in enumerate(header) if any(row[i] not in ("-", "") for row in rows)]
        header, rows = [header[i] for i in keep], [[row[i] for i in keep] for row in rows]
    return header, rows


def to_markdown(report: dict) -> str:
    """The report as markdown: the machine, the results, the CUDA/CPU pairs."""
    header, rows = table_rows(report)
    lines = [f"Machine: {report['machine']}; {report['date']}", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if report["cuda_vs_cpu"]:
        lines += ["", "| kind | align | size | frames | dtype | CPU s | CUDA s | CUDA speed-up |", "|---|---|---|---|---|---|---|---|"]
        for p in report["cuda_vs_cpu"]:
            lines.append(
                f"| {p['kind']} | {_on(p['align'])} | {p['width']}x{p['height']} | {p['frames']} | {p['dtype']} | "
                f"{p['cpu_seconds']:.3f} | {p['cuda_seconds']:.3f} | {p['speedup']:.1f}x |"
            )
    return "\n".join(lines) + "\n"


_COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75)]


def _nice_step(rough: float) -> float:
    """The smallest of 1, 2 or 5 times a power of ten that is at least ``rough``."""
    power = 10 ** math.floor(math.log10(max(rough, 1e-9)))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= rough)


def draw_chart(report: dict):
    """A line chart (a PIL image): throughput against frame count, one line per device/kind/dtype/size."""
    from PIL import Image, ImageDraw, ImageFont

    series: dict[str, list[tuple[int, float]]] = {}
    for r in report["results"]:
        if "error" not in r:
            name = f"{r['device']} {r['kind']} {r['dtype']} {r['width']}x{r['height']}{'' if r['align'] else ' no-align'}"
            series.setdefault(name, []).append((r["frames"], r["mpix_frames_per_s"]))
    width, height, left, right, top, bottom = 900, 520, 80, 260, 50, 60
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, small = ImageFont.load_default(16), ImageFont.load_default(13)
    counts = sorted({f for points in series.values() for f, _ in points}) or [1]
    highest = max((v for points in series.values() for _, v in points), default=1.0)
    step = _nice_step(highest / 5)
    ticks = int(highest // step) + 1
    peak = step * ticks
    plot_w, plot_h = width - left - right, height - top - bottom

    def x_of(frames: int) -> float:
        return left + (counts.index(frames) + 0.5) / len(counts) * plot_w

    def y_of(value: float) -> float:
        return top + plot_h - value / peak * plot_h

    draw.rectangle((left, top, left + plot_w, top + plot_h), outline="black")
    for i in range(ticks + 1):
        value = step * i
        draw.line((left - 5, y_of(value), left, y_of(value)), fill="black")
        draw.text((left - 8, y_of(value)), f"{value:g}", fill="black", font=small, anchor="rm")
        draw.line((left, y_of(value), left + plot_w, y_of(value)), fill=(225, 225, 225))
    for frames in counts:
        draw.text((x_of(frames), top + plot_h + 8), str(frames), fill="black", font=small, anchor="mt")
    draw.text((left + plot_w / 2, height - 22), "frames in the stack", fill="black", font=font, anchor="mm")
    draw.text((left, 20), "gpufocus throughput (Mpix-frames/s, higher is better)", fill="black", font=font)
    for n, (name, points) in enumerate(sorted(series.items())):
        colour = _COLOURS[n % len(_COLOURS)]
        xy = [(x_of(f), y_of(v)) for f, v in sorted(points)]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=3)
        for x, y in xy:
            draw.ellipse((x - 4, y - 4, x + 4, y + 4), fill=colour)
        legend_y = top + 10 + n * 22
        draw.line((left + plot_w + 15, legend_y, left + plot_w + 40, legend_y), fill=colour, width=3)
        draw.text((left + plot_w + 48, legend_y), name, fill="black", font=small, anchor="lm")
    return image


def _child_main(job: str) -> None:
    from .allocator import tune_host_allocator

    tune_host_allocator()  # as the command does: what users run is what is timed
    spec = json.loads(job)
    result = run_case(Case(**spec["case"]), spec["repeat"], spec["warmup"], Path(spec["cache"]))
    print(json.dumps(result))


if __name__ == "__main__":
    _child_main(sys.argv[1])
