from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
import pytest
from conftest import exif_of, write_frames
from PIL import Image, ImageOps

from gpufocus import FrameStack, GpufocusError, list_frames, probe_image, read_image


@pytest.fixture
def rgb(rng) -> np.ndarray:
    return rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)


def test_directories_sort_naturally_and_skip_other_files(tmp_path, rgb):
    for name in ["f10.png", "f2.png", "f1.png", "notes.txt", ".hidden.xmp"]:
        if name.endswith(".png"):
            Image.fromarray(rgb).save(tmp_path / name)
        else:
            (tmp_path / name).write_text("x")
    assert [p.name for p in list_frames([tmp_path])] == ["f1.png", "f2.png", "f10.png"]


def test_explicit_files_keep_their_order(tmp_path, rgb):
    paths = write_frames(tmp_path, np.stack([rgb] * 3))
    assert list_frames([paths[2], paths[0]]) == [paths[2], paths[0]]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: [d / "missing"], "no such file or directory"),
        (lambda d: [d], "no image files"),
        (lambda d: [d / "one.png"], "one.png: a stack needs at least 2 frames, got 1"),
    ],
)
def test_listing_errors(tmp_path, rgb, make, message):
    (tmp_path / "sub").mkdir()
    Image.fromarray(rgb).save(tmp_path / "one.png")
    inputs = make(tmp_path / "sub") if "no image" in message else make(tmp_path)
    with pytest.raises(GpufocusError, match=message):
        FrameStack(inputs)


def test_format_is_found_by_content(tmp_path, rgb):
    path = tmp_path / "really_a_png.jpg"
    Image.fromarray(rgb).save(path, format="PNG")
    assert np.array_equal(read_image(path), rgb)


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGB", "RGBA", "CMYK"])
@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "JPEG", "BMP", "WEBP"])
def test_modes_keep_grey_colour_and_alpha(tmp_path, rgb, mode, fmt):
    image = Image.fromarray(rgb).convert(mode)
    path = tmp_path / f"frame.{fmt.lower()}"
    try:
        image.save(path, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    except (OSError, KeyError, ValueError):
        pytest.skip(f"Pillow cannot write {mode} as {fmt}")
    pixels, info = read_image(path), probe_image(path)
    with Image.open(path) as reopened:
        transparent = reopened.mode in ("PA", "RGBA") or "transparency" in reopened.info
        target = {"L": "L", "LA": "LA"}.get(reopened.mode, "RGBA" if transparent else "RGB")
        expected = np.asarray(reopened.convert(target)).reshape(12, 20, -1)
    assert pixels.dtype == np.uint8 and np.array_equal(pixels, expected)
    assert (info.channels, info.alpha) == (len(target.replace("A", "")), target.endswith("A"))
    # in a stack, grey is grey and alpha comes last
    (chunk,) = FrameStack([path, path]).chunks(2)
    assert np.array_equal(chunk[0], expected)


def test_16bit_grey_keeps_its_precision(tmp_path):
    grey = (np.arange(12 * 20, dtype=np.uint16) * 271).reshape(12, 20)
    path = tmp_path / "grey16.png"
    Image.fromarray(grey).save(path)
    pixels = read_image(path)
    assert pixels.dtype == np.uint16 and probe_image(path).bits == 16
    assert np.array_equal(pixels, grey[:, :, None])


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_colour_keeps_its_precision(tmp_path, rng, suffix):
    colour = rng.integers(0, 65536, (12, 20, 3), dtype=np.uint16)
    path = tmp_path / f"colour16{suffix}"
    if suffix == ".png":
        path.write_bytes(imagecodecs.png_encode(colour))
    else:
        tifffile.imwrite(path, colour, photometric="rgb", compression="lzw", predictor=True)
    pixels = read_image(path)
    assert probe_image(path).bits == 16
    assert np.array_equal(pixels, colour)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, rgb, orientation):
    image = Image.fromarray(rgb)
    exif = image.getexif()
    exif[0x0112] = orientation
    path = tmp_path / "oriented.png"
    image.save(path, exif=exif)
    with Image.open(path) as reopened:
        expected = np.asarray(ImageOps.exif_transpose(reopened).convert("RGB"))
    info = probe_image(path)
    assert (info.height, info.width) == expected.shape[:2]
    assert np.array_equal(read_image(path), expected)
    assert exif_of(info)[0x0112] == 1  # written outputs are upright


