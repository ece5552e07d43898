"""Mutated image files: the error contract's fuzz cases (tests/test_fuzz.py, bench/fuzz_cli.py).

``seed_files`` makes small valid files of every input format; ``mutate`` damages one
the way files get damaged or forged: flipped bits, truncation, a zeroed or random
run of bytes, and format-aware corruption of the structure a decoder trusts (PNG
chunk lengths and types, JPEG segment lengths, TIFF IFD entries, RIFF sizes).
Everything comes from a ``random.Random``, so a seed gives the same cases.
"""

from __future__ import annotations

import io
import random
import struct

import numpy as np
from PIL import Image

__all__ = ["MUTATIONS", "seed_files", "mutate", "cases"]


def _texture(height: int, width: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([np.sin(x / 3 + c) * np.cos(y / 4 - c) for c in range(3)], axis=-1)
    return ((base * 0.4 + 0.5 + rng.normal(0, 0.05, base.shape)).clip(0, 1) * 255).astype(np.uint8)


def _encoded(pixels: np.ndarray, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt, **options)
    return out.getvalue()


def seed_files(height: int = 40, width: int = 48, seed: int = 0) -> dict[str, bytes]:
    """Valid files of one size, named by kind: JPEG with EXIF and a thumbnail, PNG 8 and
    16 bit, TIFF deflate 8 bit and 16 bit (the project's own writer), a 3-page 16-bit
    grey OME-TIFF z-stack (zstd), a DNG (Bayer mosaic), WebP."""
    from gpufocus.write import write_image

    pixels = _texture(height, width, seed)
    exif = Image.Exif()
    exif[0x010F] = "fuzz camera"
    exif[0x0112] = 1
    thumbnail = _encoded(pixels[::4, ::4], "JPEG")
    jpeg = _encoded(pixels, "JPEG", quality=90, exif=exif.tobytes())
    files = {
        "jpeg": jpeg,
        "jpeg_thumb": _with_thumbnail(_encoded(pixels, "JPEG", quality=90), thumbnail),
        "png": _encoded(pixels, "PNG"),
        "tiff": _encoded(pixels, "TIFF", compression="tiff_adobe_deflate"),
        "webp": _encoded(pixels, "WEBP", quality=90),
    }
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:  # 16 bits through the project's writers
        for kind, suffix in (("png16", ".png"), ("tiff16", ".tif")):
            path = Path(folder) / f"f{suffix}"
            write_image(path, pixels.astype(np.uint16) * 257, bits=16, exif=exif.tobytes())
            files[kind] = path.read_bytes()
        import tifffile
        from rawfiles import write_dng

        pages = np.stack([pixels[:, :, c].astype(np.uint16) * 257 for c in range(3)])
        tifffile.imwrite(Path(folder) / "z.ome.tif", pages, metadata={"axes": "ZYX"}, compression="zstd")
        files["zstack"] = (Path(folder) / "z.ome.tif").read_bytes()
        mosaic = pixels[:, :, 1].astype(np.uint16) * 8 + 64
        files["dng"] = write_dng(Path(folder) / "f.dng", mosaic).read_bytes()
    return files


def _with_thumbnail(jpeg: bytes, thumbnail: bytes) -> bytes:
    """``jpeg`` with an APP1 EXIF block that carries ``thumbnail`` (IFD1 JPEGInterchangeFormat)."""
    ifd0 = struct.pack("<H", 1) + struct.pack("<HHII", 0x010F, 2, 4, 0x00616D63) + struct.pack("<I", 26)
    ifd1_entries = [(0x0103, 3, 1, 6), (0x0201, 4, 1, 26 + 2 + 3 * 12 + 4), (0x0202, 4, 1, len(thumbnail))]
    ifd1 = struct.pack("<H", 3) + b"".join(struct.pack("<HHII", *e) for e in ifd1_entries) + struct.pack("<I", 0)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd0 + ifd1 + thumbnail
    app1 = b"Exif\x00\x00" + tiff
    segment = b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1
    return jpeg[:2] + segment + jpeg[2:]


# -- mutations: each takes (data, rng) and returns damaged bytes ------------------------------


def _flip_bits(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 16)):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out)


def _truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def _truncate_header(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(min(len(data), 64))]


def _zero_run(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    start = rng.randrange(len(out))
    out[start : start + rng.randint(1, 64)] = bytes(min(64, len(out) - start))
    return bytes(out)


def _random_header_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(min(len(out), 128))
        out[i] = rng.randrange(256)
    return bytes(out)


def _insert_bytes(data: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(data))
    return data[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 32))) + data[i:]


