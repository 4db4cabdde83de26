"""JPEG edge cases of the train decode (`nf.data.decode` + `TrainTransform`) on real files written
by PIL: baseline, progressive, grayscale and CMYK JPEGs, DCT-reduced decodes, truncated files, a
PNG named .JPEG inside an ImageNet-style folder, and the EXIF orientation tag (ignored)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from conftest import classification_pipeline
from PIL import Image

from nf import data
from nf.data import decode
from nf.data import transforms as T


def _photo(width: int, height: int, seed: int = 0) -> np.ndarray:
    """Smooth colour field + edges + texture: compresses like a photograph, not like flat colour."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (6, 8, 3), np.uint8)
    base = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC), np.float32)
    base[height // 3 : height // 2, width // 4 : width // 2] = 30.0  # a dark object with sharp edges
    base += rng.normal(0, 12, (height, width, 1))
    return np.clip(base, 0, 255).astype(np.uint8)


def _encode(array: np.ndarray, fmt: str = "JPEG", mode: str = "RGB", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}) | kw)
    return buf.getvalue()


def _pil_rgb(encoded: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def _old_train_image(encoded: bytes, px: int, seed: int) -> np.ndarray:
    """The transform before the fast decode: PIL full decode, PIL bicubic resize of the same box."""
    rng = np.random.default_rng(seed)
    img = Image.open(io.BytesIO(encoded)).convert("RGB")
    box = T.inception_crop_box(*img.size, rng, fallback_fraction=px / (px + T.CROP_PADDING))
    out = np.asarray(img.resize((px, px), Image.Resampling.BICUBIC, box=box))
    return out[:, ::-1] if rng.random() < 0.5 else out


@pytest.mark.parametrize(
    "mode, kw, conversion",
    [
        ("RGB", {}, None),
        ("RGB", {"progressive": True}, None),
        ("RGB", {"subsampling": 0}, None),
        ("L", {}, "grayscale"),
    ],
)
def test_fast_path_decodes_like_pil(mode, kw, conversion):
    encoded = _encode(_photo(200, 150), mode=mode, **kw)
    header = decode.jpeg_header(encoded)
    assert header == decode.JpegHeader(200, 150, conversion)
    np.testing.assert_array_equal(decode.decode_jpeg(encoded, header), _pil_rgb(encoded))  # same libjpeg-turbo
    for n in (2, 4, 8):  # DCT-domain reductions are PIL's draft
        draft = Image.open(io.BytesIO(encoded))
        draft.draft("RGB", (200 // n, 150 // n))  # PIL picks the largest 1/n leaving >= this size
        reduced = decode.decode_jpeg(encoded, header, n)
        assert reduced.shape == (math.ceil(150 / n), math.ceil(200 / n), 3)
        np.testing.assert_array_equal(reduced, np.asarray(draft.convert("RGB")))


def test_files_outside_the_fast_path_go_to_pil():
    photo = _photo(120, 90)
    for encoded in (_encode(photo, mode="CMYK"), _encode(photo, "PNG"), b"\xff\xd8garbage", b"not an image"):
        assert decode.jpeg_header(encoded) is None


@pytest.mark.parametrize(
    "fmt, mode, kw, code",
    [
        ("JPEG", "RGB", {}, 0),
        ("JPEG", "RGB", {"progressive": True}, 0),
        ("JPEG", "L", {}, 1 + T.CONVERSIONS.index("grayscale")),
        ("JPEG", "CMYK", {}, 1 + T.CONVERSIONS.index("cmyk")),
        ("PNG", "RGB", {}, 0),
    ],
)
def test_train_transform_matches_the_pil_path_on_every_kind(fmt, mode, kw, code):
    encoded = _encode(_photo(240, 180, seed=3), fmt, mode, **kw)
    transform = T.TrainTransform(64)
    for seed in range(6):
        out = transform.random_map({"image": encoded, "label": 2, "path": "x.JPEG"}, np.random.default_rng(seed))
        assert out["image"].shape == (64, 64, 3) and out["image"].dtype == np.uint8 and out["mask"]
        assert out["_converted"] == code
        # Same crop box and flip as the PIL path; resize within the interpolation tolerance.
        assert _psnr(out["image"], _old_train_image(encoded, 64, seed)) > 30


def test_truncated_jpeg_names_the_file_or_is_counted_as_skipped(tmp_path):
    encoded = _encode(_photo(200, 150), progressive=False)
    truncated = encoded[: len(encoded) // 2]
    record = {"image": truncated, "label": 0, "path": "n01/broken.JPEG"}
    with pytest.raises(T.CorruptImageError, match=r"n01/broken\.JPEG.*on_corrupt='skip'"):
        T.TrainTransform(32).random_map(record, np.random.default_rng(0))
    skipped = T.TrainTransform(32, on_corrupt="skip").random_map(record, np.random.default_rng(0))
    assert not skipped["mask"] and skipped["_corrupt"] == 1
    # Through the pipeline: the damaged file is skipped, counted, and replaced by a good one.
    for k in range(4):
        (tmp_path / "a").mkdir(exist_ok=True)
        (tmp_path / "a" / f"good{k}.JPEG").write_bytes(_encode(_photo(80, 60, seed=k)))
    (tmp_path / "a" / "bad.JPEG").write_bytes(truncated)
    it = classification_pipeline(
        data.ImageFolderSource(tmp_path), train=True, batch_size=5, image_size=32, num_epochs=1, on_corrupt="skip"
    )
    batch = next(it)
    assert it.num_skipped == 1 and batch["mask"].all() and batch["image"].shape == (5, 32, 32, 3)


def test_png_named_jpeg_in_an_imagenet_folder(tmp_path):
    # ImageNet's train set holds a few PNG (and CMYK) files named .JPEG.
    (tmp_path / "n0").mkdir()
    photo = _photo(96, 72, seed=5)
    (tmp_path / "n0" / "n0_1.JPEG").write_bytes(_encode(photo, "PNG"))
    (tmp_path / "n0" / "n0_2.JPEG").write_bytes(_encode(photo, mode="CMYK"))
    source = data.ImageFolderSource(tmp_path)
    whole = T.TrainTransform(48, area_range=(1, 1), aspect_range=(4 / 3, 4 / 3), hflip=False)
    for i in range(2):
        out = whole.random_map(source[i], np.random.default_rng(0))
        reference = np.asarray(Image.fromarray(_pil_rgb(source[i]["image"])).resize((48, 48), Image.Resampling.BICUBIC))
        assert _psnr(out["image"], reference) > 30


def test_exif_orientation_is_ignored():
    stored = _photo(120, 60, seed=7)  # landscape as stored; orientation 6 would show it as portrait
    exif = Image.Exif()
    exif[0x0112] = 6
    encoded = _encode(stored, exif=exif.tobytes())
    assert Image.open(io.BytesIO(encoded)).getexif()[0x0112] == 6
    header = decode.jpeg_header(encoded)
    assert (header.width, header.height) == (120, 60)
    np.testing.assert_array_equal(decode.decode_jpeg(encoded, header), _pil_rgb(encoded))  # stored pixels
    whole = T.TrainTransform(30, area_range=(1, 1), aspect_range=(2, 2), hflip=False)
    out = whole.random_map({"image": encoded, "label": 0, "path": "e.jpg"}, np.random.default_rng(0))["image"]
    reference = np.asarray(Image.fromarray(_pil_rgb(encoded)).resize((30, 30), Image.Resampling.BICUBIC))
    assert _psnr(out, reference) > 30  # the stored (unrotated) image
    assert _psnr(out, np.rot90(reference, -1)) < 20
