import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import exif_of
from PIL import Image, ImageCms

from gpufocus import GpufocusError, probe_image, read_image, write_image


@pytest.fixture
def image() -> torch.Tensor:
    return torch.rand(3, 24, 32, generator=torch.Generator().manual_seed(0))


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def exif_block() -> bytes:
    exif = Image.Exif()
    exif[0x010F] = "gpufocus-test-camera"  # Make
    return exif.tobytes()


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff"])
def test_lossless_8bit_round_trip(tmp_path, image, suffix):
    path = write_image(tmp_path / f"out{suffix}", image)
    expected = (image.clamp(0, 1) * 255).round().permute(1, 2, 0).to(torch.uint8).numpy()
    assert np.array_equal(read_image(path), expected)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_round_trip(tmp_path, image, suffix):
    path = write_image(tmp_path / f"out{suffix}", image, bits=16)
    expected = (image * 65535).round().permute(1, 2, 0).to(torch.int32).numpy().astype(np.uint16)
    assert probe_image(path).bits == 16
    assert np.array_equal(read_image(path), expected)


@pytest.mark.parametrize("suffix, bits", [(".jpg", 8), (".png", 8), (".tif", 8), (".png", 16), (".tif", 16)])
def test_exif_and_icc_are_carried(tmp_path, image, suffix, bits):
    icc, exif = srgb_profile(), exif_block()
    path = write_image(tmp_path / f"out{suffix}", image, bits=bits, exif=exif, icc=icc)
    info = probe_image(path)
    assert info.icc == icc
    assert exif_of(info)[0x010F] == "gpufocus-test-camera"


def _full_exif() -> Image.Exif:
    from PIL.TiffImagePlugin import IFDRational as R

    exif = Image.Exif()
    exif[0x010F], exif[0x0110], exif[0x0131] = "Camera maker", "Model 7", "a raw converter"
    exif[0x0132], exif[0x013B] = "2026:11:28 10:00:00", "A photographer"
    exif[0x011A], exif[0x011B], exif[0x0128] = 300, 300, 2
    exif.get_ifd(0x8769).update({0x829A: R(1, 125), 0x829D: R(28, 10), 0x9003: "2026:11:28 09:59:58", 0x920A: R(100)})
    exif.get_ifd(0x8825).update({1: "N", 2: (R(48), R(8), R(30))})
    return exif


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(
    "suffix, compression", [(".png", "deflate"), (".tif", "deflate"), (".tif", "lzw"), (".tif", "zstd"), (".tif", "none")]
)
def test_16bit_files_are_bit_exact_with_their_metadata_for_other_readers(tmp_path, suffix, channels, compression):
    import imagecodecs
    import tifffile

    rng = np.random.default_rng(channels)
    pixels = rng.integers(0, 65536, (37, 53, channels), dtype=np.uint16)  # every bit used, odd sizes
    icc = srgb_profile()
    path = write_image(
        tmp_path / f"out{suffix}", pixels if channels == 3 else pixels[:, :, 0], bits=16, exif=_full_exif().tobytes(),
        icc=icc, role="fused image", compression=compression,
    )
    expected = pixels if channels == 3 else pixels[:, :, 0]
    if suffix == ".tif":  # tifffile reads the pixels and the tags, Pillow the EXIF
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            assert np.array_equal(page.asarray(), expected)
            assert page.tags.valueof(34675) == icc and page.tags.valueof(271) == "Camera maker"
            assert page.tags.valueof(259) == {"deflate": 8, "lzw": 5, "zstd": 50000, "none": 1}[compression]
            assert page.tags.valueof(34665)["ExposureTime"] == (1, 125)
            assert page.tags.valueof(34853)["GPSLatitudeRef"] == "N"
    else:  # imagecodecs (libpng) the pixels, Pillow the chunks
        assert np.array_equal(imagecodecs.png_decode(path.read_bytes()), expected)
    with Image.open(path) as reopened:
        assert reopened.info.get("icc_profile") == icc
        found = reopened.getexif()
        assert (found[0x010F], found[0x0110], found[0x013B]) == ("Camera maker", "Model 7", "A photographer")
        assert found[0x0131].startswith("gpufocus ") and found[0x0131].endswith(" (fused image)")
        sub, gps = found.get_ifd(0x8769), found.get_ifd(0x8825)
        assert sub[0x829A] == 1 / 125 and sub[0x829D] == 2.8 and sub[0x9003] == "2026:11:28 09:59:58"
        assert gps[1] == "N" and gps[2] == (48.0, 8.0, 30.0)
    assert np.array_equal(read_image(path)[..., : channels], pixels)


def test_jpeg_quality(tmp_path, image):
    small = write_image(tmp_path / "low.jpg", image, quality=20)
    large = write_image(tmp_path / "high.jpeg", image, quality=98)
    assert small.stat().st_size < large.stat().st_size


