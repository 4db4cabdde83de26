"""Semantic segmentation inputs (paper App. H, the FCN protocol on Pascal VOC).

Train: random scale s ~ U(0.5, 2.0) (image bilinear, mask nearest) -> horizontal flip (p=0.5)
-> normalize -> pad bottom/right to the crop size (image 0 = the mean colour after normalization,
label 255) -> random crop. Eval: normalize -> centre crop, padding evenly when smaller (so VOC's
<= 500 px images evaluate whole inside a 513 crop).

Batch format (B = per-process batch size, (H, W) = crop size):

    image  float32 (B, H, W, 3)  normalized like classification (`transforms.normalize`)
    label  int32   (B, H, W)     class index; 255 = ignore (void, padding, blank slots)
    mask   bool    (B,)          False for eval padding of the last batch / a skipped corrupt file
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain
import numpy as np

from nf.data import dense as D
from nf.data import transforms as T


class _SegmentationTransform(D.DenseTransform):
    target_key, target_fill, target_dtype = "label", D.IGNORE_LABEL, np.int32
    task = "segmentation"

    def __init__(self, crop_size: int | Sequence[int], num_classes: int, on_corrupt: str):
        super().__init__(crop_size, on_corrupt)
        if not 1 <= num_classes <= D.IGNORE_LABEL:
            raise ValueError(f"num_classes must be in [1, {D.IGNORE_LABEL}], got {num_classes}")
        self.num_classes = int(num_classes)

    def _load(self, record: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        image = D.load_rgb(record)
        label_path = record.get("label_path", "<mask>")
        label = D.decode_label_map(record["label"], label_path, self.num_classes, record.get("label_read_error"))
        D.check_same_size(image, label, record, "label")
        return image, label


class SegmentationTrainTransform(_SegmentationTransform, grain.transforms.RandomMap):
    """Random scale, flip, pad and random crop of an image and its mask together (module docstring).

    Args:
      crop_size: output (height, width) or side.
      num_classes: mask values must lie in [0, num_classes) or be 255.
      scale_range: the random rescale factor's range (relative to the original image).
      hflip: random left-right flip with p=0.5.
      on_corrupt: "error" or "skip" for undecodable files (as in classification); bad mask
        values or mismatched sizes always raise `AnnotationError`.
    """

    train = True

    def __init__(
        self,
        crop_size: int | Sequence[int],
        num_classes: int,
        *,
        scale_range: Sequence[float] = (0.5, 2.0),
        hflip: bool = True,
        on_corrupt: str = "error",
    ):
        super().__init__(crop_size, num_classes, on_corrupt)
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must satisfy 0 < lo <= hi, got {scale_range}")
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.hflip = hflip

    def _transform(self, record: dict[str, Any], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        image, label = self._load(record)
        scale = rng.uniform(*self.scale_range)
        hw = (max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale)))
        image, label = D.resize(image, hw, D.BILINEAR), D.resize(label, hw, D.NEAREST)
        if self.hflip and rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        # Crop from the image padded bottom/right to the crop size (image 0 = the mean colour after
        # normalization, label 255); only the window is normalized and the padding never built.
        (h, w), (ch, cw) = hw, self.size
        top = int(rng.integers(0, max(h, ch) - ch + 1))
        left = int(rng.integers(0, max(w, cw) - cw + 1))
        window = np.s_[top : top + ch, left : left + cw]
        return D.pad_to(T.normalize(image[window]), self.size, 0.0), D.pad_to(label[window], self.size, D.IGNORE_LABEL)

    def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        return self._example(record, rng)


class SegmentationEvalTransform(_SegmentationTransform, grain.transforms.Map):
    """Deterministic centre crop (padded evenly with 0 / label 255 when smaller) at `crop_size`."""

    train = False

    def __init__(self, crop_size: int | Sequence[int], num_classes: int, *, on_corrupt: str = "error"):
        super().__init__(crop_size, num_classes, on_corrupt)

    def _transform(self, record: dict[str, Any], rng: None) -> tuple[np.ndarray, np.ndarray]:
        image, label = self._load(record)
        return D.center_crop(T.normalize(image), self.size, 0.0), D.center_crop(label, self.size, D.IGNORE_LABEL)

    def map(self, record: dict[str, Any]) -> dict[str, Any]:
        return self._example(record, None)
