"""Reading every input kind: multi-page and OME-TIFF z-stacks, microscope channels,
alpha masks, camera RAW (DNG), and telling the project's own outputs from frames."""

import imagecodecs
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from rawfiles import write_dng
from typer.testing import CliRunner

import gpufocus.decode
from gpufocus import FrameStack, GpufocusError, fuse, probe_image, read_image, write_image
from gpufocus.cli import app
from gpufocus.errors import GpufocusWarning
from gpufocus.synth import make_stack


def _grey16(frames: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) floats to (N, H, W) uint16 luminance-ish grey."""
    return (frames.mean(dim=1) * 65535).round().to(torch.int32).numpy().astype(np.uint16)


@pytest.fixture(scope="module")
def zstack():
    """30 frames of 16-bit grey, 48x64, each sharp somewhere else."""
    return _grey16(make_stack(48, 64, 30, max_blur=3.0, seed=11).frames)


def test_ome_tiff_zstack_fuses_as_its_frames_do_as_files(tmp_path, zstack):
    ome = tmp_path / "z.ome.tif"
    tifffile.imwrite(ome, zstack, metadata={"axes": "ZYX"}, compression="zlib")
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(zstack):
        (folder / f"z{i:02d}.png").write_bytes(imagecodecs.png_encode(frame))
    stack = FrameStack(ome)
    assert (len(stack), stack.channels, stack.bits, stack.colour) == (30, 1, 16, False)
    assert stack.names[:2] == ["z.ome.tif[0]", "z.ome.tif[1]"] and stack.stems[:2] == ["z_000", "z_001"]
    chunks = np.concatenate(list(stack.chunks(7)))  # page by page, 7 at a time
    assert chunks.shape == (30, 48, 64, 1) and np.array_equal(chunks[..., 0], zstack)
    from_pages = fuse(ome, device="cpu", chunk=4)
    from_files = fuse(folder, device="cpu", chunk=9)
    assert from_pages.shape == (1, 48, 64) and torch.equal(from_pages, from_files)
    # and through the command line, 16 bits in, 16-bit grey TIFF out
    out_pages, out_files = tmp_path / "pages.tif", tmp_path / "files.tif"
    assert CliRunner().invoke(app, ["fuse", str(ome), "-o", str(out_pages), "-q"]).exit_code == 0
    assert CliRunner().invoke(app, ["fuse", str(folder), "-o", str(out_files), "-q"]).exit_code == 0
    written = tifffile.imread(out_pages)
    assert written.dtype == np.uint16 and written.shape == (48, 64)
    assert np.array_equal(written, tifffile.imread(out_files))
    # gpufocus align names a z-stack's frames after the file and the page
    assert CliRunner().invoke(app, ["align", str(ome), "-o", str(tmp_path / "aligned"), "-q"]).exit_code == 0
    assert sorted(p.name for p in (tmp_path / "aligned").iterdir()) == [f"z_{i:03d}.png" for i in range(30)]


def test_a_zstack_file_is_opened_once_per_reading_thread(tmp_path, zstack, monkeypatch):
    # Opening a TIFF parses its page directories: per frame, a z-stack of N pages
    # would cost O(N) each, O(N^2) in all.
    path = tmp_path / "z.tif"
    tifffile.imwrite(path, zstack, metadata=None)  # plain pages: no metadata to shortcut the parsing
    opened = []

    class Counting(tifffile.TiffFile):
        def __init__(self, *args, **kwargs):
            opened.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tifffile, "TiffFile", Counting)
    stack = FrameStack(path)
    assert np.array_equal(np.concatenate(list(stack.chunks(4, workers=2)))[..., 0], zstack)
    assert len(opened) <= 1 + 2  # the probe, then one per decoding thread
    assert np.array_equal(np.concatenate(list(stack.chunks(30)))[..., 0], zstack)  # a second pass opens again


@pytest.mark.parametrize("layout", ["imagej", "ome", "pages"])
def test_channels_are_fused_each_on_its_own(tmp_path, zstack, layout):
    # Two microscope channels: the fusion of the 2-channel stack is, channel by
    # channel, the fusion of each channel as a grey stack of its own.
    other = np.ascontiguousarray(zstack[::-1, ::-1, :])  # another structure, focused elsewhere
    both = np.stack([zstack[:8], other[:8]], axis=1)  # Z C Y X
    path = tmp_path / "zc.tif"
    if layout == "imagej":
        tifffile.imwrite(path, both, imagej=True, metadata={"axes": "ZCYX"})
    elif layout == "ome":
        tifffile.imwrite(path, both, metadata={"axes": "ZCYX"})
    else:  # channels as samples of each page
        tifffile.imwrite(path, np.moveaxis(both, 1, -1), photometric="minisblack", planarconfig="contig")
    stack = FrameStack(path)
    assert (len(stack), stack.channels, stack.colour) == (8, 2, False)
    fused = fuse(stack, device="cpu", align=False)
    alone = [fuse(torch.from_numpy(c[:, None].astype(np.int32)).float() / 65535, device="cpu", align=False)
             for c in (zstack[:8], other[:8])]
    assert torch.allclose(fused, torch.cat(alone), atol=1e-6)
    out = tmp_path / "out.tif"
    assert CliRunner().invoke(app, ["fuse", str(path), "-o", str(out), "-q", "--no-align"]).exit_code == 0
    assert tifffile.imread(out).shape == (48, 64, 2)
    result = CliRunner().invoke(app, ["fuse", str(path), "-o", str(tmp_path / "out.png"), "-q"])
    assert result.exit_code == 1 and "write .tif for an image of 2 channels" in result.stderr


def test_tiff_layouts_that_are_not_one_stack_are_refused(tmp_path):
    path = tmp_path / "tz.ome.tif"
    tifffile.imwrite(path, np.zeros((2, 3, 16, 16), np.uint16), metadata={"axes": "TZYX"})
    with pytest.raises(GpufocusError, match="tz.ome.tif: .* more than one axis to stack along .Z, T."):
        probe_image(path)
    floats = tmp_path / "float.tif"
    tifffile.imwrite(floats, np.zeros((16, 16), np.float32))
    with pytest.raises(GpufocusError, match="float.tif: float32 samples are not supported"):
        probe_image(floats)


def _transparent_border_stack(rng, garbage_seed: int):
    """Three RGBA frames; each is transparent over another third of the picture, and
    carries loud noise there (what a warp leaves in a masked border)."""
    sharp = make_stack(96, 144, 3, max_blur=3.0, seed=5).frames.permute(0, 2, 3, 1).numpy()
    frames = (sharp * 255).round().astype(np.uint8)
    noise = np.random.default_rng(garbage_seed).integers(0, 256, frames.shape, dtype=np.uint8)
    alpha = np.full(frames.shape[:3] + (1,), 255, np.uint8)
    for i in range(3):
        alpha[i, :, 48 * i : 48 * i + 48] = 0
        frames[i, :, 48 * i : 48 * i + 48] = noise[i, :, 48 * i : 48 * i + 48]
    return np.concatenate([frames, alpha], axis=-1)


def _near_mask_edges(reach: int = 16) -> np.ndarray:
    edges = np.zeros(144, bool)
    for x in (48, 96):
        edges[x - reach : x + reach] = True
    return edges


def _fuse_rgba(tmp_path, frames, name, *args):
    folder = tmp_path / name
    folder.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame, "RGBA").save(folder / f"f{i}.png")
    out = tmp_path / f"{name}.png"
    result = CliRunner().invoke(app, ["fuse", str(folder), "-o", str(out), "-q", "--no-align", *args])
    assert result.exit_code == 0, result.stderr
    return np.asarray(Image.open(out)).astype(int)


# Masked thirds leave frames of 96x144 too little overlap to estimate motion: the
# aligner says so and uses none, which is what these tests need.
@pytest.mark.filterwarnings("ignore::gpufocus.align.AlignmentWarning")
def test_transparent_pixels_never_win(tmp_path, rng):
    one, two = _transparent_border_stack(rng, 1), _transparent_border_stack(rng, 2)
    fused_one, fused_two = _fuse_rgba(tmp_path, one, "one"), _fuse_rgba(tmp_path, two, "two")
    assert fused_one.shape == (96, 144, 3)  # alpha is a mask, not a channel of the result
    # Another noise behind the masks changes nothing, but near the masks' edges, where
    # coarse levels' coefficients that see a tenth of transparent pixels still count.
    edges = _near_mask_edges()
    assert np.array_equal(fused_one[:, ~edges], fused_two[:, ~edges])
    # The test can fail: with the masks ignored, the noise wins wherever it is.
    ignored_one = _fuse_rgba(tmp_path, one, "ignored_one", "--ignore-alpha")
    ignored_two = _fuse_rgba(tmp_path, two, "ignored_two", "--ignore-alpha")
    assert np.abs(ignored_one[:, ~edges] - ignored_two[:, ~edges]).mean() > 20


def _save_rgba(folder, frames):
    folder.mkdir()
    paths = []
    for i, frame in enumerate(frames):
        paths.append(folder / f"f{i}.png")
        Image.fromarray(frame, "RGBA").save(paths[-1])
    return paths


@pytest.mark.filterwarnings("ignore::gpufocus.align.AlignmentWarning")
def test_alpha_is_a_mask_with_alignment_on(tmp_path, rng):
    from gpufocus import StackFuser

    frames = _transparent_border_stack(rng, 1)
    from_files = fuse(_save_rgba(tmp_path / "one", frames), device="cpu")  # the defaults: alignment on
    tensor = torch.from_numpy(frames).permute(0, 3, 1, 2)
    assert from_files.shape[0] == 3 and torch.equal(StackFuser(device="cpu", alpha=True).run(tensor), from_files)
    other = fuse(_save_rgba(tmp_path / "two", _transparent_border_stack(rng, 2)), device="cpu")
    edges = _near_mask_edges()
    assert torch.equal(from_files[..., ~torch.from_numpy(edges)], other[..., ~torch.from_numpy(edges)])


def _mosaic(rng, scale: float = 1.0) -> np.ndarray:
    """A Bayer mosaic of a smooth scene with detail, black level 64."""
    y, x = np.mgrid[0:64, 0:80]
    scene = 300 + 150 * np.sin(x / 3.0) * np.cos(y / 5.0) + rng.normal(0, 5, (64, 80))
    return ((scene - 64) * scale + 64).round()


def test_dng_decodes_linear_with_one_white_balance(tmp_path, rng):
    mosaic = _mosaic(rng)
    a = write_dng(tmp_path / "a.dng", mosaic, neutral=(0.9, 1, 0.8))
    b = write_dng(tmp_path / "b.dng", _mosaic(np.random.default_rng(1234), 2.0), neutral=(0.5, 1, 0.4))
    info = probe_image(a)
    assert (info.format, info.bits, info.linear, info.width, info.height) == ("RAW", 16, True, 80, 64)
    pixels = read_image(a)
    assert pixels.shape == (64, 80, 3) and pixels.dtype == np.uint16 and pixels.std() > 0
    # In a stack, every frame is developed with the first one's white balance and no
    # auto-brightening, in linear light: twice the light above black, twice the value.
    (chunk,) = FrameStack([a, b]).chunks(2)
    ratio = chunk[1].astype(float) / np.maximum(chunk[0].astype(float), 1)
    assert np.allclose(chunk[1].sum((0, 1)) / chunk[0].sum((0, 1)), 2.0, rtol=2e-3)
    assert np.allclose(np.median(ratio, axis=(0, 1)), 2.0, rtol=2e-3)
    assert (np.abs(ratio - 2) < 0.02).mean() > 0.95  # demosaicing is not exactly linear at every pixel
    # Read alone, b gets its own white balance: the red/green balance differs.
    alone = read_image(b).astype(float)
    assert abs(np.median(alone[..., 0] / chunk[1][..., 0].clip(1)) - 1) > 0.2


def test_raw_stacks_go_to_16bit_tiff_in_srgb(tmp_path, rng):
    folder = tmp_path / "raw"
    folder.mkdir()
    for i in range(3):
        write_dng(folder / f"f{i}.dng", _mosaic(np.random.default_rng(i)))
    result = CliRunner().invoke(app, ["batch", str(tmp_path), "-o", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.stderr
    fused = tifffile.imread(tmp_path / "out" / "raw.tif")
    assert fused.dtype == np.uint16 and fused.shape == (64, 80, 3)
    linear = fuse(folder, device="cpu").clamp(0, 1)
    srgb = torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    assert np.abs(fused.astype(float) / 65535 - srgb.permute(1, 2, 0).numpy()).max() < 1e-4


def test_raw_without_the_extra_names_it(tmp_path, rng, monkeypatch):
    path = write_dng(tmp_path / "a.dng", _mosaic(rng))
    renamed = tmp_path / "b.NEF"
    renamed.write_bytes(path.read_bytes())
    monkeypatch.setattr(gpufocus.decode, "_rawpy", lambda: None)
    for raw in (path, renamed):
        with pytest.raises(GpufocusError, match=rf"{raw.name}: RAW files need the raw extra: pip install 'gpufocus\[raw\]'"):
            probe_image(raw)


def test_own_outputs_are_skipped_and_user_files_are_frames(tmp_path, small_stack):
    folder = small_stack[0].parent
    first = folder / "fused.png"
    assert CliRunner().invoke(app, ["fuse", str(folder), "-o", str(first), "-q", "--depth-map", str(folder / "d.tif")]).exit_code == 0
    assert probe_image(first).software.endswith("(fused image)")
    with pytest.warns(GpufocusWarning) as caught:
        stack = FrameStack(folder)
    assert sorted(str(w.message).split("/")[-1] for w in caught) == [
        "d.tif: skipped, a depth map that gpufocus wrote",
        "fused.png: skipped, a fused image that gpufocus wrote",
    ]
    assert len(stack) == 3
    named = FrameStack([*small_stack, first])  # named one by one: a frame
    assert len(named) == 4
    # A user's file called depth.png is a frame, unless the folder is a synth stack.
    write_image(folder / "depth.png", read_image(small_stack[0]), overwrite=False)
    with pytest.warns(GpufocusWarning):
        assert len(FrameStack(folder)) == 4
    (folder / "params.json").write_text("{}")
    with pytest.warns(GpufocusWarning):
        assert len(FrameStack(folder)) == 3


def test_outputs_name_their_role(tmp_path, small_stack):
    for suffix in (".png", ".tif", ".jpg"):
        out = tmp_path / f"out{suffix}"
        assert CliRunner().invoke(app, ["fuse", *map(str, small_stack), "-o", str(out), "-q"]).exit_code == 0
        from gpufocus import __version__

        assert probe_image(out).software == f"gpufocus {__version__} (fused image)"


def test_a_decoders_own_bug_is_not_shown_as_its_python_message(tmp_path, monkeypatch):
    import gpufocus.decode as decode

    path = tmp_path / "f.png"
    Image.new("RGB", (16, 16)).save(path)

    def confused(*args, **kwargs):
        raise TypeError("'>' not supported between instances of 'tuple' and 'int'")

    monkeypatch.setattr(decode, "_probe_pillow", confused)
    with pytest.raises(GpufocusError) as caught:
        decode.probe_image(path)
    assert str(caught.value) == f"{path}: corrupt image data (fields the decoder could not make sense of)"