_LENGTHS = (0, 1, 2, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)


def _bad_length(rng: random.Random, limit: int) -> int:
    return rng.choice(_LENGTHS) if rng.random() < 0.6 else rng.randrange(limit)


def _png_chunks(data: bytes) -> list[int]:
    """Offsets of the PNG chunks' length fields."""
    offsets, at = [], 8
    while at + 8 <= len(data):
        offsets.append(at)
        at += 12 + struct.unpack(">I", data[at : at + 4])[0]
    return offsets


def _corrupt_structure(data: bytes, rng: random.Random) -> bytes:
    """Format-aware: damage the lengths, counts and offsets a decoder follows."""
    out = bytearray(data)
    if data.startswith(b"\x89PNG"):
        chunks = _png_chunks(data)
        at = rng.choice(chunks)
        if rng.random() < 0.7:
            out[at : at + 4] = struct.pack(">I", _bad_length(rng, 1 << 20) & 0xFFFFFFFF)
        else:  # a chunk type the decoder does not know, or a critical one renamed
            out[at + 4 : at + 8] = rng.choice([b"IHDR", b"IDAT", b"IEND", b"zzzz", b"PLTE", bytes(4)])
    elif data.startswith(b"\xff\xd8"):
        markers = [i for i in range(2, min(len(data) - 3, 4096)) if data[i] == 0xFF and 0xC0 <= data[i + 1] <= 0xFE]
        at = rng.choice(markers) if markers else 2
        out[at + 2 : at + 4] = struct.pack(">H", _bad_length(rng, 1 << 16) & 0xFFFF)
    elif data[:4] in (b"II*\x00", b"MM\x00*"):
        order = "<" if data[:2] == b"II" else ">"
        ifd = struct.unpack(order + "I", data[4:8])[0]
        if ifd + 2 <= len(data) and rng.random() < 0.8:
            count = struct.unpack(order + "H", data[ifd : ifd + 2])[0]
            entry = ifd + 2 + 12 * rng.randrange(max(count, 1))
            field = rng.choice([2, 4, 8])  # type, count, value/offset
            size = 2 if field == 2 else 4
            value = _bad_length(rng, 1 << 16) & (0xFFFF if size == 2 else 0xFFFFFFFF)
            out[entry + field : entry + field + size] = struct.pack(order + ("H" if size == 2 else "I"), value)
        else:
            out[4:8] = struct.pack(order + "I", _bad_length(rng, len(data) * 2) & 0xFFFFFFFF)
    elif data.startswith(b"RIFF"):
        at = rng.choice([4, 16])  # the RIFF size, the first chunk's size
        out[at : at + 4] = struct.pack("<I", _bad_length(rng, len(data) * 2) & 0xFFFFFFFF)
    else:
        return _random_header_bytes(data, rng)
    return bytes(out)


#: Name -> mutation; ``cases`` draws from all of them evenly.
MUTATIONS = {
    "flip_bits": _flip_bits,
    "truncate": _truncate,
    "truncate_header": _truncate_header,
    "zero_run": _zero_run,
    "random_header_bytes": _random_header_bytes,
    "insert_bytes": _insert_bytes,
    "corrupt_structure": _corrupt_structure,
    "corrupt_structure_twice": lambda data, rng: _corrupt_structure(_corrupt_structure(data, rng), rng),
}

_SUFFIX = {"jpeg": ".jpg", "jpeg_thumb": ".jpg", "png": ".png", "png16": ".png", "tiff": ".tif", "tiff16": ".tif",
           "zstack": ".ome.tif", "dng": ".dng", "webp": ".webp"}


def mutate(data: bytes, name: str, rng: random.Random) -> bytes:
    """``data`` damaged by the mutation called ``name``, never left unchanged."""
    damaged = MUTATIONS[name](data, rng)
    return damaged if damaged != data else data[:-1]


def cases(count: int, seed: int = 0, files: dict[str, bytes] | None = None):
    """``count`` cases ``(kind, suffix, mutation, bytes)``, kinds and mutations in turn."""
    rng = random.Random(seed)
    files = files or seed_files()
    kinds, names = sorted(files), sorted(MUTATIONS)
    for n in range(count):
        kind, name = kinds[n % len(kinds)], names[(n // len(kinds)) % len(names)]
        yield kind, _SUFFIX[kind], name, mutate(files[kind], name, rng)
