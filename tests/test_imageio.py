"""Safe decoding: every mode becomes RGB, orientation is applied, and bad files get a reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from helpers import png_bytes
from PIL import Image

from dfd.imageio import ImageError, decode_image, has_image_extension


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "I;16", "1"])
def test_every_mode_becomes_rgb(mode):
    img = Image.new("RGB", (20, 10), (200, 30, 60)).convert(mode) if mode != "I;16" else Image.new("I;16", (20, 10))
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    if mode == "I;16":
        arr = np.full((10, 20), 65535, dtype=np.uint16)
        img = Image.fromarray(arr)
    decoded = decode_image(_save(img, fmt))
    assert decoded.pixels.shape == (10, 20, 3)
    assert decoded.pixels.dtype == np.uint8
    if mode == "I;16":
        assert decoded.pixels.min() == 255  # full-scale 16-bit maps to full-scale 8-bit, not clipped noise


def test_transparency_is_composited_over_white():
    img = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert decode_image(_save(img, "PNG")).pixels.min() == 255


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (30, 10), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    decoded = decode_image(_save(img, "JPEG", exif=exif.tobytes()))
    assert decoded.pixels.shape == (30, 10, 3)
    assert (decoded.width, decoded.height) == (30, 10)  # as stored


def test_gif_first_frame():
    frames = [Image.new("P", (8, 8), c) for c in (1, 2, 3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    assert decode_image(buf.getvalue()).pixels.shape == (8, 8, 3)


def test_bad_inputs_have_reasons():
    good = png_bytes(np.zeros((64, 64, 3), np.uint8), "JPEG")
    cases = {
        b"": "zero bytes",
        b"hello, I am text named .jpg": "not an image",
        good[: len(good) // 2]: "truncated",
    }
    for data, reason in cases.items():
        with pytest.raises(ImageError) as err:
            decode_image(data)
        assert err.value.reason == reason


def test_decompression_bomb_is_refused_before_decoding():
    bomb = _save(Image.new("L", (4000, 4000)), "PNG")  # tiny file, 16 M pixels
    assert len(bomb) < 100_000
    with pytest.raises(ImageError) as err:
        decode_image(bomb, max_pixels=1_000_000)
    assert err.value.reason == "too large"
    assert "4000x4000" in str(err.value)


def test_extensions_case_insensitive():
    assert has_image_extension("a.JPG") and has_image_extension("b.TiFf") and has_image_extension("c.webp")
    assert not has_image_extension("notes.txt") and not has_image_extension("noext")
