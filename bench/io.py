"""Read and write time of one 24-megapixel 16-bit RGB image (6000x4000), TIFF and PNG;
PNG codec settings; reading a z-stack in one TIFF.

    python bench/io.py [--repeat 5] [--source IMAGE] [--codecs] [--zstack]

The image is a real photograph (``--source``, by default a frame of petteri_pcb in
../shared/data/real) scaled up to 6000x4000, in 16 bits with sensor-like noise of
about 1 % of full scale, so that it compresses as a raw converter's output does. Each
case is run once to warm up, then ``--repeat`` times; the medians are printed. Only
``write_image`` and ``read_image`` are used, so the same script measures an older
checkout (``PYTHONPATH=that/checkout python bench/io.py``) for a before/after.

``--codecs``: the same image through imagecodecs' PNG encoder with libpng's default
settings and with the fast ones gpufocus uses, and through OpenCV where it can be
imported (it is not a dependency: put it on PYTHONPATH for the comparison).
``--zstack``: 300 and 3000 pages of 64x64 16-bit grey in one TIFF, read as a stack
(``FrameStack.chunks``: one open file per decoding thread) and page by page with the
file opened for each page (``read_image``), ms per page.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from gpufocus import __version__, read_image, write_image
from gpufocus.benchmark import machine_description

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parent.parent / "shared" / "data" / "real" / "petteri_pcb"


def test_image(source: Path) -> np.ndarray:
    if source.is_dir():
        source = sorted(source.iterdir())[0]
    with Image.open(source) as image:
        photo = np.asarray(image.convert("RGB").resize((6000, 4000), Image.Resampling.BICUBIC))
    noise = np.random.default_rng(0).normal(0, 600, photo.shape)
    return (photo.astype(np.float64) * 257 + noise).clip(0, 65535).round().astype(np.uint16)


def median_time(work, repeat: int) -> float:
    work()  # warm-up: imports, thread pools, the page cache
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--codecs", action="store_true", help="compare PNG codec settings (and OpenCV)")
    parser.add_argument("--zstack", action="store_true", help="time reading a z-stack in one TIFF")
    args = parser.parse_args()
    if args.zstack:
        zstack_table(args.repeat)
        return
    pixels = test_image(args.source)
    compressions = ["deflate", "lzw", "zstd"] if "compression" in inspect.signature(write_image).parameters else [None]
    print(f"gpufocus {__version__} from {Path(inspect.getfile(write_image)).parent}")
    print(f"machine: {machine_description()}")
    print(f"image: 6000x4000 16-bit RGB from {args.source.name}, median of {args.repeat} after a warm-up\n")
    print("| format | write s | read s | MB |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        cases = [(f"TIFF {c or 'deflate'}", ".tif", {"compression": c} if c else {}) for c in compressions]
        cases.append(("PNG", ".png", {}))
        for name, suffix, options in cases:
            path = Path(folder) / f"image{suffix}"
            write = median_time(lambda: write_image(path, pixels, bits=16, overwrite=True, **options), args.repeat)
            back = read_image(path)
            assert np.array_equal(back[..., :3], pixels), f"{name}: the round trip changed the pixels"
            read = median_time(lambda: read_image(path), args.repeat)
            print(f"| {name} | {write:.2f} | {read:.2f} | {path.stat().st_size / 1e6:.0f} |")
    if args.codecs:
        codecs_table(pixels, args.repeat)


def codecs_table(pixels: np.ndarray, repeat: int) -> None:
    import imagecodecs

    cases = {
        "imagecodecs, libpng defaults": (lambda: imagecodecs.png_encode(pixels), imagecodecs.png_decode),
        "imagecodecs, level 1, RLE, Sub filter (gpufocus)": (
            lambda: imagecodecs.png_encode(pixels, level=1, strategy=3, filter=16), imagecodecs.png_decode,
        ),
    }
    try:
        import cv2

        bgr = np.ascontiguousarray(pixels[:, :, ::-1])
        cases[f"OpenCV {cv2.__version__}"] = (
            lambda: cv2.imencode(".png", bgr)[1].tobytes(),
            lambda data: cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED),
        )
    except ImportError:
        pass
    print("\n| PNG codec | encode s | decode s | MB |\n|---|---|---|---|")
    for name, (encode, decode) in cases.items():
        data = encode()
        seconds = median_time(encode, repeat)
        back = median_time(lambda: decode(data), repeat)
        print(f"| {name} | {seconds:.2f} | {back:.2f} | {len(data) / 1e6:.0f} |")


def zstack_table(repeat: int) -> None:
    import tifffile

    from gpufocus import FrameStack

    print("| pages | as a stack, ms a page | file opened per page, ms a page |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        for pages in (300, 3000):
            path = Path(folder) / f"z{pages}.tif"
            tifffile.imwrite(path, np.zeros((pages, 64, 64), np.uint16), metadata=None)  # plain pages
            stack = FrameStack(path)
            whole = median_time(lambda: sum(len(chunk) for chunk in stack.chunks(8)), repeat)
            info, sample = stack.infos[0], range(0, pages, pages // 20)
            alone = median_time(lambda: [read_image(path, info, i) for i in sample], repeat)
            print(f"| {pages} | {whole / pages * 1000:.2f} | {alone / len(sample) * 1000:.2f} |")


if __name__ == "__main__":
    main()
