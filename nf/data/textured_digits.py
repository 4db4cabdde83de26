"""Textured digits: the bundled digits painted onto textured colour backgrounds, as an image folder.

A harder embedded classification set than the plain digits (no download): each glyph of the
digits split (`nf.data.digits`: 1,497 train / 300 test, same stratified split) is resized to a
random height of 16-28 px, thresholded and painted in a random bright colour at a random place on
a 32x32 textured background (the digit scenes' background: a random base colour, three oriented
sinusoidal gratings and pixel noise, `nf.data.scenes`), with no plate behind it. Unlike the plain
digits (white strokes on black, near-identical image statistics), every image has its own mean,
contrast and colour, as natural photographs do: the per-image statistics a batch of 4 averages
over vary a lot from batch to batch.

    OUT/train/<digit>/<index:04d>.png   1,497 RGB images
    OUT/test/<digit>/<index:04d>.png      300 RGB images (30 per class)

Image i of a split is a function of (seed, split, i) only. `OUT/.complete` (JSON settings) is
written last; `prepare_textured_digits` does nothing when it is there with the same settings.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from nf.data.digits import load_digit_images, split_indices, write_once
from nf.data.scenes import SIZE as SCENE_SIZE
from nf.data.scenes import glyph_mask, scene_background

SIZE = 32
DIGIT_SIZE = (16, 28)  # px, inclusive
SPLITS = {"train": 0, "test": 1}  # split -> rng stream


def render_textured_digit(glyph: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One 8x8 uint8 glyph painted on a textured background: uint8 (32, 32, 3)."""
    background, _ = scene_background(rng)  # float (64, 64, 3), 0..200
    image = background.reshape(SIZE, SCENE_SIZE // SIZE, SIZE, SCENE_SIZE // SIZE, 3).mean(axis=(1, 3))
    size = int(rng.integers(DIGIT_SIZE[0], DIGIT_SIZE[1] + 1))
    top, left = (int(v) for v in rng.integers(0, SIZE - size + 1, 2))
    color = rng.integers(150, 256, 3)
    color[int(rng.integers(3))] = 255  # bright: stands out from the <= 200 background
    window = image[top : top + size, left : left + size]
    window[glyph_mask(glyph, size)] = color
    return np.rint(image).astype(np.uint8)


def prepare_textured_digits(out_dir: str | os.PathLike = "data/textured_digits", *, seed: int = 0) -> Path:
    """Writes the textured digits image folders under `out_dir` unless already there; returns it.

    Use `out_dir/train` and `out_dir/test` as `ImageFolderSource` roots. Raises `ValueError` when
    `out_dir` holds images written with other settings.
    """
    settings = {"seed": int(seed), "size": SIZE, "digit_size": list(DIGIT_SIZE)}

    def write(tmp: Path) -> dict:
        glyphs, labels = load_digit_images()
        for split, indices in zip(SPLITS, split_indices(labels)):
            for c in range(10):
                (tmp / split / str(c)).mkdir(parents=True, exist_ok=True)
            for i in indices:
                image = render_textured_digit(glyphs[i], np.random.default_rng([seed, SPLITS[split], int(i)]))
                Image.fromarray(image).save(tmp / split / str(labels[i]) / f"{i:04d}.png")
        return {"source": "sklearn.datasets.load_digits on nf.data.scenes backgrounds"}

    return write_once(out_dir, write, "prepare_textured_digits", settings)