def test_broken_files_are_named(tmp_path, rgb):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(GpufocusError, match="notes.jpg: not an image"):
        probe_image(text)
    truncated = tmp_path / "cut.jpg"
    Image.fromarray(np.repeat(np.repeat(rgb, 8, 0), 8, 1)).save(truncated, quality=95)
    truncated.write_bytes(truncated.read_bytes()[:800])
    with pytest.raises(GpufocusError, match="cut.jpg: truncated or corrupt"):
        read_image(truncated)


def test_decompression_bomb_is_refused(tmp_path, rgb, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(rgb).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    with pytest.raises(GpufocusError, match="big.png: too many pixels"):
        probe_image(path)


def test_stack_checks_sizes_and_reads_in_chunks(tmp_path, rng):
    frames = rng.integers(0, 256, (5, 12, 20, 3), dtype=np.uint8)
    paths = write_frames(tmp_path / "ok", frames)
    stack = FrameStack(paths)
    chunks = list(stack.chunks(2))
    assert [c.shape[0] for c in chunks] == [2, 2, 1]
    assert np.array_equal(np.concatenate(chunks), frames)
    made = []  # the buffers the chunks are decoded into (the CUDA path's: pinned)

    def into(shape, dtype):
        made.append(np.full(shape, 7, dtype))
        return made[-1]

    filled = list(stack.chunks(2, into=into))
    assert [(m.shape, m.dtype) for m in made] == [((2, 12, 20, 3), np.uint8)] * 2 + [((1, 12, 20, 3), np.uint8)]
    assert all(f is m for f, m in zip(filled, made)) and np.array_equal(np.concatenate(filled), frames)
    odd = tmp_path / "odd.png"
    Image.fromarray(frames[0][:11]).save(odd)
    with pytest.raises(GpufocusError, match="odd.png: 20x11, where the other frames are 20x12 .* aligned"):
        FrameStack(paths + [odd])


def test_decoding_ahead_is_timed_as_waited_for_and_as_busy(tmp_path, rng, monkeypatch):
    """``decode``: what the reader waited for; its ``busy``: the decoders' own time, in
    their threads, while the reader worked on the chunk before."""
    import time

    from gpufocus.timing import StageTimer

    frames = rng.integers(0, 256, (6, 12, 20, 3), dtype=np.uint8)
    stack = FrameStack(write_frames(tmp_path / "s", frames))
    load = stack._load

    def slow(index):
        time.sleep(0.05)
        return load(index)

    monkeypatch.setattr(stack, "_load", slow)
    timer = StageTimer("cpu")
    got = []
    for chunk in stack.chunks(2, timer=timer):
        got.append(chunk)
        time.sleep(0.2)  # the work on this chunk: the next two frames decode meanwhile
    assert np.array_equal(np.concatenate(got), frames)
    assert timer.busy["decode"] >= 6 * 0.05
    assert timer.seconds["decode"] < timer.busy["decode"] / 2
    assert timer.report().startswith(f"decode {timer.seconds['decode']:.2f} s (busy {timer.busy['decode']:.2f} s)")


def test_mixed_depths_become_16bit(tmp_path, rgb):
    low = tmp_path / "a.png"
    Image.fromarray(rgb).save(low)
    high = tmp_path / "b.png"
    high.write_bytes(imagecodecs.png_encode(rgb.astype(np.uint16) * 257))
    stack = FrameStack([low, high])
    assert stack.bits == 16
    (chunk,) = stack.chunks(2)
    assert chunk.dtype == np.uint16 and np.array_equal(chunk[0], chunk[1])


def test_gpu_decoding_path_with_a_stand_in_decoder(tmp_path, rng, monkeypatch):
    import io

    import torch

    import gpufocus.load
    from gpufocus.load import JpegDecoder

    frames = rng.integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)
    jpegs = write_frames(tmp_path / "jpeg", frames, suffix=".jpg", quality=95)
    pngs = write_frames(tmp_path / "png", frames)

    def decode(data, device):  # stands in for the GPU: the bytes read, decoded by Pillow
        return [torch.from_numpy(np.array(Image.open(io.BytesIO(d.tobytes())))).permute(2, 0, 1) for d in data]

    monkeypatch.setattr(gpufocus.load, "jpeg_decoder", lambda device: JpegDecoder("stand-in", decode))
    cuda = torch.device("cuda")
    assert FrameStack(jpegs).decodable_on(cuda) and not FrameStack(pngs).decodable_on(cuda)
    assert not FrameStack(jpegs).decodable_on(torch.device("cpu"))
    stack = FrameStack(jpegs)
    on_gpu = torch.cat(list(stack.chunks_on(2, torch.device("cpu"))))
    assert torch.equal(on_gpu.permute(0, 2, 3, 1), torch.from_numpy(np.concatenate(list(stack.chunks(2)))))

    def broken(data, device):
        raise RuntimeError("nvjpeg: bad data")

    monkeypatch.setattr(gpufocus.load, "jpeg_decoder", lambda device: JpegDecoder("broken", broken))  # the CPU decodes
    assert torch.equal(torch.cat(list(stack.chunks_on(2, torch.device("cpu")))), on_gpu)


