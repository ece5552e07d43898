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


def test_jpeg_quality(tmp_path, image):
    small = write_image(tmp_path / "low.jpg", image, quality=20)
    large = write_image(tmp_path / "high.jpeg", image, quality=98)
    assert small.stat().st_size < large.stat().st_size


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


def test_a_failed_write_leaves_nothing(tmp_path, image, monkeypatch):
    def broken_save(self, fp, *args, **kwargs):
        fp.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(GpufocusError, match="out.png: cannot write .No space left"):
        write_image(tmp_path / "out.png", image)
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
