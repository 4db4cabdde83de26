"""Every eval crop of `EvalTransform` against the reference pipelines written here from their
sources, on real PNG and JPEG files of odd sizes with random pixels (any shift by one pixel shows):

- `center_crop`: DeepMind's NFNet / NF-RegNet eval (`_decode_and_center_crop`): a square of
  `int(px / (px + 32) * short side)` at offset `((size - side) + 1) // 2`, resized to px;
- `resize_crop`: timm's "squash" eval (`transforms_factory`, `crop_mode='squash'`):
  `Resize((floor(px / crop_pct),) * 2)` then torchvision's `CenterCrop(px)`;
- `resize_short_crop`: timm's default eval: torchvision's `Resize(floor(px / crop_pct))` (short side
  to that size, long side `int(size * long / short)`) then `CenterCrop(px)`, whose offsets are
  `int(round((size - px) / 2.0))` (Python's round: halves go to even).

All use PIL's bicubic filter. PIL's `resize(box=...)` (the crop-resize of `center_crop`) reads the
pixels just outside the box for the filter's support where crop-then-resize clamps at the edge:
interior pixels must be equal, the outer 2 output pixels may differ by the edge handling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from nf.data import transforms as T

SIZES = [(37, 53), (53, 37), (41, 41), (64, 45)]  # (width, height): portrait, landscape, square, even x odd
FORMATS = ["png", "jpeg"]


def _write(tmp_path, size: tuple[int, int], fmt: str) -> str:
    rng = np.random.default_rng(sum(size))
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path = tmp_path / f"img_{size[0]}x{size[1]}.{fmt}"
    Image.fromarray(pixels).save(path, quality=95) if fmt == "jpeg" else Image.fromarray(pixels).save(path)
    return str(path)


def _decoded(path: str) -> Image.Image:
    return Image.open(path).convert("RGB")


def deepmind_center_crop(path: str, px: int, padding: int = 32) -> np.ndarray:
    img = _decoded(path)
    w, h = img.size
    side = int((px / (px + padding)) * min(h, w))
    top, left = ((h - side) + 1) // 2, ((w - side) + 1) // 2
    return np.asarray(img.crop((left, top, left + side, top + side)).resize((px, px), Image.Resampling.BICUBIC))


def torchvision_center_crop(a: np.ndarray, px: int) -> np.ndarray:
    h, w = a.shape[:2]
    top, left = round((h - px) / 2.0), round((w - px) / 2.0)  # int(round(x)): half to even
    return a[top : top + px, left : left + px]


def timm_squash(path: str, px: int, crop_pct: float) -> np.ndarray:
    scale = math.floor(px / crop_pct)
    resized = np.asarray(_decoded(path).resize((scale, scale), Image.Resampling.BICUBIC))
    return torchvision_center_crop(resized, px)


def timm_resize_short(path: str, px: int, crop_pct: float) -> np.ndarray:
    img = _decoded(path)
    size = math.floor(px / crop_pct)
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    resized = np.asarray(img.resize((new_w, new_h), Image.Resampling.BICUBIC))
    return torchvision_center_crop(resized, px)


def _nf(path: str, px: int, **kw) -> np.ndarray:
    with open(path, "rb") as f:
        record = {"image": f.read(), "label": 0, "path": path}
    return T.EvalTransform(px, fast_jpeg=False, **kw).map(record)["image"]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("px", [16, 15])
def test_center_crop_is_deepmind(tmp_path, size, fmt, px):
    path = _write(tmp_path, size, fmt)
    got, want = _nf(path, px, eval_crop="center_crop", crop_padding=32), deepmind_center_crop(path, px)
    assert got.shape == want.shape == (px, px, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[2:-2, 2:-2], want[2:-2, 2:-2])  # interior: exact
    # the edge rows and columns: PIL's box resize uses the pixels beyond the crop, which the
    # reference clamps: the two differ by the edge handling only (a shifted crop differs by ~85
    # levels on random pixels)
    assert np.abs(got.astype(float) - want).mean() < 12


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("px,crop_pct", [(16, 0.875), (15, 0.7), (16, 0.84), (16, 16 / 48)])  # 0.84: offset 1.5
def test_resize_crop_is_timms_squash(tmp_path, size, fmt, px, crop_pct):
    path = _write(tmp_path, size, fmt)
    got, want = _nf(path, px, eval_crop="resize_crop", crop_pct=crop_pct), timm_squash(path, px, crop_pct)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("px,crop_pct", [(16, 0.875), (15, 0.9), (16, 0.95)])
def test_resize_short_crop_is_timms_eval(tmp_path, size, fmt, px, crop_pct):
    path = _write(tmp_path, size, fmt)
    got = _nf(path, px, eval_crop="resize_short_crop", crop_pct=crop_pct)
    np.testing.assert_array_equal(got, timm_resize_short(path, px, crop_pct))