def test_the_gpu_decoder_decodes_the_next_chunk_while_this_one_is_used(tmp_path, rng, monkeypatch):
    """chunks_on decodes in a thread of its own, a chunk ahead: the second chunk is
    decoded while the caller still holds the first."""
    import io
    import threading

    import torch

    import gpufocus.load
    from gpufocus.load import JpegDecoder

    frames = rng.integers(0, 256, (6, 16, 24, 3), dtype=np.uint8)
    jpegs = write_frames(tmp_path, frames, suffix=".jpg", quality=95)
    threads, second = [], threading.Event()

    def decode(data, device):
        threads.append(threading.current_thread().name)
        if len(threads) == 2:
            second.set()
        return [torch.from_numpy(np.array(Image.open(io.BytesIO(d.tobytes())))).permute(2, 0, 1) for d in data]

    monkeypatch.setattr(gpufocus.load, "jpeg_decoder", lambda device: JpegDecoder("stand-in", decode))
    chunks = FrameStack(jpegs).chunks_on(2, torch.device("cpu"))
    first = next(chunks)
    assert second.wait(10)  # decoded while the first is in hand
    rest = list(chunks)
    expected = torch.from_numpy(np.concatenate(list(FrameStack(jpegs).chunks(2)))).permute(0, 3, 1, 2)
    assert torch.equal(torch.cat([first, *rest]), expected)
    assert len(threads) == 3 and all(name.startswith("gpufocus-decode") for name in threads)


def test_prefetch_for_a_gpu_decoder_reads_the_files_and_decodes_none(tmp_path, rng, monkeypatch):
    """A batch opens the next stack ahead: where the GPU decodes it, the files are read
    ahead for that decoder (each once), and the CPU decodes nothing."""
    import io

    import torch

    import gpufocus.load
    from gpufocus.load import JpegDecoder

    frames = rng.integers(0, 256, (5, 16, 24, 3), dtype=np.uint8)
    jpegs = write_frames(tmp_path, frames, suffix=".jpg", quality=95)
    expected = torch.from_numpy(np.concatenate(list(FrameStack(jpegs).chunks(2)))).permute(0, 3, 1, 2)

    def decode(data, device):  # stands in for the GPU
        return [torch.from_numpy(np.array(Image.open(io.BytesIO(d.tobytes())))).permute(2, 0, 1) for d in data]

    monkeypatch.setattr(gpufocus.load, "jpeg_decoder", lambda device: JpegDecoder("stand-in", decode))
    reads, loads = [], []
    read, load = FrameStack._read, FrameStack._load
    monkeypatch.setattr(FrameStack, "_read", lambda self, i: reads.append(i) or read(self, i))
    monkeypatch.setattr(FrameStack, "_load", lambda self, i: loads.append(i) or load(self, i))
    stack = FrameStack(jpegs)
    stack.prefetch(2, torch.device("cuda"))
    stack._prefetcher.shutdown(wait=True)  # the first four read before the decoding starts
    assert sorted(reads) == [0, 1, 2, 3] and loads == []
    assert torch.equal(torch.cat(list(stack.chunks_on(2, torch.device("cpu")))), expected)
    assert sorted(reads) == [0, 1, 2, 3, 4] and loads == []
    stack.prefetch(2, torch.device("cpu"))  # the CPU decodes this stack: frames decoded ahead
    assert torch.equal(torch.from_numpy(np.concatenate(list(stack.chunks(2)))).permute(0, 3, 1, 2), expected)
    assert sorted(loads) == [0, 1, 2, 3, 4] and len(reads) == 5


