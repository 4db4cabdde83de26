"""Digit scenes: the bundled digits composed into 64x64 segmentation + depth scenes (no download).

Each scene: a textured background on a tilted plane (depth c + gx*x + gy*y, c ~ U(4.5, 6) m,
|gx|, |gy| <= 1 m over the frame), and 1-4 digits (glyphs from `load_digit_images`: the
classification train split for train scenes, its test split for val scenes), each painted in a
random bright colour on a dark square plate, fronto-parallel at a random depth z ~ U(1, 2) m
(mm-quantized) and a random position inside the frame. Each digit class has its own physical
height (`DIGIT_HEIGHT`, 0.5-1.5 m), and a plate is `round(FOCAL * DIGIT_HEIGHT[d] / z)` px tall:
as with real objects, depth follows from the apparent size only once the object is recognised
("familiar size"); a class-blind guess from the size alone is off by up to 3x. Plates are painted
far to near, so a nearer plate occludes a farther one identically in the image, the mask and the
depth map. The mask labels the digit's strokes (0 = background, which includes the plate around
them; digit d = class d + 1: 11 classes); the depth map holds the whole plate.

    OUT/voc/JPEGImages/<id>.jpg, OUT/voc/SegmentationClass/<id>.png (palette),
    OUT/voc/ImageSets/Segmentation/{train,val}.txt         -> VOCSource(OUT/voc, split, num_classes=11)
    OUT/nyu/rgb/<id>.png, OUT/nyu/depth/<id>.png (16-bit mm),
    OUT/nyu/{train,test}.txt ('rgb/<id>.png depth/<id>.png') -> open_nyu(OUT/nyu, split)

Scene i of a split is a function of (seed, split, i) only. `OUT/.complete` (JSON settings) is
written last; `prepare_digit_scenes` is a no-op when it is present with the same settings.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from nf.data.digits import load_digit_images, split_indices, write_once
from nf.data.voc import save_label_png

SIZE = 64
NUM_CLASSES = 11  # background + 10 digits
FOCAL = 36.0  # px: a digit of height h m at depth z m is round(FOCAL * h / z) px tall
DIGIT_HEIGHT = tuple(round(0.5 * 3 ** (d / 9), 3) for d in range(10))  # metres, digit d: 0.5 ... 1.5
DIGIT_DEPTH = (1.0, 2.0)  # metres
PLATE_COLOR = (0, 40)  # dark plates, like the black frame of the classification digits
PLANE_OFFSET, PLANE_SLOPE = (4.5, 6.0), 1.0  # background plane: nearest point 3.5 m > any digit
MAX_DIGITS = 4
SPLITS = {"train": (0, "train"), "val": (1, "test")}  # scene split -> (rng stream, NYU list name)
VOC_DIR, NYU_DIR = "voc", "nyu"
_GRID = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE - 0.5  # (y, x) in [-0.5, 0.5)


def scene_background(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A textured RGB background (float 0..255) and its tilted-plane depth (metres)."""
    yy, xx = _GRID
    gx, gy = rng.uniform(-PLANE_SLOPE, PLANE_SLOPE, 2)
    depth = rng.uniform(*PLANE_OFFSET) + gx * xx + gy * yy
    image = np.broadcast_to(rng.uniform(50, 150, 3), (SIZE, SIZE, 3)).copy()
    for _ in range(3):  # oriented sinusoidal gratings, each tinting the channels differently
        fx, fy = rng.uniform(-6, 6, 2)
        wave = np.sin(2 * np.pi * (fx * xx + fy * yy) + rng.uniform(0, 2 * np.pi))
        image += wave[..., None] * rng.uniform(5, 25, 3)
    image += rng.normal(0, 6, image.shape)
    image *= (1.3 - 0.08 * depth)[..., None]  # farther parts of the plane are darker
    return np.clip(image, 0, 200), depth.astype(np.float32)


def glyph_mask(glyph: np.ndarray, size: int) -> np.ndarray:
    """An 8x8 digit image resized (bilinear) to size x size and thresholded at half intensity."""
    return np.asarray(Image.fromarray(glyph).resize((size, size), Image.Resampling.BILINEAR)) >= 128


