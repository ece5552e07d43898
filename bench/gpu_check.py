"""One call on a GPU machine: check the CUDA path against the CPU, then time what users run.

    python bench/gpu_check.py [--quick] [--device cuda]

Prepared for a lent H100 (torch with CUDA, triton; kornia and typer carried as
wheels). Prints, last, one short table:
1. Triton kernels against their torch twins on CUDA (bit for bit), and the CUDA
   fusion (defaults: alignment on) against the CPU fusion of the same moving stack
   (largest difference, in 1/255).
2. Alignment without a host sync: a chunk's estimation, checks, decisions and exposure
   gains under ``torch.cuda.set_sync_debug_mode("error")``.
3. Core throughput on 24 MP frames (6000x4000), float16 and float32, 30 and 100 frames,
   with the defaults (alignment on) and without alignment, and peak GPU memory.
4. End to end: 100 JPEG files of 24 MP to a written JPEG, defaults and --no-align.
--quick uses 6 MP frames and 10/30 frames; ``--device cpu --quick`` is a dry run of the
script on a machine without CUDA (the CUDA-only checks are skipped).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import torch

from gpufocus import fuse
from gpufocus.benchmark import Case, machine_description, run_case, stack_files
from gpufocus.synth import make_stack


def triton_matches_torch(device: str) -> str:
    from gpufocus.kernels import laplacian_level, select

    g = torch.rand(2, 3, 301, 457, device=device)
    fused = laplacian_level(g)
    os.environ["GPUFOCUS_TRITON"] = "0"
    plain = laplacian_level(g)
    measured, values = torch.rand(3, 1, 301, 457, device=device), torch.rand(3, 3, 301, 457, device=device)
    twin = select.energy_fold(None, measured, values, (0.25, 0.5, 0.25), None, 0)
    del os.environ["GPUFOCUS_TRITON"]
    kernel = select.energy_fold(None, measured, values, (0.25, 0.5, 0.25), None, 0)
    same = all(torch.equal(a, b) for a, b in zip(fused, plain))
    return str(same and torch.equal(kernel.value, twin.value) and torch.equal(kernel.score, twin.score))


def device_matches_cpu(device: str) -> str:
    stack = make_stack(384, 512, 6, breathing=0.003, shift=1.0, max_blur=6.0, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cpu = fuse(stack.frames, device="cpu")
        other = fuse(stack.frames, device=device)
    return f"{float((cpu - other.cpu()).abs().max()) * 255:.3f}"


def alignment_without_sync(device: str) -> str:
    """A chunk's whole estimation under the sync guard (the one read-back comes after)."""
    from gpufocus.align import StackAligner, _gains, _low
    from gpufocus.options import AlignOptions

    frames = make_stack(768, 1024, 4, breathing=0.003, shift=1.0, max_blur=6.0, seed=2).frames.to(device)
    aligner = StackAligner(AlignOptions())
    aligner._chain_on_device(frames, 0)  # warm-up: kernels compile, caches fill
    aligner = StackAligner(AlignOptions())
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        chain, _, _, _ = aligner._chain_on_device(frames, 0)
        _gains(_low(frames), _low(frames[:1])[0], chain, tuple(frames.shape[-2:]))
    except RuntimeError as error:
        return f"synchronised: {str(error).splitlines()[0]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return "no host sync"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = args.device
    width, height = (3000, 2000) if args.quick else (6000, 4000)
    counts = (10, 30) if args.quick else (30, 100)
    rows = [("machine", machine_description())]
    if device.startswith("cuda"):
        rows.append(("triton == torch twin on CUDA", triton_matches_torch(device)))
        rows.append(("alignment of a chunk on CUDA", alignment_without_sync(device)))
    rows.append((f"max |{device} - CPU|, defaults (1/255 units)", device_matches_cpu(device)))
    for dtype in ("float16", "float32"):
        for frames in counts:
            for align in (True, False):
                r = run_case(Case("core", device, width, height, frames, dtype, None, "max-energy", align), repeat=3)
                peak = r["peak_cuda_bytes"]
                rows.append(
                    (
                        f"core {width}x{height} x{frames} {dtype} {'defaults (aligned)' if align else 'no-align'}",
                        f"{r['mpix_frames_per_s'] / 1000:.2f} Gpix-frames/s, align {r['stages']['align'] or 0:.2f} s, "
                        f"fuse {r['stages']['fuse']:.2f} s"
                        + (f", peak {peak / 2**30:.2f} GiB" if peak else ""),
                    )
                )
    files = stack_files("/tmp/gpufocus-gpu-check", height, width, counts[-1])
    from gpufocus.write import write_image

    for align in (True, False):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = fuse(files, device=device, align=align)
        write_image("/tmp/gpufocus-gpu-check/out.jpg", image, overwrite=True)
        label = "defaults (aligned)" if align else "no-align"
        rows.append((f"e2e {len(files)} JPEG files {width}x{height} {label}",
                     f"{time.perf_counter() - start:.2f} s (first run of each, no warm-up)"))
    print()
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