@pytest.mark.parametrize("quality", [95, 80])  # 4:4:4 and 4:2:0
@pytest.mark.parametrize("metadata", [False, True])
def test_jpeg_encoded_by_nvimagecodec_is_the_file_pillow_writes(quality, metadata):
    """The GPU's JPEG path (``encode_jpeg``) run by nvImageCodec's CPU_ONLY backend: the
    same bytes as Pillow's file, metadata included (EXIF, a profile in two chunks,
    the Software tag)."""
    pytest.importorskip("nvidia.nvimgcodec")
    import io

    from gpufocus.encode import encode_image, encode_jpeg, jpeg_encoder
    from gpufocus.write import quantize

    encoder = jpeg_encoder(torch.device("cpu"))
    assert encoder is not None and encoder.name.startswith("nvImageCodec ")
    smooth = torch.nn.functional.interpolate(torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(3)),
                                             size=(96, 128), mode="bicubic")[0]
    pixels = quantize(smooth, 8)
    extra = dict(exif=_full_exif().tobytes(), icc=srgb_profile() + bytes(70000), software="gpufocus (fused image)")
    extra = extra if metadata else {}
    pillow = io.BytesIO()
    encode_image(pillow, pixels.numpy(), "JPEG", quality=quality, **extra)
    assert encode_jpeg(encoder, pixels, quality=quality, **extra) == pillow.getvalue()
    if metadata:
        opened = Image.open(pillow)
        assert opened.info["icc_profile"] == extra["icc"] and opened.getexif()[0x0131] == extra["software"]


def test_quantize_is_to_array_on_the_tensors_device(image):
    from gpufocus.write import quantize, to_array

    for bits in (8, 16):
        for channels in (1, 3):
            pixels = quantize(image[:channels], bits)
            assert pixels.is_contiguous() and np.array_equal(pixels.numpy(), to_array(image[:channels], bits))
    assert to_array(image, 8).shape == (24, 32, 3) and to_array(image[:1], 16).dtype == np.uint16
    expected = np.round(np.clip(image.permute(1, 2, 0).double().numpy(), 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(to_array(image, 8), expected)


@pytest.mark.parametrize(
    "name, kwargs, message",
    [
        ("out.gif", {}, "unsupported output extension"),
        ("out.jpg", {"bits": 16}, "JPEG holds 8 bits"),
        ("out.png", {"bits": 12}, "8 or 16"),
        ("out.jpg", {"quality": 0}, "quality"),
        ("missing/out.png", {}, "does not exist"),
    ],
)
def test_bad_outputs(tmp_path, image, name, kwargs, message):
    with pytest.raises(GpufocusError, match=message):
        write_image(tmp_path / name, image, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_existing_file_needs_overwrite(tmp_path, image):
    path = tmp_path / "out.png"
    path.write_bytes(b"keep me")
    with pytest.raises(GpufocusError, match="already exists"):
        write_image(path, image)
    assert path.read_bytes() == b"keep me"
    write_image(path, image, overwrite=True)
    assert probe_image(path).width == 32


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg"])
def test_a_failed_write_leaves_nothing(tmp_path, image, monkeypatch, suffix):
    import gpufocus.encode

    def full_disk(out, *args, **kwargs):
        out.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gpufocus.encode, "_" + {".png": "png", ".tif": "tiff", ".jpg": "jpeg"}[suffix], full_disk)
    with pytest.raises(GpufocusError, match=f"out{suffix}: cannot write .No space left"):
        write_image(tmp_path / f"out{suffix}", image)
    assert list(tmp_path.iterdir()) == []


def _unwritable_folder(tmp_path: Path) -> Path | None:
    """A folder this process cannot write to: a read-only one, or (as root) /sys."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys")):
        try:
            with tempfile.TemporaryFile(dir=candidate):
                pass
        except OSError:
            return candidate
    return None


def test_unwritable_folder(tmp_path, image):
    folder = _unwritable_folder(tmp_path)
    if folder is None:
        pytest.skip("found no folder that this user cannot write")
    try:
        with pytest.raises(GpufocusError, match="not writable"):
            write_image(folder / "gpufocus-out.png", image)
        assert not (folder / "gpufocus-out.png").exists()
    finally:
        (tmp_path / "locked").chmod(0o755)


def test_outputs_encode_two_files_at_once_and_keep_at_most_two_waiting(tmp_path, monkeypatch):
    import threading

    import gpufocus.write
    from gpufocus.write import Outputs

    both = threading.Barrier(2, timeout=10)  # broken unless two encoders run at the same time
    running, most = [0], [0]
    lock = threading.Lock()

    def encoder(out, pixels, *args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        if pixels[0, 0] < 2:  # the first two meet each other
            both.wait()
        out.write(bytes(pixels[0, :4]))
        with lock:
            running[0] -= 1

    monkeypatch.setattr(gpufocus.write, "encode_image", encoder)
    with Outputs() as out:
        for i in range(6):
            out.image(tmp_path / f"{i}.png", np.full((4, 4), i, dtype=np.uint8))
            assert len(out._work) <= 2  # the frames of an align run do not pile up in memory
    assert most[0] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{i}.png" for i in range(6)]
    assert (tmp_path / "5.png").read_bytes() == bytes([5] * 4)


def test_an_encoders_error_leaves_no_file_behind(tmp_path, monkeypatch):
    import gpufocus.write
    from gpufocus.write import Outputs

    def encoder(out, pixels, *args, **kwargs):
        if pixels[0, 0] == 1:
            raise OSError(28, "No space left on device")
        out.write(b"fine")

    monkeypatch.setattr(gpufocus.write, "encode_image", encoder)
    with pytest.raises(GpufocusError, match=r"1.png: cannot write \(No space left on device\)"):
        with Outputs() as out:
            for i in range(3):
                out.image(tmp_path / f"{i}.png", np.full((4, 4), i, dtype=np.uint8))
    assert list(tmp_path.iterdir()) == []