def render_scene(
    glyphs: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """One scene from a pool of 8x8 uint8 glyphs and their digits.

    Returns (image uint8 (64, 64, 3), label uint8 (64, 64), depth float32 metres (64, 64),
    digits: [{"digit", "depth", "top", "left", "size", "glyph" (pool index), "color", "plate"}], far
    to near).
    """
    image, depth = scene_background(rng)
    label = np.zeros((SIZE, SIZE), np.uint8)
    digits = []
    for _ in range(int(rng.integers(1, MAX_DIGITS + 1))):
        g = int(rng.integers(len(glyphs)))
        z = round(float(rng.uniform(*DIGIT_DEPTH)), 3)  # mm-quantized: exact in a depth PNG
        size = round(FOCAL * DIGIT_HEIGHT[int(labels[g])] / z)
        top, left = (int(v) for v in rng.integers(0, SIZE - size + 1, 2))
        color = [int(c) for c in rng.integers(150, 256, 3)]
        color[int(rng.integers(3))] = 255  # bright: stands out from the <= 200 background
        digits.append({"digit": int(labels[g]), "depth": z, "top": top, "left": left, "size": size, "glyph": g})
        digits[-1]["color"] = color
        digits[-1]["plate"] = [int(c) for c in rng.integers(*PLATE_COLOR, 3)]
    digits.sort(key=lambda d: -d["depth"])  # painter's order: far to near
    for d in digits:
        window = np.s_[d["top"] : d["top"] + d["size"], d["left"] : d["left"] + d["size"]]
        on = glyph_mask(glyphs[d["glyph"]], d["size"])
        image[window], label[window], depth[window] = d["plate"], 0, d["depth"]  # the opaque plate
        image[window][on] = d["color"]  # the digit painted on it
        label[window][on] = d["digit"] + 1
    return np.rint(image).astype(np.uint8), label, depth, digits


def _write_split(out: Path, split: str, count: int, seed: int, glyphs: np.ndarray, labels: np.ndarray) -> None:
    stream, nyu_name = SPLITS[split]
    ids = [f"{split}_{i:05d}" for i in range(count)]
    for i, name in enumerate(ids):
        image, label, depth, _ = render_scene(glyphs, labels, np.random.default_rng([seed, stream, i]))
        Image.fromarray(image).save(out / VOC_DIR / "JPEGImages" / f"{name}.jpg", quality=95)
        save_label_png(label, out / VOC_DIR / "SegmentationClass" / f"{name}.png")
        Image.fromarray(image).save(out / NYU_DIR / "rgb" / f"{name}.png")
        Image.fromarray(np.rint(depth * 1000).astype(np.uint16)).save(out / NYU_DIR / "depth" / f"{name}.png")
    (out / VOC_DIR / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{n}\n" for n in ids))
    (out / NYU_DIR / f"{nyu_name}.txt").write_text("".join(f"rgb/{n}.png depth/{n}.png\n" for n in ids))


def prepare_digit_scenes(
    out_dir: str | os.PathLike = "data/digit_scenes", *, num_train: int = 2000, num_val: int = 400, seed: int = 0
) -> Path:
    """Writes the digit scenes under `out_dir` (module docstring) unless already there; returns it.

    Raises `ValueError` when `out_dir` holds scenes written with other settings.
    """
    settings = {  # the geometry too: any change to the scenes changes the settings
        "num_train": int(num_train),
        "num_val": int(num_val),
        "seed": int(seed),
        "size": SIZE,
        "focal": FOCAL,
        "digit_height": list(DIGIT_HEIGHT),
        "digit_depth": list(DIGIT_DEPTH),
        "plate_color": list(PLATE_COLOR),
    }
    if min(num_train, num_val) < 1:
        raise ValueError(f"num_train and num_val must be >= 1, got {num_train}, {num_val}")

    def write(tmp: Path) -> dict:
        for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
            (tmp / VOC_DIR / sub).mkdir(parents=True)
        for sub in ("rgb", "depth"):
            (tmp / NYU_DIR / sub).mkdir(parents=True)
        images, labels = load_digit_images()
        pools = dict(zip(("train", "val"), split_indices(labels)))  # the classification split
        for split, count in (("train", num_train), ("val", num_val)):
            _write_split(tmp, split, count, seed, images[pools[split]], labels[pools[split]])
        return {
            "num_classes": NUM_CLASSES,
            "classes": "0 = background, digit d = d + 1",
            "depth": "16-bit PNG, millimetres",
        }

    return write_once(out_dir, write, "prepare_digit_scenes", settings)