def test_nvimagecodec_decodes_as_the_cpu_decoders_do(tmp_path, rng):
    """nvImageCodec's CPU_ONLY backend runs the GPU decoding path's code without a GPU:
    the same pixels as Pillow and imagecodecs, bit for bit; a file it cannot decode
    goes to the CPU decoders, which name it."""
    pytest.importorskip("nvidia.nvimgcodec")
    import torch

    from gpufocus.load import jpeg_decoder

    cpu = torch.device("cpu")
    decoder = jpeg_decoder(cpu)
    assert decoder is not None and decoder.name.startswith("nvImageCodec ")
    smooth = np.stack([np.asarray(Image.fromarray(f).resize((96, 64), Image.BICUBIC)) for f in
                       rng.integers(0, 256, (5, 8, 12, 3), dtype=np.uint8)])
    decoded = {}
    for quality, subsampling in ((95, 0), (80, 2)):  # 4:4:4 and 4:2:0
        folder = tmp_path / f"q{quality}"
        folder.mkdir()
        for i, frame in enumerate(smooth):
            Image.fromarray(frame).save(folder / f"f{i}.jpg", quality=quality, subsampling=subsampling)
        stack = FrameStack(folder)
        decoded[quality] = torch.cat(list(stack.chunks_on(2, cpu)))
        assert torch.equal(decoded[quality].permute(0, 2, 3, 1), torch.from_numpy(np.concatenate(list(stack.chunks(2)))))
    broken = tmp_path / "q80" / "f3.jpg"
    broken.write_bytes(broken.read_bytes()[:-600])  # the header whole, the scan cut short
    mixed = FrameStack(sorted((tmp_path / "q95").iterdir())[:3] + [broken])
    chunks = mixed.chunks_on(2, cpu)
    assert torch.equal(next(chunks), decoded[95][:2])
    with pytest.raises(GpufocusError, match="f3.jpg"):
        next(chunks)


def _sized(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    paths = []
    for i, (width, height) in enumerate(sizes):
        paths.append(folder / f"f{i}.png")
        Image.new("RGB", (width, height)).save(paths[-1])
    return paths


def test_a_frame_of_another_size_is_named_against_the_others(tmp_path):
    paths = _sized(tmp_path, [(48, 40), (20, 20), (48, 40), (48, 40)])
    with pytest.raises(GpufocusError) as caught:
        FrameStack(paths)
    assert str(caught.value) == (f"{paths[1]}: 20x20, where the other frames are 48x40 (f0.png, ...); "
                                 "frames must be aligned to the same size")
    # the odd one may come first
    paths = _sized(tmp_path, [(20, 20), (48, 40), (48, 40)])
    with pytest.raises(GpufocusError, match=r"f0.png: 20x20, where the other frames are 48x40 \(f1.png, ...\)"):
        FrameStack(paths)
    # two frames: no majority; the one that differs from the first is named first, both sizes given
    paths = _sized(tmp_path, [(20, 20), (48, 40)])
    with pytest.raises(GpufocusError, match=r"f1.png: 48x40, and f0.png \(the first frame\) is 20x20; frames of diff"):
        FrameStack(paths)


def test_frames_a_gpu_fuses_are_decoded_on_every_core(tmp_path, rng, monkeypatch):
    """Where a GPU fuses and the host decodes (PNG, TIFF, 16 bits), the host's cores are
    free: as many decoders as torch has threads, not the CPU path's two."""
    import torch

    from gpufocus import engine
    from gpufocus.timing import NO_TIMER

    frames = rng.integers(0, 256, (5, 12, 20, 3), dtype=np.uint8)
    stack = FrameStack(write_frames(tmp_path / "s", frames))
    chunks, asked = stack.chunks, []

    def counted(chunk, workers=2, *args, **kwargs):
        asked.append(workers)
        return chunks(chunk, workers, *args, **kwargs)

    monkeypatch.setattr(stack, "chunks", counted)
    monkeypatch.setattr(stack, "decodable_on", lambda device: False)
    monkeypatch.setattr(engine, "_pinned", np.empty)  # no page-locked memory without CUDA
    monkeypatch.setattr(engine, "_upload_ahead", lambda arrays, device: (torch.from_numpy(a) for a in arrays))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 6)
    passes = [("fusing", lambda chunk, timer: chunk)]
    got = list(engine._passes(stack, 2, passes, len(stack), None, NO_TIMER, torch.device("cuda")))
    assert asked == [6] and np.array_equal(torch.cat(got).numpy(), frames)
    got = list(engine._passes(stack, 2, passes, len(stack), None, NO_TIMER, torch.device("cpu")))
    assert asked == [6, 2] and np.array_equal(np.concatenate(got), frames)


