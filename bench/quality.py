"""Quality of every method on the shared stacks, scored by ../shared/tools/score.py.

    python bench/quality.py [--shared ../shared] [--methods max-energy ... max-energy/no-align]

Fuses every stack of <shared>/data/synthetic and <shared>/data/real (a folder's
images, less ground_truth.png, depth.png, focus_index.png) at default settings:
alignment on, reference frame 0; a method written METHOD/no-align runs without it.
Writes the results to bench/out/quality/METHOD/STACK.png with the wall time beside them, and
prints score.py's table: PSNR/SSIM against ground truth where there is one,
Q^AB/F and average gradient everywhere. score.py needs scipy and scikit-image.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

from gpufocus import GpufocusError, fuse, list_frames, write_image

HERE = Path(__file__).resolve().parent
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=HERE.parent.parent / "shared")
    parser.add_argument("--methods", nargs="+", default=["max-energy", "wang-chang", "max-log", "max-energy/no-align"])
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    out = HERE / "out" / "quality"
    stacks = sorted((args.shared / "data" / "synthetic").iterdir()) + sorted((args.shared / "data" / "real").iterdir())
    failures = 0
    for method in args.methods:
        (out / method.replace("/", "_")).mkdir(parents=True, exist_ok=True)
        for stack in filter(Path.is_dir, stacks):
            start = time.perf_counter()
            try:
                rule, _, variant = method.partition("/")
                image = fuse(list_frames([stack]), method=rule, device=args.device, align=variant != "no-align")
            except GpufocusError as error:
                failures += 1
                print(f"FAILED {method} {stack.name}: {error}", file=sys.stderr)
                continue
            seconds = time.perf_counter() - start
            folder = out / method.replace("/", "_")
            write_image(folder / f"{stack.name}.png", image, overwrite=True)
            (folder / f"{stack.name}.time").write_text(f"{seconds:.3f}\n")
    print(f"torch {torch.__version__}; {failures} stacks failed\n")
    score = args.shared / "tools" / "score.py"
    command = [sys.executable, str(score), "--table", str(out)]
    for kind in ("synthetic", "real"):
        command += ["--data-root", str(args.shared / "data" / kind)]
    subprocess.run(command, check=True)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
