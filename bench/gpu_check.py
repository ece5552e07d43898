"""One call on a GPU machine: check the CUDA path, then time what users run. One table.

    python bench/gpu_check.py [--quick] [--device cuda] [--real DIR] [--json FILE] [--budget S]

Prepared for a lent H200 (torch with CUDA and Triton there; kornia, kornia_rs and
nvImageCodec carried as wheels, not imagecodecs: see the end). The rows, in order (the
issue's goals first, then what helps choose the next change):
1. The compile check (``gpufocus.kernels.compile``) with the Triton installed there.
1a. The card's copy bandwidth (a device-to-device copy of 4 GiB), measured: the ceiling
   row 5 holds each stage's bytes against, whichever card is lent.
2. Each Triton kernel against its torch twin on CUDA (fresh random inputs of odd size):
   equal bit for bit, or the largest difference; with ``pyr_down[luma]``, the alignment's
   first level of the frames' luminance made in one pass, and ``sampling_grid``, where a
   moving frame is resampled.
3. CUDA against the CPU, defaults: a synthetic moving stack (a tensor, and TIFF files:
   decoded into pinned memory) and ``--real`` (petteri_pcb from shared/data/real; without
   it, 4 synthetic JPEG frames of 320x240), largest and mean difference in 1/255.
4. A chunk's motion estimation on CUDA under ``torch.cuda.set_sync_debug_mode("error")``.
4a. The estimation replayed as a CUDA graph against ``GPUFOCUS_CUDA_GRAPHS=0``: graphs
   captured (or the fallback's warning), transforms and image equal?
4b. The batch JPEG decoder chosen for the device (nvImageCodec, else torchvision's nvJPEG)
   on the 100 JPEG files of 24 MP: Gpix/s in chunks of 16, and its difference from Pillow.
4c. The JPEG encoder for the device (nvImageCodec) on a 24 MP image there, metadata
   included, against downloading it for Pillow: milliseconds, and the decoded difference.
5. Core: 24 MP frames (6000x4000) float32, 100 frames, alignment on and off: the fuse
   stage's Gpix-frames/s, per-stage times, peak GPU memory; median of 3 after a warm-up.
   Then, per stage, the bytes ``gpufocus.traffic`` counts for the same run, the time
   they take at row 1a's bandwidth and the share of the measured time that is.
6. End to end: 100 JPEG files of 24 MP to a written JPEG, alignment on and off.
7. The whole command, a process of its own, start-up included: the floor first (``import
   torch`` and CUDA's initialisation in a fresh process, median of 3), then ``gpufocus
   fuse`` on the same 100 files (alignment on and off) and on ``--real``, each as
   the floor + the rest, with the time it waited for each stage and, for those in
   threads (decode, write), their busy time (a run with ``-v``); then ``gpufocus batch``
   of ``--real`` 12 times: stacks per minute.
7a. The issue's four goals, each figure against its goal (``GOALS``): met or not.
Then, while ``--budget`` lasts (450 s: each diagnostic not begun by then is a row that
says so), what helps choose the next change:
8. Where the time goes: torch's profiler over an aligned run of 32 frames of 24 MP, the
   kernels that took the most device time.
9. A small stack's command (``--real``) with Triton's kernels and with their torch
   twins, the first run on a new machine (an empty Triton cache: what compiling the
   kernels costs, and the note it prints), Triton's key to its cache (once a process:
   its own library hashed), and its slowest imports: what start-up costs beyond
   ``import torch``.
10. Core aligned with ``GPUFOCUS_CUDA_GRAPHS=0``: the align stage without its graph; core
   not aligned with ``GPUFOCUS_TRITON_WARPS=8``: every kernel in 8 warps a program (half
   the registers a thread; at 4, most take 128, which caps an SM at 16 warps).
11. The fuse stage of 32 frames of 24 MP with a few kernel tiles (the same result
   expected from each).
12. 16 16-bit TIFF files (deflate) of 24 MP to a 16-bit TIFF, aligned: decoded on the
   host, a thread per core; the time waited for the decoders against their busy time
   (every run timing its stages).
13. ``pyr_down[luma]`` timed for a few output tiles (GB/s against the card's bandwidth).
Rows 5, 6 and 7 time the whole without ``StageTimer``'s synchronisations (they stop the
stages from overlapping), and give the stages from runs of their own (``-v`` for a
command). Frames are written as JPEG and TIFF only, which need no imagecodecs (the GPU
machine has none).
``--quick`` uses 320x240 and 4 frames, one run each (a batch of 3). ``--device cpu
--quick`` is the dry run the test suite makes on a machine without CUDA: the same code,
CUDA-only rows skipped.

On a lent machine (Python 3.12, torch and Triton there; the issue's goals are an
H200's, so name that kind): carry, as a folder that git ignores, the cp312 wheels of
kornia 0.9.0, kornia_rs 0.2.0, nvidia-nvimgcodec-cu13 and nvidia-nvjpeg (about 35 MB:
imagecodecs would take the carried tree past its 64 MiB), and a copy of petteri_pcb;
install the wheels with ``python3 -m pip install --no-index --no-deps --target
/tmp/site``, copy ``gpufocus/`` there and ``kernels/`` into it as
``gpufocus/kernels`` (what the wheel holds; no build step, so no setuptools needed),
put /tmp/site on ``PYTHONPATH``, and run this script from outside the checkout under
``timeout`` a little short of the call's limit, its output ``tee``'d to where the files
come back from: the rows print as they finish::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
      && cp -r gpufocus /tmp/site/ && cp -r kernels /tmp/site/gpufocus/kernels \
      && export PYTHONPATH=/tmp/site && cp -r .gpudata /tmp/gd && R=$PWD && cd /tmp \
      && timeout 570 python3 $R/bench/gpu_check.py --real /tmp/gd/petteri_pcb \
         --json $OUT/gpu_check.json | tee $OUT/gpu_check.log

Rehearsed on the CPU (2026-12-05): that command, with ``--device cpu --quick`` added,
in a fresh clone, a venv of torch, Triton 3.6.0, typer 0.27.2, tifffile, numpy and
Pillow alone (no setuptools, no imagecodecs) and the cp311 wheels in ``.whl``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch

from gpufocus import fuse
from gpufocus.benchmark import (
    DEFAULT_CACHE, Case, machine_description, run_case, run_command, stack_files, time_command,
    torch_start_seconds,
)
from gpufocus.synth import make_stack, procedural_scene


def compile_check() -> str:
    import contextlib
    import io

    from gpufocus.kernels.compile import main as compile_main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        failed = compile_main(["--target", "sm_90"])
    lines = out.getvalue().splitlines()
    import triton

    return f"triton {triton.__version__}: {lines[-1]} ({len(lines) - 1} specializations, {'FAILED' if failed else 'ok'})"


def _compare(a: torch.Tensor, b: torch.Tensor) -> str:
    if torch.equal(a, b):
        return "equal"
    return f"max diff {float((a.float() - b.float()).abs().max()):.2e}"


def kernels_match_twins(device: str, quick: bool = False) -> list[tuple[str, str]]:
    """Each kernel on fresh random data, Triton against the torch twin on the same device
    (``quick``: frames of 47x33, for Triton's interpreter on the CPU)."""
    from gpufocus.kernels import DETAIL, LUMA, Level, detail, downsample, downsample_luminance, sampling_grid, select
    from gpufocus.kernels.filters import binomial_taps, separable_filter

    height, width = (33, 47) if quick else (1001, 1503)
    g = torch.rand(4, 3, height, width, device=device)
    rows = []

    def by_twin(fn):
        os.environ["GPUFOCUS_TRITON"] = "0"
        try:
            return fn()
        finally:
            os.environ.pop("GPUFOCUS_TRITON")

    def both(fn):
        return fn(), by_twin(fn)

    coarse, coarse_twin = both(lambda: downsample(g))
    rows.append(("kernel pyr_down vs twin", _compare(coarse, coarse_twin)))
    rows.append(("kernel pyr_down[luma] vs twin", _compare(*both(lambda: downsample_luminance(g)))))
    matrix = torch.tensor([[1.013, 0.004, -9.7], [-0.003, 0.991, 2.25], [2e-6, -1.5e-6, 1.0]], device=device)
    for affine in (True, False):  # against the twin on the CPU: torch's CUDA divides by a scalar as a product
        (grid, covered), (grid_twin, covered_twin) = both(
            lambda: sampling_grid(matrix.cpu() if os.environ.get("GPUFOCUS_TRITON") == "0" else matrix, affine,
                                  (0, 0, height, width), (height, width)))
        rows.append((f"kernel sampling_grid[{'affine' if affine else 'projective'}] vs the CPU's twin (grid, covered)",
                     f"{_compare(grid.cpu(), grid_twin)}, {_compare(covered.cpu(), covered_twin)}"))
    for measure, name in ((DETAIL, "detail"), (LUMA, "detail[luma]")):
        got, want = both(lambda: detail(g, coarse, measure))
        rows.append((f"kernel {name} vs twin", _compare(got, want)))
    measured = detail(g, coarse, LUMA)
    level = Level(g, coarse, lambda: measured, lambda: detail(g, coarse, DETAIL))
    usable = torch.rand(4, 1, height, width, device=device) > 0.1
    taps = binomial_taps(9)
    (state, energy), (twin, twin_energy) = both(
        lambda: select.energy_fold(None, level, taps, usable, 0, track_index=True, keep_energy=True))
    rows.append(("kernel fold vs twin (score, value, index, energy)",
                 ", ".join(_compare(a, b) for a, b in ((state.score, twin.score), (state.value, twin.value),
                                                        (state.index, twin.index), (energy, twin_energy)))))
    coarse_measured = detail(coarse, downsample(coarse), LUMA)
    coarse_energy = separable_filter(coarse_measured * coarse_measured, taps)
    got, want = both(lambda: select.halo_fold(None, None, None, level, coarse_energy, taps, usable, 0, 0.2, 0.5))
    rows.append(("kernel fold[halo] vs twin (best, alternative, own values)",
                 ", ".join(_compare(a.value, b.value) for a, b in zip(got, want))))
    # and against the twin on the CPU: on CUDA, torch divides by a scalar as a product
    # with its reciprocal (the own values' 1 + t_mid); the kernel and the CPU divide
    on_cpu = Level(g.cpu(), coarse.cpu(), lambda: measured.cpu(), lambda: detail(g.cpu(), coarse.cpu(), DETAIL))
    want = by_twin(lambda: select.halo_fold(None, None, None, on_cpu, coarse_energy.cpu(), taps, usable.cpu(), 0, 0.2, 0.5))
    rows.append(("kernel fold[halo] vs the CPU's twin (best, alternative, own values)",
                 ", ".join(_compare(a.value.cpu(), b.value) for a, b in zip(got, want))))
    from gpufocus.halo import noise_level

    rows.append(("noise level on CUDA (Triton samples, median from a sort) vs CPU",
                 _compare(noise_level(g, False).cpu(), noise_level(g.cpu(), False))))
    return rows


def luma_tiles(device: str, quick: bool) -> str:
    """Row 13: ``pyr_down[luma]`` (the alignment's first step down) on 16 frames of
    24 MP for a few output tiles, milliseconds and GB/s of the bytes it moves (each
    frame read once, its level written); the default tile first."""
    from gpufocus.kernels import _triton_pyramid as fused

    height, width, count = (34, 50, 2) if quick else (4000, 6000, 16)
    frames = torch.rand(count, 3, height, width, device=device)
    moved = frames.numel() * 4 + count * ((height + 1) // 2) * ((width + 1) // 2) * 4
    default, results = fused.LUMA_TILE, []
    try:
        for tile in dict.fromkeys([default, (2, 64), (8, 64), (4, 128), (8, 32)]):
            fused.LUMA_TILE = tile

            def once() -> None:
                fused.pyr_down(frames, of_luma=True)
                if frames.is_cuda:
                    torch.cuda.synchronize(frames.device)

            seconds, _ = _median_time(once, 1 if quick else 5)
            results.append(f"{tile[0]}x{tile[1]} {seconds * 1e3:.2f} ms ({moved / seconds / 1e9:.0f} GB/s)")
    finally:
        fused.LUMA_TILE = default
    return f"{count} x {width}x{height}: " + ", ".join(results)


def _frame_files(frames: torch.Tensor, folder: Path, suffix: str) -> list[str]:
    """``frames`` (``(N, 3, H, W)`` float in [0, 1]) written as ``frame_NNN.<suffix>`` in ``folder``:
    TIFF by tifffile, JPEG by Pillow, nothing that needs imagecodecs (the GPU machine
    has none: it is not carried, for the size the carried wheels may take)."""
    from gpufocus.write import write_image

    folder.mkdir(parents=True, exist_ok=True)
    return [str(write_image(folder / f"frame_{i:03d}.{suffix}", frame, quality=95))
            for i, frame in enumerate(frames)]


def _pool_fusion(device: str, width: int, height: int, quick: bool, align: bool):
    """Rows 8 and 11: 32 frames of ``width`` x ``height`` (``--quick``: 4), 8 distinct ones
    in a pool of 16 on ``device``, and ``run()``, which fuses them there (chunks of the
    pool) and returns the image once the device is done: ``(count, chunk, run)``."""
    from gpufocus import StackFuser
    from gpufocus.benchmark import bench_frames

    count, distinct = (4, 4) if quick else (32, 8)
    pool = bench_frames(height, width, distinct)[torch.arange(min(count, 16)) % distinct].to(device)

    def run() -> torch.Tensor:
        fuser = StackFuser(device=device, align=align)
        for _ in range(count // len(pool)):
            fuser.add(pool)
        image = fuser.result()
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        return image

    return count, len(pool), run


def where_time_goes(device: str, width: int, height: int, quick: bool) -> str:
    """Row 8: torch's profiler over one aligned run of 32 still frames of 24 MP in the
    library (``--quick``: 4 small ones), after a warm-up: the kernels that took the most
    device time, with the alignment's graph replayed (on the CPU: the operators' own
    time). What to make faster next, if the goals are not met."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.startswith("cuda")
    count, chunk, run = _pool_fusion(device, width, height, quick, align=True)
    run()
    with profile(activities=[ProfilerActivity.CUDA if cuda else ProfilerActivity.CPU]) as profiled:
        started = time.perf_counter()
        run()
        seconds = time.perf_counter() - started
    events = profiled.key_averages()

    def own(event) -> float:
        return event.self_device_time_total if cuda else event.self_cpu_time_total

    top = sorted(events, key=own, reverse=True)[:8]
    return (f"{count} x {width}x{height}, aligned, chunks of {chunk}: {seconds:.3f} s under the profiler; "
            f"{'kernels' if cuda else 'operators'} by own time, ms of {sum(map(own, events)) / 1e3:.1f}: "
            + ", ".join(f"{event.key[:60]} {own(event) / 1e3:.1f}" for event in top))


def device_matches_cpu(device: str, real: Path) -> list[tuple[str, str]]:
    """Row 3: the synthetic stack as a tensor, and as TIFF files (decoded on the CPU into
    pinned memory and uploaded ahead); ``--real`` (JPEG: decoded on the GPU)."""
    stack = make_stack(384, 512, 6, breathing=0.003, shift=1.0, max_blur=6.0, seed=1)
    with tempfile.TemporaryDirectory() as scratch:
        sources = [
            ("synthetic 512x384 x6 (moving)", stack.frames),
            ("synthetic 512x384 x6 (moving), TIFF files", _frame_files(stack.frames, Path(scratch), "tif")),
            (real.name, sorted(str(p) for p in real.iterdir() if p.suffix.lower() in (".jpg", ".png"))),
        ]
        return [_matches(device, name, source) for name, source in sources]


def _matches(device: str, name: str, source) -> tuple[str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cpu = fuse(source, device="cpu")
        other = fuse(source, device=device).cpu()
    difference = (cpu - other).abs() * 255
    return (f"{device} vs CPU, defaults: {name} (1/255)",
            f"max {float(difference.max()):.3f}, mean {float(difference.mean()):.4f}")


def alignment_without_sync(device: str) -> str:
    """A chunk's whole estimation under the sync guard (the one read-back comes after),
    its operations one by one."""
    from gpufocus.align import StackAligner
    from gpufocus.options import AlignOptions

    frames = make_stack(768, 1024, 4, breathing=0.003, shift=1.0, max_blur=6.0, seed=2).frames.to(device)
    with _setting("GPUFOCUS_CUDA_GRAPHS", "0"):  # its operations one by one (row 4a: as a graph)
        StackAligner(AlignOptions())._chain_on_device(frames, 0, None)  # warm-up: kernels compile, caches fill
        aligner = StackAligner(AlignOptions())
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            aligner._chain_on_device(frames, 0, None)
        except RuntimeError as error:
            import traceback

            ours = [f for f in traceback.extract_tb(error.__traceback__) if "gpufocus" in f.filename]
            where = f" at {Path(ours[-1].filename).name}:{ours[-1].lineno} ({ours[-1].line})" if ours else ""
            return f"synchronised: {str(error).splitlines()[0]}{where}"
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return "no host sync"


def cuda_graphs(device: str, quick: bool) -> str:
    """Row 4a: the alignment's estimation replayed as a CUDA graph (``gpufocus.graphs``)
    against its operations one by one (``GPUFOCUS_CUDA_GRAPHS=0``): 24 moving frames in
    chunks of 4 (``--quick``: 9), the same transforms and image expected bit for bit.
    On the CPU nothing is captured."""
    from gpufocus import StackFuser

    stack = make_stack(384, 512, 9 if quick else 24, breathing=0.003, shift=1.0, max_blur=6.0, seed=2)
    runs = {}
    for graphs in ("1", "0"):
        with _setting("GPUFOCUS_CUDA_GRAPHS", graphs), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fuser = StackFuser(device=device, chunk=4)
            image = fuser.run(stack.frames)
        captured = sum(not isinstance(g, str) for g in fuser._aligner._graphed._graphs.values())
        warned = [str(w.message) for w in caught if "CUDA graph" in str(w.message)]
        runs[graphs] = (image, torch.stack([t.matrix for t in fuser.transforms]), captured, warned)
    (image, matrices, captured, warned), (plain, plain_matrices, _, _) = runs["1"], runs["0"]
    difference = float((image - plain).abs().max()) * 255
    return (f"graphs captured: {captured}{'; ' + warned[0] if warned else ''}; transforms "
            f"{'equal' if torch.equal(matrices, plain_matrices) else f'differ by up to {float((matrices - plain_matrices).abs().max()):.2e}'}"
            f"; image max difference {difference:.3f} (1/255)")


@contextlib.contextmanager
def _setting(name: str, value: str):
    """The environment variable ``name`` set to ``value`` for the block."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]
        else:
            os.environ[name] = before


def _median_time(work, runs: int):
    """``work()`` once to warm up, then ``runs`` times: the median seconds and what the
    last run gave (``work`` returns once its result is on the host, or synchronises)."""
    import statistics

    work()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def jpeg_decoding(device: str, width: int, height: int, frames: int, quick: bool) -> str:
    """Row 4b: ``gpufocus.load.jpeg_decoder`` for the device against Pillow, and its speed."""
    import numpy as np
    from PIL import Image

    from gpufocus.load import jpeg_decoder

    target = torch.device(device)
    decoder = jpeg_decoder(target)
    if decoder is None:
        return "none: the CPU decoders read JPEG stacks"
    files = stack_files(DEFAULT_CACHE, height, width, frames)
    data = [np.fromfile(path, dtype=np.uint8) for path in files]

    def decode_all() -> list[torch.Tensor]:
        chunks = [torch.stack(decoder.decode(data[start : start + 16], target)) for start in range(0, len(data), 16)]
        if target.type == "cuda":
            torch.cuda.synchronize(target)
        return chunks

    seconds, chunks = _median_time(decode_all, 1 if quick else 3)
    first = chunks[0][: min(4, frames)].cpu().permute(0, 2, 3, 1).numpy().astype(np.int16)
    pillow = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in files[: len(first)]]).astype(np.int16)
    difference = np.abs(first - pillow)
    return (f"{decoder.name}: {frames} frames in {seconds:.3f} s ({frames * width * height / seconds / 1e9:.2f} Gpix/s, "
            f"chunks of 16); against Pillow: max {difference.max()} levels, mean {difference.mean():.5f}")


def jpeg_encoding(device: str, width: int, height: int, quick: bool) -> str:
    """Row 4c: the fused image's JPEG path from the device: ``gpufocus.encode.jpeg_encoder``
    (``encode_jpeg``, with metadata) against the download and Pillow's ``encode_image``,
    both from the same float image on the device; the decoded difference."""
    import io
    import numpy as np
    from PIL import Image

    from gpufocus.encode import encode_image, encode_jpeg, jpeg_encoder
    from gpufocus.write import quantize

    target = torch.device(device)
    encoder = jpeg_encoder(target)
    if encoder is None:
        return "none: the result is downloaded and Pillow encodes it"
    image = procedural_scene(height, width, 5).to(target)  # (3, H, W) in [0, 1], as a result
    icc, exif = bytes(3000), Image.Exif().tobytes()  # a profile's size, an EXIF block

    def by_device() -> bytes:
        return encode_jpeg(encoder, quantize(image, 8), quality=95, exif=exif, icc=icc, software="gpufocus check")

    def by_pillow() -> bytes:
        out = io.BytesIO()
        encode_image(out, quantize(image, 8).cpu().numpy(), "JPEG", quality=95, exif=exif, icc=icc,
                     software="gpufocus check")
        return out.getvalue()

    (fast, ours), (slow, theirs) = (_median_time(encode, 1 if quick else 3) for encode in (by_device, by_pillow))
    decoded = [np.asarray(Image.open(io.BytesIO(d))).astype(np.int16) for d in (ours, theirs)]
    difference = np.abs(decoded[0] - decoded[1])
    return (f"{encoder.name}: {width}x{height} q95 in {fast * 1e3:.1f} ms, Pillow (download included) "
            f"{slow * 1e3:.1f} ms; {'the same bytes' if ours == theirs else f'{len(ours)} against {len(theirs)} bytes'}"
            f"; decoded against Pillow's: max {difference.max()} levels, mean {difference.mean():.5f}")


def copy_bandwidth(device: str, quick: bool) -> float:
    """Row 1a: the bytes a second (read + written) of a device-to-device copy of 4 GiB
    (``--quick``: 64 MiB), several times the L2: the ceiling each stage's counted bytes
    are held against (``bytes_against_time``), whichever card is lent."""
    size = (64 if quick else 4096) << 20
    source = torch.empty(size, dtype=torch.uint8, device=device)
    target = torch.empty_like(source)

    def copies() -> None:
        for _ in range(5):
            target.copy_(source)
        if source.is_cuda:
            torch.cuda.synchronize(source.device)

    seconds, _ = _median_time(copies, 5)
    del source, target
    if device.startswith("cuda"):  # the engine sizes its chunks by the memory free on the card
        torch.cuda.empty_cache()
    return 5 * 2 * size / seconds


def bytes_against_time(stages: dict[str, float | None], traffic: dict, bandwidth: float) -> str:
    """Each timed stage against the time its bytes take at ``bandwidth``: what
    ``gpufocus.traffic.count_traffic`` counts for the same run (the align stage with
    what its CUDA graph replays), and the share of the measured time that is."""
    parts = []
    for stage, measured in stages.items():
        counted = [t for name, t in traffic.items() if name == stage or name.startswith(f"{stage}, ")]
        if not measured or not counted:
            continue
        moved = sum(t.bytes for t in counted)
        work = sum(t.operations + t.launches for t in counted)
        floor = moved / bandwidth
        parts.append(f"{stage} {moved / 1e9:.3g} GB in {work} operations: {floor * 1e3:.1f} ms at that bandwidth, "
                     f"{measured * 1e3:.1f} ms measured ({floor / measured:.0%})")
    return "; ".join(parts)


def timed(
    kind: str, device: str, width: int, height: int, frames: int, align: bool, quick: bool, graphs: bool = True,
    warps: int | None = None, bandwidth: float | None = None, goals: dict[str, float] | None = None,
):
    """Rows 5 and 6 (and 10): a ``run_case`` row; for a core case, with ``bandwidth``
    measured (row 1a), a second row: its stages against their bytes (``bytes_against_time``).
    Aligned, the figures two goals are judged by go into ``goals``: the core run's align
    stage (``"align"``), the end-to-end run's seconds (``"library"``)."""
    repeat, warmup = (1, 0) if quick else (3, 1) if kind == "core" else (2, 1)
    with _setting("GPUFOCUS_CUDA_GRAPHS", "1" if graphs else "0"), (
        _setting("GPUFOCUS_TRITON_WARPS", str(warps)) if warps else contextlib.nullcontext()
    ):
        r = run_case(Case(kind, device, width, height, frames, "float32", None, "max-energy", align), repeat=repeat,
                     warmup=warmup)
    stages = ", ".join(f"{name} {value:.3f}" for name, value in r["stages"].items() if value)
    fuse_rate = frames * width * height / r["stages"]["fuse"] / 1e9
    peak = r["peak_cuda_bytes"]
    label = f"{kind} {width}x{height} x{frames} float32 {'aligned' if align else 'no-align'}"
    label += "" if graphs else ", CUDA graphs off"
    label += f", kernels in {warps} warps" if warps else ""
    synchronised = f", {r['staged_seconds']:.3f} s in the runs timing stages" if device.startswith("cuda") else ""
    if goals is not None and align:
        goals.update({"align": r["stages"]["align"]} if kind == "core" else {"library": r["seconds"]})
    yield label, (f"{r['seconds']:.3f} s (median of {repeat}{synchronised}); fuse stage {fuse_rate:.2f} "
                  f"Gpix-frames/s; stages s: {stages}" + (f"; peak {peak / 2**30:.1f} GiB" if peak else ""))
    if kind == "core" and bandwidth:
        from gpufocus.options import FuseOptions
        from gpufocus.traffic import count_traffic

        traffic = count_traffic(height, width, frames, r["chunk"], FuseOptions(align=FuseOptions().align if align else None))
        yield (f"{label}: bytes against time",
               f"at {bandwidth / 1e12:.2f} TB/s (row 1a): " + bytes_against_time(r["stages"], traffic, bandwidth))


def sixteen_bit_files(device: str, width: int, height: int, quick: bool) -> tuple[str, str]:
    """Row 12: 16-bit TIFF files (deflate) to a 16-bit TIFF, aligned, in the library: the
    frames a GPU cannot decode, decoded on the host in a thread per core into pinned
    memory and uploaded a chunk ahead. The time waited for ``decode`` against its busy
    time says whether the host's decoders keep up with the GPU."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from PIL import Image

    from gpufocus.load import FrameStack
    from gpufocus.timing import StageTimer
    from gpufocus.write import write_image

    frames = 4 if quick else 16
    jpegs = stack_files(DEFAULT_CACHE, height, width, frames)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)

        def sixteen(index: int) -> Path:
            pixels = np.asarray(Image.open(jpegs[index]).convert("RGB")).astype(np.uint16) * 257
            return write_image(folder / f"frame_{index:02d}.tif", pixels, bits=16, overwrite=True)

        with ThreadPoolExecutor(os.cpu_count()) as pool:
            paths = list(pool.map(sixteen, range(frames)))
        def once() -> StageTimer:  # written from the device: done when the file is
            timer = StageTimer(torch.device(device))
            image = fuse(FrameStack(paths), device=device, timer=timer, on_device=True)
            with timer.stage("encode"):
                write_image(folder / "out.tif", image, bits=16, overwrite=True)
            return timer

        runs = 1 if quick else 3
        seconds, timer = _median_time(once, runs)
    return (f"e2e: {frames} 16-bit TIFF (deflate) {width}x{height} to a 16-bit TIFF, aligned",
            f"{seconds:.3f} s (median of {runs}); stages: {timer.report()} (the last run)")


def _stages(stages: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.2f}" for name, value in stages.items() if value)


def whole_commands(device: str, width: int, height: int, frames: int, real: Path, quick: bool,
                   goals: dict[str, float]):
    """Rows 7: the whole command, start-up included, against the floor of ``import torch``
    (and CUDA's initialisation) in a fresh process; the aligned command's and the real
    stack's time over the floor go into ``goals`` (``"command"``, ``"real"``)."""
    import shutil
    import statistics

    runs = 1 if quick else 3
    floor = statistics.median(torch_start_seconds(device) for _ in range(runs))
    yield f"floor: import torch{' + CUDA init' if device.startswith('cuda') else ''}", f"{floor:.3f} s (median of {runs})"
    files = [str(p) for p in stack_files(DEFAULT_CACHE, height, width, frames)]
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        cases = [(f"command: {frames} JPEG {width}x{height} {'aligned' if align else 'no-align'}",
                  [*files, "-o", str(out / "out.jpg")] + ([] if align else ["--no-align"]), "command" if align else None)
                 for align in (True, False)]
        cases.append((f"command: {real.name}, defaults", [str(real), "-o", str(out / "real.jpg")], "real"))
        for label, args, goal in cases:
            command = ["fuse", *args, "--overwrite", "--device", device]
            seconds = statistics.median(time_command(command)[0] for _ in range(runs))
            if goal:
                goals[goal] = seconds - floor
            staged, stages = time_command([*command, "-v"])
            yield label, (f"{seconds:.3f} s = floor + {seconds - floor:.3f} s (median of {runs}); "
                          f"with -v (stages synchronised) {staged:.3f} s, stages waited (busy) s: {_stages(stages)}")
        count = 3 if quick else 12
        root = out / "stacks"
        for i in range(count):
            (root / f"stack_{i:02d}").mkdir(parents=True)
            for frame in sorted(real.iterdir()):
                if frame.is_file():
                    (root / f"stack_{i:02d}" / frame.name).symlink_to(frame.resolve())
        batch = ["batch", str(root), "-o", str(out / "batch"), "--device", device]
        shutil.rmtree(out / "batch", ignore_errors=True)
        seconds, _ = time_command(batch)
        shutil.rmtree(out / "batch")
        staged, stages = time_command([*batch, "-v"])
        yield f"command: batch of {count} x {real.name}", (f"{seconds:.2f} s = floor + {seconds - floor:.2f} s; "
                                             f"{count / seconds * 60:.1f} stacks per minute; with -v {staged:.2f} s"
                                             + (f", stages waited (busy) s: {_stages(stages)}" if stages else ""))


def fuse_tiles(device: str, width: int, height: int, quick: bool) -> str:
    """Row 11: the fuse stage (no alignment) of 32 frames of 24 MP (``--quick``: 4 small
    ones) with a few output tiles for the pyramid, noise and fold kernels and for the
    window's column pass, after a warm-up (each tile compiles anew): milliseconds, each
    result against the default tiles' (the results must not depend on them)."""
    from gpufocus.kernels import _triton_noise, _triton_pyramid, _triton_select

    count, _, run = _pool_fusion(device, width, height, quick, align=False)

    def use(tile: tuple[int, int], squares: tuple[int, int]) -> None:
        _triton_pyramid.TILE = _triton_select.TILE = _triton_noise.TILE = tile
        _triton_select.SQUARES_TILE = squares

    default = (_triton_pyramid.TILE, _triton_select.SQUARES_TILE)
    results, reference = [], None
    try:
        for tile, squares in dict.fromkeys([default, ((4, 64), (8, 64)), ((4, 128), (8, 64)), ((2, 128), (8, 64)),
                                            ((4, 64), (4, 64))]):
            use(tile, squares)
            seconds, image = _median_time(run, 1 if quick else 3)
            reference = image if reference is None else reference
            same = "" if torch.equal(image, reference) else ", DIFFERENT"
            results.append(f"{tile[0]}x{tile[1]} / {squares[0]}x{squares[1]} {seconds * 1e3:.1f} ms{same}")
    finally:
        use(*default)
    return f"{count} x {width}x{height}, tiles / column-pass tiles: " + ", ".join(results)


# Triton keys its cache with a hash of its own files, libtriton's hundreds of MB
# included: computed at a process's first launch, cache or not.
_TRITON_KEY = ("import time; from triton.runtime.cache import triton_key; started = time.perf_counter(); "
               "triton_key(); print(f'{time.perf_counter() - started:.3f}')")


def _noted_command(args: list[str]) -> tuple[float, list[str]]:
    """``run_command``'s seconds, and the notes the command printed (``note: ...``: a
    first run compiling the kernels)."""
    seconds, stderr = run_command(args)
    return seconds, [line for line in stderr.splitlines() if line.startswith("note: ")]


def start_up(device: str, real: Path, quick: bool) -> str:
    """Row 9: what a small stack's command spends beyond its stages: ``gpufocus fuse``
    on ``--real`` with the Triton kernels and with their torch twins
    (``GPUFOCUS_TRITON=0``: no Triton to start, more launches), runs interleaved, and
    how many of them said they compiled kernels (none should: the cache is warm); the
    first run on a new machine (an empty Triton cache: every kernel compiled) and what
    it said; and the slowest imports of one run (``-X importtime``, cumulative)."""
    import statistics
    import subprocess
    import sys

    from command_overhead import _WITH_STDERR, import_times

    runs = 1 if quick else 3
    with tempfile.TemporaryDirectory() as scratch:
        command = ["fuse", str(real), "-o", str(Path(scratch) / "out.jpg"), "--overwrite", "--device", device]
        times: dict[str, list[float]] = {"1": [], "0": []}
        noted = 0
        for _ in range(runs):
            for triton in times:
                with _setting("GPUFOCUS_TRITON", triton):
                    seconds, notes = _noted_command(command)
                times[triton].append(seconds)
                noted += bool(notes)
        with _setting("TRITON_CACHE_DIR", str(Path(scratch) / "triton-cache")):
            first, notes = _noted_command(command)
        imports = import_times(["-c", _WITH_STDERR, *command], top=6)
    key = subprocess.run([sys.executable, "-c", _TRITON_KEY], capture_output=True, text=True)
    said = f"said {' / '.join(notes)!r}" if notes else "said nothing"
    return (f"{real.name}: {statistics.median(times['1']):.3f} s with Triton's kernels, "
            f"{statistics.median(times['0']):.3f} s with their torch twins (median of {runs}; a note in {noted} of "
            f"{2 * runs} runs); {first:.3f} s with an empty Triton cache, {said}; Triton's key to its cache, "
            f"once a process (its library hashed): {key.stdout.strip() or 'failed'} s; slowest imports "
            f"(cumulative s): " + ", ".join(f"{name} {seconds:.3f}" for name, seconds in imports))



#: Issue 22's goals on an H200: (key in ``goals``, what, at most so many seconds).
GOALS = [
    ("library", "{frames} JPEG files of {size} to a JPEG in the library, aligned", 1.5),
    ("align", "the align stage of {frames} still frames of {size}", 0.15),
    ("command", "the whole command on the {frames} files, over the floor", 1.5),
    ("real", "{real}'s command, over the floor", 0.7),
]


def goal_rows(goals: dict[str, float], frames: int, size: str, real: str, quick: bool):
    """The goals' rows, last: each figure against its goal (``--quick``: the sizes are
    not the goals', the verdicts mean nothing)."""
    for key, what, limit in GOALS:
        value = goals.get(key)
        verdict = "not measured (its row failed)" if value is None else (
            f"{value:.3f} s, at most {limit} s: {'met' if value <= limit else 'NOT met'}")
        yield f"goal: {what.format(frames=frames, size=size, real=real)}", verdict + (" (--quick)" if quick else "")


def main(argv: list[str] | None = None) -> list[tuple[str, str]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--real", type=Path, default=None,
                        help="a real stack's folder (petteri_pcb); default: a small synthetic JPEG stack")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--budget", type=float, default=450.0,
                        help="seconds after which the diagnostics not yet begun are skipped (the goals' rows never)")
    args = parser.parse_args(argv)
    device = args.device
    width, height, frames = (320, 240, 4) if args.quick else (6000, 4000, 100)
    rows = [("machine", machine_description())]
    started = time.perf_counter()
    scratch = tempfile.TemporaryDirectory()

    def add(row: tuple[str, str]) -> None:
        rows.append(row)
        print(f"| {row[0]} | {row[1]} |  ({time.perf_counter() - started:.0f} s)", flush=True)

    def step(name, fn):
        """``fn()``'s row (a value), or rows (a list, or a generator: each printed as it
        comes); a check that fails is a row of its own, after those it made."""
        try:
            result = fn()
            if isinstance(result, str):
                add((name, result))
            else:
                for row in result:
                    add(row)
        except Exception as error:  # noqa: BLE001 - a broken check is a row, and the rest still run
            text = str(error).strip()
            add((name, f"ERROR {type(error).__name__}: {text.splitlines()[-1] if text else ''}"))

    step("compile check, sm_90", compile_check)
    bandwidth = None

    def measure_bandwidth() -> str:
        nonlocal bandwidth
        bandwidth = copy_bandwidth(device, args.quick)
        size = "64 MiB" if args.quick else "4 GiB"
        return f"{bandwidth / 1e12:.3f} TB/s (a copy of {size} on {device}, read + written; median of 5 runs of 5)"

    step("copy bandwidth", measure_bandwidth)
    if device.startswith("cuda"):
        step("kernels vs twins", lambda: kernels_match_twins(device, args.quick))
        step("alignment of a chunk on CUDA", lambda: alignment_without_sync(device))
    step("alignment as a CUDA graph", lambda: cuda_graphs(device, args.quick))
    step("JPEG decoder", lambda: jpeg_decoding(device, width, height, frames, args.quick))
    step("JPEG encoder", lambda: jpeg_encoding(device, width, height, args.quick))
    real = args.real
    if real is None:  # a small JPEG stack of our own
        real = Path(scratch.name) / "synthetic_4x320x240"
        _frame_files(make_stack(240, 320, 4, breathing=0.002, shift=1.0, seed=100).frames, real, "jpg")
    step("device vs CPU", lambda: device_matches_cpu(device, real))
    goals: dict[str, float] = {}
    for kind in ("core", "e2e"):
        for align in (True, False):
            step(f"{kind} {align}", lambda: timed(kind, device, width, height, frames, align, args.quick,
                                                  bandwidth=bandwidth, goals=goals))
    step("whole command", lambda: whole_commands(device, width, height, frames, real, args.quick, goals))
    step("goals", lambda: goal_rows(goals, frames, f"{width}x{height}", real.name, args.quick))
    # what helps choose the next change, after what the goals are measured by, while
    # the budget lasts (the call's limit: rows cut off by it would be lost)

    def diagnostic(name, fn):
        spent = time.perf_counter() - started
        step(name, (lambda: f"skipped: {spent:.0f} s of the {args.budget:.0f} s budget gone") if spent > args.budget
             else fn)

    diagnostic("where the time goes", lambda: where_time_goes(device, width, height, args.quick))
    diagnostic("start-up of a small stack's command", lambda: start_up(device, real, args.quick))
    diagnostic("core graphs off", lambda: timed("core", device, width, height, frames, True, args.quick, graphs=False))
    diagnostic("core 8 warps", lambda: timed("core", device, width, height, frames, False, args.quick, warps=8))
    diagnostic("fuse stage by tiles", lambda: fuse_tiles(device, width, height, args.quick))
    diagnostic("16-bit TIFF", lambda: [sixteen_bit_files(device, width, height, args.quick)])
    if device.startswith("cuda"):
        diagnostic("pyr_down[luma] tiles", lambda: luma_tiles(device, args.quick))
    print()
    for name, value in rows:
        print(f"| {name} | {value} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    scratch.cleanup()
    return rows


if __name__ == "__main__":
    main()