def test_a_prefetched_stack_has_its_first_chunk_decoded_on_the_device(tmp_path, rng, monkeypatch):
    """A batch opens the next stack while it fuses this one: where the GPU decodes it,
    ``prefetch`` reads the first chunk's files and decodes them there, in its own thread;
    ``chunks_on`` takes that chunk and decodes the rest itself."""
    import io
    import threading

    import torch

    import gpufocus.load
    from gpufocus.load import JpegDecoder

    frames = rng.integers(0, 256, (5, 16, 24, 3), dtype=np.uint8)
    jpegs = write_frames(tmp_path, frames, suffix=".jpg", quality=95)
    decoded_by = []

    def decode(data, device):
        decoded_by.append((threading.current_thread().name, len(data)))
        return [torch.from_numpy(np.array(Image.open(io.BytesIO(d.tobytes())))).permute(2, 0, 1) for d in data]

    monkeypatch.setattr(gpufocus.load, "jpeg_decoder", lambda device: JpegDecoder("stand-in", decode))
    stack = FrameStack(jpegs)
    monkeypatch.setattr(stack, "decodable_on", lambda device: True)
    cpu = torch.device("cpu")
    stack.prefetch(2, cpu)
    stack._early_chunk[2].result()
    assert decoded_by == [("gpufocus-prefetch_0", 2)] and len(stack._early) == 4
    expected = torch.from_numpy(np.concatenate(list(FrameStack(jpegs).chunks(2)))).permute(0, 3, 1, 2)
    assert torch.equal(torch.cat(list(stack.chunks_on(2, cpu))), expected)
    assert [name.split("_")[0] for name, _ in decoded_by] == ["gpufocus-prefetch", "gpufocus-decode", "gpufocus-decode"]
    assert stack._early_chunk is None  # taken, and let go
    decoded_by.clear()
    stack.prefetch(3, cpu)  # planned for chunks of 3 (more memory free then); the engine reads 2 at a time
    got = list(stack.chunks_on(2, cpu))
    assert [len(c) for c in got] == [2, 1, 2] and torch.equal(torch.cat(got), expected)
    assert [(name.split("_")[0], n) for name, n in decoded_by] == [("gpufocus-prefetch", 3), ("gpufocus-decode", 2)]

    def short_of_memory_ahead(data, device):  # the stack before held the GPU's memory
        if threading.current_thread().name.startswith("gpufocus-prefetch"):
            raise MemoryError("out of memory")
        return decode(data, device)

    monkeypatch.setattr(gpufocus.load, "jpeg_decoder", lambda device: JpegDecoder("stand-in", short_of_memory_ahead))
    decoded_by.clear()
    stack.prefetch(2, cpu)
    assert torch.equal(torch.cat(list(stack.chunks_on(2, cpu))), expected)  # decoded again, in its turn
    assert [name.split("_")[0] for name, _ in decoded_by] == ["gpufocus-decode"] * 3


def test_the_device_decoder_is_called_by_one_thread_at_a_time(monkeypatch):
    import threading
    import time

    import torch

    import gpufocus.load
    from gpufocus.load import JpegDecoder
    from gpufocus.nvcodec import CODEC_CALLS

    inside, most = [], []

    def decode(data, device):
        inside.append(1)
        most.append(len(inside))
        time.sleep(0.02)
        inside.pop()
        return []

    monkeypatch.setattr(gpufocus.load, "_nvimgcodec", lambda device: JpegDecoder("stand-in", decode))
    gpufocus.load.jpeg_decoder.cache_clear()
    try:
        decoder = gpufocus.load.jpeg_decoder(torch.device("cpu"))
        threads = [threading.Thread(target=decoder.decode, args=([], None)) for _ in range(4)]
        with CODEC_CALLS:  # as a CUDA graph's capture holds it: no decoding meanwhile
            for thread in threads:
                thread.start()
            time.sleep(0.05)
            assert most == []
        for thread in threads:
            thread.join()
    finally:
        gpufocus.load.jpeg_decoder.cache_clear()
    assert decoder.name == "stand-in" and most == [1, 1, 1, 1]
