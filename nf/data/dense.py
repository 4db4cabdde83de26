"""Shared pieces of the dense-prediction inputs (segmentation, depth): decoding annotation files,
geometry applied to an image and its per-pixel target together, and the example layout.

A dense transform maps a source record to one example

    {"image": float32 (h, w, 3)  normalized (`transforms.normalize`), 0 where padded,
     <target>: (h, w)            "label" int32 (255 = ignore) or "depth" float32 metres (0 = invalid),
     "mask": bool ()             False for eval padding / a skipped corrupt file,
     "_corrupt": int32 ()}       1 for a skipped corrupt file (counted by the DataIterator)

Images are normalized per example (not per batch as in classification) so that padding is
exactly 0 after normalization, i.e. the mean colour, as in the reference segmentation recipes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from nf.data import transforms as T
from nf.data.sources import DataSourceError

IGNORE_LABEL = 255
LABEL_MODES = ("P", "L")  # palette (VOC) or 8-bit grayscale: the pixel value is the class index
DEPTH_MODES = ("I;16", "I;16B", "I;16L", "I")  # 16-bit PNG (Pillow opens some as "I")
DEPTH_PNG_SCALE = 1000.0  # depth PNGs hold millimetres
BILINEAR, NEAREST = Image.Resampling.BILINEAR, Image.Resampling.NEAREST


class AnnotationError(DataSourceError):
    """A mask or depth file is readable but wrong (bad class values, bit depth, size); never skipped."""


def as_hw(size: int | Sequence[int], name: str = "size") -> tuple[int, int]:
    """An int (square) or (height, width) -> (height, width), both positive."""
    hw = (size, size) if isinstance(size, int | np.integer) else tuple(size)
    if len(hw) != 2 or any(not isinstance(v, int | np.integer) or v <= 0 for v in hw):
        raise ValueError(f"{name} must be a positive int or (height, width), got {size!r}")
    return int(hw[0]), int(hw[1])


def load_rgb(record: dict[str, Any]) -> np.ndarray:
    """The record's image as uint8 RGB (H, W, 3): encoded bytes (decoded) or an array (as is)."""
    image = record["image"]
    if isinstance(image, np.ndarray):
        return image
    return T.decode_image(image, record.get("path", "<bytes>"), record.get("read_error"))


def decode_label_map(
    data: bytes | np.ndarray, path: str, num_classes: int, read_error: str | None = None
) -> np.ndarray:
    """A class-index mask (palette or grayscale PNG, or an array) -> uint8 (H, W), checked.

    Values must be in [0, num_classes) or 255 (void); anything else raises `AnnotationError`
    naming the file and the offending values (e.g. an RGB-colour mask saved as grayscale).
    """
    if isinstance(data, np.ndarray):
        label = data
    else:
        img = T.open_image(data, path, read_error)
        if img.mode not in LABEL_MODES:
            raise AnnotationError(
                f"mask {path} has PIL mode {img.mode!r}; expected a palette ('P') or 8-bit grayscale ('L') PNG "
                "whose pixel values are class indices (255 = void), as in VOC SegmentationClass"
            )
        try:
            label = np.asarray(img)
        except Exception as e:
            raise T.CorruptImageError(f"cannot decode mask file {path}: {type(e).__name__}: {e}") from e
    values = np.unique(label)
    bad = values[((values < 0) | (values >= num_classes)) & (values != IGNORE_LABEL)]
    if bad.size:
        raise AnnotationError(
            f"mask {path} holds values {bad[:10].tolist()} outside [0, num_classes={num_classes}) "
            f"that are not the void label {IGNORE_LABEL}; check num_classes or the mask files"
        )
    return label.astype(np.uint8)


