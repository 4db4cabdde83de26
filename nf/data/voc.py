"""Pascal VOC 2012 segmentation in its folder format (dataset layout), as a grain source.

    ROOT/JPEGImages/<id>.jpg
    ROOT/SegmentationClass/<id>.png        palette PNG: pixel value = class index, 255 = void
    ROOT/ImageSets/Segmentation/<split>.txt  one id a line (train: 1,464, val: 1,449)

The "aug" training set (10,582 ids) is `VOCSource(root, "train_aug", mask_dir="SegmentationClassAug")`
with its list at `ImageSets/Segmentation/train_aug.txt` (or pass `list_file=`). A list line may
also be a path such as `/JPEGImages/2007_000032.jpg ...`; its file stem is the id.
"""

from __future__ import annotations

import functools
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from nf.data.sources import DataSourceError, read_bytes, read_list_file

VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)


@functools.cache
def voc_palette() -> tuple[int, ...]:
    """The VOC colour map (768 ints: RGB of indices 0..255): class bits spread over the RGB bits."""
    palette = []
    for index in range(256):
        rgb, c = [0, 0, 0], index
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << shift
            c >>= 3
        palette.extend(rgb)
    return tuple(palette)


def save_label_png(label: np.ndarray, path: str | os.PathLike | io.BytesIO) -> None:
    """Writes a uint8 class-index mask (H, W) as a VOC palette PNG (pixel value = class index)."""
    label = np.ascontiguousarray(label, np.uint8)
    image = Image.frombytes("P", (label.shape[1], label.shape[0]), label.tobytes())
    image.putpalette(voc_palette())
    image.save(path, format="PNG")


class VOCSource:
    """A VOC-format split as records {"image": bytes, "label": bytes, "path", "label_path"}.

    Every listed image and mask must exist (checked here, so a wrong list fails before training,
    naming the list file, the id and the missing path). Mask values are checked when decoded
    (`nf.data.dense.decode_label_map`).

    Args:
      root: the folder holding JPEGImages/, SegmentationClass/, ImageSets/.
      split: the list name, `ImageSets/Segmentation/<split>.txt`.
      num_classes: valid mask values are [0, num_classes) and 255; 21 for VOC.
      mask_dir: "SegmentationClass" or "SegmentationClassAug".
      list_file: overrides the list path given by `split`.
      image_dir, image_ext, mask_ext: other layouts of the same format.
    """

    ignore_label = 255

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        num_classes: int = len(VOC_CLASSES),
        mask_dir: str = "SegmentationClass",
        list_file: str | os.PathLike | None = None,
        image_dir: str = "JPEGImages",
        image_ext: str = ".jpg",
        mask_ext: str = ".png",
    ):
        self.root = str(root)
        if not Path(root).is_dir():
            raise DataSourceError(
                f"VOC folder {self.root!r} does not exist; "
                f"expected {image_dir}/, {mask_dir}/ and ImageSets/Segmentation/"
            )
        self.list_file = str(list_file or Path(root) / "ImageSets" / "Segmentation" / f"{split}.txt")
        self.num_classes = int(num_classes)
        self.classes = VOC_CLASSES if num_classes == len(VOC_CLASSES) else tuple(str(c) for c in range(num_classes))
        self._image_dir, self._mask_dir = os.path.join(self.root, image_dir), os.path.join(self.root, mask_dir)
        self._image_ext, self._mask_ext = image_ext, mask_ext
        entries = read_list_file(self.list_file, f"one image id a line (ids of {image_dir}/<id>{image_ext})")
        ids = [Path(fields[0]).stem if "/" in fields[0] else fields[0] for _, fields in entries]
        for folder, ext in ((self._image_dir, image_ext), (self._mask_dir, mask_ext)):
            present = {e.name for e in os.scandir(folder)} if os.path.isdir(folder) else set()
            missing = [(n, i) for (n, _), i in zip(entries, ids) if i + ext not in present]
            if missing:
                lineno, first = missing[0]
                raise DataSourceError(
                    f"list file {self.list_file!r} names {len(missing)} id(s) with no file in {folder}: "
                    f"line {lineno} id {first!r} -> missing {os.path.join(folder, first + ext)!r}"
                )
        self._ids = np.array([i.encode("utf-8") for i in ids], dtype=np.bytes_)

    def id(self, index: int) -> str:
        return self._ids[index].decode("utf-8")

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index) -> dict[str, Any]:
        name = self.id(int(index))
        path = os.path.join(self._image_dir, name + self._image_ext)
        label_path = os.path.join(self._mask_dir, name + self._mask_ext)
        return {**read_bytes(path, "image"), **read_bytes(label_path, "label"), "path": path, "label_path": label_path}

    def __repr__(self) -> str:
        return f"VOCSource(list_file={self.list_file!r}, len={len(self)}, num_classes={self.num_classes})"
