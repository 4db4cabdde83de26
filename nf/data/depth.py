"""Monocular depth inputs (paper App. H, FCRN on NYU Depth v2).

Both modes: resize the image (bilinear) and its depth (nearest, so 0 = invalid stays exact and no
depth is invented across edges) to `resize_to` (FCRN: 640x480 -> 320x240), then centre crop to
`image_size` (FCRN: 304x228). Train then adds, on the image only except the flip:
horizontal flip (p=0.5, image and depth together), grayscale (p=0.3), brightness +U(-0.1255,
0.1255), saturation xU(0.5, 1.5), hue +U(-0.2, 0.2) of the hue circle -- on RGB in [0, 1],
clipped after brightness and at the end (`color_jitter`).

Batch format (B = per-process batch size, (H, W) = image_size):

    image  float32 (B, H, W, 3)  normalized like classification (`transforms.normalize`)
    depth  float32 (B, H, W)     metres; 0 = invalid (no measurement, blank slots)
    mask   bool    (B,)          False for eval padding of the last batch / a skipped corrupt file
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from nf.data import dense as D
from nf.data import transforms as T

NYU_IMAGE_SIZE = (228, 304)  # (height, width) of the FCRN crop
NYU_RESIZE_TO = (240, 320)  # half of the 480x640 NYU frames
GRAY_WEIGHTS = np.array([0.2989, 0.5870, 0.1140], np.float32)  # ITU-R 601 luma


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] (..., 3) -> HSV in [0, 1] (hue as a fraction of the circle)."""
    r, g, b = np.moveaxis(rgb, -1, 0)
    v = rgb.max(-1)
    c = v - rgb.min(-1)
    safe_c = np.where(c > 0, c, 1.0)
    h = np.where(v == r, (g - b) / safe_c, np.where(v == g, 2.0 + (b - r) / safe_c, 4.0 + (r - g) / safe_c))
    h = np.where(c > 0, (h / 6.0) % 1.0, 0.0)
    s = np.where(v > 0, c / np.where(v > 0, v, 1.0), 0.0)
    return np.stack([h, s, v], -1).astype(np.float32)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_hsv`."""
    h, s, v = np.moveaxis(hsv, -1, 0)
    k = (np.array([5.0, 3.0, 1.0], np.float32) + h[..., None] * 6.0) % 6.0
    return (v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)).astype(np.float32)


def color_jitter(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    grayscale_p: float = 0.3,
    brightness: float = 0.1255,
    saturation: tuple[float, float] = (0.5, 1.5),
    hue: float = 0.2,
) -> np.ndarray:
    """The FCRN photometric augmentation of a float RGB image in [0, 1] (H, W, 3), in that order.

    Always draws the same four random numbers, so the stream does not depend on the branches.
    """
    gray, delta, sat, dhue = (
        rng.random(),
        rng.uniform(-brightness, brightness),
        rng.uniform(*saturation),
        rng.uniform(-hue, hue),
    )
    if gray < grayscale_p:
        image = np.repeat(image @ GRAY_WEIGHTS, 3).reshape(image.shape)
    image = np.clip(image + delta, 0.0, 1.0)
    hsv = rgb_to_hsv(image)
    hsv[..., 0] = (hsv[..., 0] + dhue) % 1.0
    hsv[..., 1] = np.clip(hsv[..., 1] * sat, 0.0, 1.0)
    return np.clip(hsv_to_rgb(hsv), 0.0, 1.0)


class _DepthTransform(D.DenseTransform):
    target_key, target_fill, target_dtype = "depth", 0.0, np.float32
    task = "depth"

    def __init__(self, image_size, resize_to, on_corrupt: str):
        super().__init__(image_size, on_corrupt)
        self.resize_to = None if resize_to is None else D.as_hw(resize_to, "resize_to")
        if self.resize_to is not None and (self.resize_to[0] < self.size[0] or self.resize_to[1] < self.size[1]):
            raise ValueError(f"resize_to={self.resize_to} must be at least image_size={self.size} (height, width)")

    def _load(self, record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Decode, resize and centre crop: uint8 image (H, W, 3) and float32 depth (H, W) in metres."""
        image = D.load_rgb(record)
        depth = D.decode_depth_png(record["depth"], record.get("depth_path", "<depth>"), record.get("depth_read_error"))
        D.check_same_size(image, depth, record, "depth")
        hw = self.resize_to
        if hw is None:  # the smallest aspect-preserving size that covers the crop
            scale = max(self.size[0] / image.shape[0], self.size[1] / image.shape[1])
            hw = (max(self.size[0], round(image.shape[0] * scale)), max(self.size[1], round(image.shape[1] * scale)))
        image, depth = D.resize(image, hw, D.BILINEAR), D.resize(depth, hw, D.NEAREST)
        return D.center_crop(image, self.size), D.center_crop(depth, self.size)


class DepthTrainTransform(_DepthTransform, grain.transforms.RandomMap):
    """Resize + centre crop, then flip (image and depth) and `color_jitter` (image only).

    Args:
      image_size: output (height, width) or side; default the FCRN 228x304.
      resize_to: (height, width) the whole frame is resized to before the crop; None: the
        smallest aspect-preserving size covering image_size. Default 240x320 (half of NYU's 480x640).
      hflip, color: turn the flip / the photometric augmentation on or off.
      on_corrupt: "error" or "skip" for undecodable files; a depth file that is not 16 bits or
        whose size differs from its image always raises `AnnotationError`.
    """

    train = True

    def __init__(
        self,
        image_size: int | Sequence[int] = NYU_IMAGE_SIZE,
        *,
        resize_to: int | Sequence[int] | None = NYU_RESIZE_TO,
        hflip: bool = True,
        color: bool = True,
        on_corrupt: str = "error",
    ):
        super().__init__(image_size, resize_to, on_corrupt)
        self.hflip, self.color = hflip, color

    def _transform(self, record: dict[str, Any], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        image, depth = self._load(record)
        if self.hflip and rng.random() < 0.5:
            image, depth = image[:, ::-1], depth[:, ::-1]
        if self.color:
            image = color_jitter(image.astype(np.float32) / 255.0, rng) * 255.0
        return T.normalize(image), depth

    def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        return self._example(record, rng)


class DepthEvalTransform(_DepthTransform, grain.transforms.Map):
    """Resize + centre crop only (deterministic)."""

    train = False

    def __init__(
        self,
        image_size: int | Sequence[int] = NYU_IMAGE_SIZE,
        *,
        resize_to: int | Sequence[int] | None = NYU_RESIZE_TO,
        on_corrupt: str = "error",
    ):
        super().__init__(image_size, resize_to, on_corrupt)

    def _transform(self, record: dict[str, Any], rng: None) -> tuple[np.ndarray, np.ndarray]:
        image, depth = self._load(record)
        return T.normalize(image), depth

    def map(self, record: dict[str, Any]) -> dict[str, Any]:
        return self._example(record, None)
