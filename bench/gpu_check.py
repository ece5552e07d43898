"""One call on a GPU machine: check the CUDA path against the CPU, then time it.

    python bench/gpu_check.py [--quick]

Prepared for a lent H100 (torch with CUDA, triton; kornia and typer carried as
wheels). Prints, last, one short table:
1. Triton kernels against their torch twins on CUDA (bit for bit), and the CUDA
   fusion against the CPU fusion of the same stack (largest difference, in 1/255).
2. Core throughput on 24 MP frames (6000x4000), float16 and float32, 30 and 100
   frames, no alignment, and peak GPU memory (issue targets: >= 10 Gpix-frames/s,
   <= 4 GB at any N).
3. End to end: 100 JPEG files of 24 MP to a written JPEG (target <= 2.0 s).
--quick uses 6 MP frames and 10/30 frames, for a dry run.
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


def triton_matches_torch() -> bool:
    from gpufocus.kernels import select
    from gpufocus.kernels.pyramid_level import laplacian_level

    g = torch.rand(2, 3, 301, 457, device="cuda")
    fused = laplacian_level(g)
    os.environ["GPUFOCUS_TRITON"] = "0"
    plain = laplacian_level(g)
    measured, values = torch.rand(3, 1, 301, 457, device="cuda"), torch.rand(3, 3, 301, 457, device="cuda")
    twin = select.energy_fold(None, measured, values, (0.25, 0.5, 0.25), None, 0)
    del os.environ["GPUFOCUS_TRITON"]
    kernel = select.energy_fold(None, measured, values, (0.25, 0.5, 0.25), None, 0)
    same = all(torch.equal(a, b) for a, b in zip(fused, plain))
    return same and torch.equal(kernel.value, twin.value) and torch.equal(kernel.score, twin.score)


def cuda_matches_cpu() -> float:
    stack = make_stack(384, 512, 6, breathing=0.003, shift=1.0, max_blur=6.0, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cpu = fuse(stack.frames, device="cpu")
        cuda = fuse(stack.frames, device="cuda")
    return float((cpu - cuda).abs().max()) * 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    width, height = (3000, 2000) if args.quick else (6000, 4000)
    counts = (10, 30) if args.quick else (30, 100)
    rows = [("machine", machine_description())]
    rows.append(("triton == torch twin on CUDA", str(triton_matches_torch())))
    rows.append(("max |CUDA - CPU| (1/255 units)", f"{cuda_matches_cpu():.3f}"))
    for dtype in ("float16", "float32"):
        for frames in counts:
            r = run_case(Case("core", "cuda", width, height, frames, dtype, None, "max-energy", False), repeat=3)
            rows.append((f"core {width}x{height} x{frames} {dtype}",
                         f"{r['mpix_frames_per_s'] / 1000:.2f} Gpix-frames/s, peak {r['peak_cuda_bytes'] / 2**30:.2f} GiB"))
    files = stack_files("/tmp/gpufocus-gpu-check", height, width, counts[-1])
    start = time.perf_counter()
    image = fuse(files, device="cuda", align=False)
    from gpufocus.write import write_image

    write_image("/tmp/gpufocus-gpu-check/out.jpg", image, overwrite=True)
    rows.append((f"e2e {len(files)} JPEG files {width}x{height}", f"{time.perf_counter() - start:.2f} s (first run, no warm-up)"))
    print()
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
