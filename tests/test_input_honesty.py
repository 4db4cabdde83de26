"""Input honesty on real files of every awkward kind, written with PIL: each image becomes the 8-bit
RGB a viewer shows (16-bit scaled, not clipped; transparency composited on white; palette, CMYK
and grayscale converted), unreadable files are skipped by name, and the iterator counts both."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import classification_pipeline
from PIL import Image

from nf import data
from nf.data import transforms as T

SIZE = (12, 10)  # (width, height)


def _save(img: Image.Image, path: Path, **kw) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path.read_bytes()


def _uniform(mode: str, value) -> Image.Image:
    return Image.new(mode, SIZE, value)


def _sixteen_bit(value: int) -> Image.Image:
    return Image.fromarray(np.full(SIZE[::-1], value, np.uint16))  # PIL mode I;16


@pytest.fixture
def awkward_folder(tmp_path) -> Path:
    root = tmp_path / "train"
    a = root / "a"
    _save(_uniform("RGB", (10, 200, 30)), a / "rgb.png")
    _save(_uniform("CMYK", (255, 0, 0, 0)), a / "cmyk.jpg", quality=95)  # pure cyan
    _save(_uniform("RGBA", (200, 100, 50, 128)), a / "rgba.png")
    _save(_sixteen_bit(200 * 257), a / "gray16.png")
    palette = Image.new("P", SIZE, 1)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    _save(palette, a / "palette.gif")
    _save(_uniform("L", 77), a / "gray.png")
    (a / "zero.jpg").write_bytes(b"")
    good = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(good, format="PNG")
    (a / "truncated.png").write_bytes(good.getvalue()[:200])
    (a / "notes.jpg").write_text("these are my notes, not a picture\n")
    _save(_uniform("RGB", (1, 2, 3)), root / "b" / "rgb.png")
    (root / "empty").mkdir()
    return root


def test_each_kind_decodes_to_what_a_viewer_shows(awkward_folder):
    a = awkward_folder / "a"

    def pixel(name):
        arr = T.decode_image((a / name).read_bytes(), name)
        assert arr.dtype == np.uint8 and arr.shape == (SIZE[1], SIZE[0], 3)
        assert (arr == arr[0, 0]).all()  # uniform in, uniform out
        return arr[0, 0].astype(int)

    np.testing.assert_array_equal(pixel("rgb.png"), [10, 200, 30])
    np.testing.assert_allclose(pixel("cmyk.jpg"), [0, 255, 255], atol=3)  # cyan, JPEG rounding aside
    alpha = 128 / 255  # composited on white: c * a + 255 * (1 - a)
    want = [round(c * alpha + 255 * (1 - alpha)) for c in (200, 100, 50)]
    np.testing.assert_allclose(pixel("rgba.png"), want, atol=1)
    np.testing.assert_array_equal(pixel("gray16.png"), [200, 200, 200])  # 51400 / 257, not 255
    np.testing.assert_array_equal(pixel("palette.gif"), [0, 0, 255])
    np.testing.assert_array_equal(pixel("gray.png"), [77, 77, 77])
    for name in ("zero.jpg", "truncated.png", "notes.jpg"):
        with pytest.raises(data.CorruptImageError, match=name):
            T.decode_image((a / name).read_bytes(), name)


def test_sixteen_bit_scales_the_whole_range():
    values = np.array([[0, 257, 32767, 32896, 65535]], np.uint16)
    png = io.BytesIO()
    Image.fromarray(values).save(png, format="PNG")
    got = T.decode_image(png.getvalue(), "ramp.png")[..., 0]
    np.testing.assert_array_equal(got, np.rint(values / 257.0).astype(np.uint8))  # [0, 1, 127, 128, 255]


def test_pipeline_skips_by_name_and_counts_conversions(awkward_folder, caplog):
    caplog.set_level(logging.WARNING)
    T._warned.clear()  # one-time warnings of this process
    src = data.ImageFolderSource(awkward_folder)
    assert "empty" in caplog.text and "1 of 3 classes have no images" in caplog.text
    assert len(src) == 10
    ev = classification_pipeline(src, train=False, batch_size=4, image_size=8, on_corrupt="skip")
    masks = np.concatenate([b["mask"] for b in ev])
    assert masks.sum() == 7 and ev.num_skipped == 3
    for name in ("zero.jpg", "truncated.png", "notes.jpg"):
        assert name in caplog.text
    assert caplog.text.count("scaled from 16 to 8 bits") == 1 and caplog.text.count("composited on RGB") == 1
    line = ev.input_summary()
    assert "3 unreadable file(s) skipped, 5 image read(s) converted to 8-bit RGB" in line, line
    assert "(16-bit 1, alpha 1, cmyk 1, grayscale 1, palette 1)" in line, line
    assert ev.get_state()["num_converted"] == {"16-bit": 1, "alpha": 1, "cmyk": 1, "grayscale": 1, "palette": 1}