def decode_depth_png(data: bytes | np.ndarray, path: str, read_error: str | None = None) -> np.ndarray:
    """A 16-bit depth PNG in millimetres (or an array in metres) -> float32 metres (H, W); 0 = invalid."""
    if isinstance(data, np.ndarray):
        return data.astype(np.float32)
    img = T.open_image(data, path, read_error)
    if img.mode not in DEPTH_MODES or (img.mode == "I" and img.format != "PNG"):
        raise AnnotationError(
            f"depth file {path} has PIL mode {img.mode!r} ({img.format or 'unknown'} format); expected a 16-bit "
            "single-channel PNG of millimetres (PIL mode 'I;16'). 8-bit depth maps lose the scale: "
            "re-export them as 16-bit PNGs in mm"
        )
    try:
        mm = np.asarray(img).astype(np.float32)
    except Exception as e:
        raise T.CorruptImageError(f"cannot decode depth file {path}: {type(e).__name__}: {e}") from e
    return mm / DEPTH_PNG_SCALE


def check_same_size(image: np.ndarray, target: np.ndarray, record: dict[str, Any], target_key: str) -> None:
    if image.shape[:2] != target.shape[:2]:
        raise AnnotationError(
            f"image {record.get('path')} is {image.shape[1]}x{image.shape[0]} (WxH) but its {target_key} "
            f"{record.get(target_key + '_path')} is {target.shape[1]}x{target.shape[0]}"
        )


def resize(array: np.ndarray, hw: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    """PIL resize of a uint8 (H, W[, 3]) or float32 (H, W) array to (height, width)."""
    if array.shape[:2] == hw:
        return array
    return np.asarray(Image.fromarray(array).resize((hw[1], hw[0]), resample=resample))


def pad_to(array: np.ndarray, hw: tuple[int, int], fill: float, *, centered: bool = False) -> np.ndarray:
    """Pads (H, W, ...) with `fill` to at least (height, width): bottom/right, or evenly on both sides."""
    ph, pw = max(hw[0] - array.shape[0], 0), max(hw[1] - array.shape[1], 0)
    if not (ph or pw):
        return array
    top, left = (ph // 2, pw // 2) if centered else (0, 0)
    widths = [(top, ph - top), (left, pw - left)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, constant_values=fill)


def center_crop(array: np.ndarray, hw: tuple[int, int], fill: float = 0) -> np.ndarray:
    """The central (height, width) window; a smaller array is first padded evenly with `fill`."""
    array = pad_to(array, hw, fill, centered=True)
    top, left = (array.shape[0] - hw[0]) // 2, (array.shape[1] - hw[1]) // 2
    return array[top : top + hw[0], left : left + hw[1]]


def dense_example(image: np.ndarray, target_key: str, target: np.ndarray, valid: bool, corrupt: bool):
    return {
        "image": np.ascontiguousarray(image, np.float32),
        target_key: np.ascontiguousarray(target),
        "mask": np.bool_(valid),
        "_corrupt": np.int32(corrupt),
    }


class DenseTransform:
    """Base of the segmentation and depth transforms: output size, padding and corrupt files.

    Subclasses set `target_key`, `target_fill` and `target_dtype` and implement
    `_transform(record, rng) -> (image float32 normalized, target)` (rng None in eval).
    """

    target_key: str
    target_fill: float
    target_dtype: Any
    task: str  # the iterator fingerprint's "task" entry
    train: bool  # a `PipelineTransform` (nf.data.batching): train or eval examples

    def __init__(self, size: int | Sequence[int], on_corrupt: str):
        self.size = as_hw(size)
        T.check_choice("on_corrupt", on_corrupt, T.ON_CORRUPT)
        self.on_corrupt = on_corrupt

    def example_map(self) -> DenseTransform:
        return self

    def batch_map(self, source, loader) -> None:
        return None  # examples are normalized one by one (module docstring); batches are final

    def fingerprint(self) -> dict[str, Any]:
        return {"task": self.task}

    def _blank(self, corrupt: bool) -> dict[str, Any]:
        target = np.full(self.size, self.target_fill, self.target_dtype)
        return dense_example(np.zeros((*self.size, 3), np.float32), self.target_key, target, False, corrupt)

    def _transform(self, record: dict[str, Any], rng: np.random.Generator | None):
        raise NotImplementedError

    def _example(self, record: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        def make():
            image, target = self._transform(record, rng)
            return dense_example(image, self.target_key, target.astype(self.target_dtype), True, False)

        return T.guarded_example(record, make, self._blank, self.on_corrupt)
