"""The scikit-learn "digits" set (bundled with scikit-learn, no download) as an image folder.

1,797 grayscale 8x8 images of the digits 0-9 (UCI optdigits test set), pixel values 0..16,
saved as 8x8 PNGs scaled to 0..255 (`round(v * 255 / 16)`) in

    OUT/train/<digit>/<index:04d>.png   1,497 images
    OUT/test/<digit>/<index:04d>.png      300 images (30 per class)

The split is stratified and fixed: for each class, its examples (in the order of
`load_digits()`) are permuted with `numpy.random.default_rng(0)` and the first 30 go to test.
`<index>` is the example's row in `load_digits()`. The images stay 8x8; the pipeline resizes
them (bicubic) to the model's px. A marker file `OUT/.complete` (JSON) is written last; when it
is present `prepare_digits` does nothing, so it is safe to call on every run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

MARKER = ".complete"
TEST_PER_CLASS = 30
SPLIT_SEED = 0


def split_indices(labels: np.ndarray, test_per_class: int = TEST_PER_CLASS, seed: int = SPLIT_SEED):
    """Stratified split: (train indices, test indices), each sorted."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.extend(idx[:test_per_class])
        train.extend(idx[test_per_class:])
    return np.sort(np.asarray(train)), np.sort(np.asarray(test))


def _check_not_foreign(out: Path, writer: str) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):  # never delete a user's files
        raise FileExistsError(
            f"{str(out)!r} exists but has no {MARKER} marker, so it was not written by {writer}; "
            "remove it or pass another output folder"
        )


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: uint8 images (1797, 8, 8) scaled to 0..255 and int64 labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images, digits.target.astype(np.int64)


def write_once(
    out_dir: str | os.PathLike, write: Callable[[Path], dict], writer: str, settings: dict | None = None
) -> Path:
    """Runs `write(tmp)` into a temporary sibling of `out_dir`, writes the returned info (with
    `settings`) as the `MARKER` file and renames it into place; does nothing when `out_dir/MARKER`
    exists and was written with the same `settings` (other settings fail: remove the folder).

    An interrupted run leaves no half folder; a folder without the marker that holds files is
    never overwritten (`FileExistsError` naming `writer`); concurrent writers are fine.
    """
    out = Path(out_dir)
    if (out / MARKER).exists():
        saved = json.loads((out / MARKER).read_text()).get("settings")
        if settings is not None and saved != settings:
            raise ValueError(
                f"{str(out)!r} was written by {writer} with {saved}, not {settings}; "
                "remove it or pass another output folder"
            )
        return out
    _check_not_foreign(out, writer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the renamed folder should look like any other
    try:
        info = write(tmp) | ({"settings": settings} if settings is not None else {})
        (tmp / MARKER).write_text(json.dumps(info, indent=2))
        try:  # another process may finish first at any point here (the loser's OSError)
            if out.exists() and not (out / MARKER).exists():
                _check_not_foreign(out, writer)  # FileExistsError (an OSError) unless empty
                out.rmdir()
            os.replace(tmp, out)  # atomic: `out` appears complete, with its marker
        except OSError:
            if not (out / MARKER).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def prepare_digits(out_dir: str | os.PathLike = "data/digits") -> Path:
    """Writes the digits image folders under `out_dir` (if not already there); returns `out_dir`.

    Use `out_dir/train` and `out_dir/test` as `ImageFolderSource` roots.
    """
    return _write_classes(out_dir, [str(c) for c in range(10)], "prepare_digits")


PARITY = ["even", "odd"]  # class of digit d: PARITY[d % 2]


def prepare_digit_parity(out_dir: str | os.PathLike = "data/digit_parity") -> Path:
    """The same images and split as `prepare_digits`, in two classes: `even/` (0, 2, 4, 6, 8) and
    `odd/` (1, 3, 5, 7, 9). A new task on the same pixels, for fine-tuning a digits classifier
    onto another set of classes (configs/finetune_digits.py)."""
    return _write_classes(out_dir, [PARITY[d % 2] for d in range(10)], "prepare_digit_parity")


def _write_classes(out_dir: str | os.PathLike, class_of_digit: list[str], writer: str) -> Path:
    def write(tmp: Path) -> dict:
        from PIL import Image

        images, labels = load_digit_images()
        train, test = split_indices(labels)
        for split, indices in (("train", train), ("test", test)):
            for name in set(class_of_digit):
                (tmp / split / name).mkdir(parents=True, exist_ok=True)
            for i in indices:
                Image.fromarray(images[i]).save(tmp / split / class_of_digit[labels[i]] / f"{i:04d}.png")
        return {
            "source": "sklearn.datasets.load_digits",
            "image_shape": [8, 8],
            "pixel_scale": "round(v * 255 / 16)",
            "classes": {
                name: [d for d in range(10) if class_of_digit[d] == name] for name in sorted(set(class_of_digit))
            },
            "split": {"train": len(train), "test": len(test), "test_per_class": TEST_PER_CLASS, "seed": SPLIT_SEED},
        }

    return write_once(out_dir, write, writer)
