"""NYU Depth v2 sources (dataset layout): the labeled `.mat` file, or RGB + 16-bit depth PNG pairs.

* `NYUMatSource(path, split)`: `nyu_depth_v2_labeled.mat` is HDF5 (MATLAB v7.3). As read by h5py,
  `images` is (N, 3, 640, 480) uint8 and `depths` (N, 640, 480) float metres -- MATLAB's
  column-major (480, 640, 3, N) reversed -- so example i is `images[i].transpose(2, 1, 0)`
  (480, 640, 3) and `depths[i].T` (480, 640). Splits: "all", or "train" / "test" (the standard
  795 / 654) from a split file: the official `splits.mat` (`trainNdxs`, `testNdxs`; MATLAB v5 or
  v7.3), found next to the labeled file by default, or a text file of 1-based indices (one per
  line or whitespace-separated, as in splits.mat). Or pass 0-based `indices=` directly.
* `NYUPairSource(list_file)`: lines `rgb_path depth_path` (whitespace or comma separated; a first
  line without image file names, e.g. a CSV header, is skipped), paths relative to the list's
  folder (absolute paths kept). Depth PNGs are 16-bit millimetres, 0 = invalid.
* `open_nyu(path, split)` picks the kind: an HDF5 file -> `NYUMatSource`; a text file ->
  `NYUPairSource`; a folder -> `NYUPairSource(folder/<split>.txt)`.

Records: {"image": uint8 (H, W, 3) array or encoded bytes, "depth": float32 metres (H, W) or PNG
bytes, "path", "depth_path"} -- both decoded by `nf.data.depth`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nf.data.sources import IMAGE_EXTENSIONS, DataSourceError, read_bytes, read_list_file

SPLITS = ("all", "train", "test")
SPLIT_KEYS = {"train": "trainNdxs", "test": "testNdxs"}
SPLIT_FILE = "splits.mat"


def _load_split_mat(path: Path, key: str) -> np.ndarray:
    import h5py

    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as f:
            if key not in f:
                raise DataSourceError(f"split file {str(path)!r} has no {key!r} (keys: {sorted(f.keys())})")
            return np.asarray(f[key]).ravel()
    from scipy.io import loadmat

    try:
        mat = loadmat(path, variable_names=[key])
    except Exception as e:
        raise DataSourceError(f"cannot read split file {str(path)!r} as a .mat file: {type(e).__name__}: {e}") from e
    if key not in mat:
        raise DataSourceError(f"split file {str(path)!r} has no {key!r}; expected the NYU splits.mat")
    return np.asarray(mat[key]).ravel()


def read_split(path: str | os.PathLike, split: str, num_examples: int) -> np.ndarray:
    """0-based indices of `split` ("train"/"test") from a splits.mat or a text file of 1-based indices."""
    path = Path(path)
    if not path.is_file():
        raise DataSourceError(
            f"NYU split file {str(path)!r} does not exist; pass split_file= (the official splits.mat, or a text "
            "file of 1-based indices), indices=, or split='all'"
        )
    if path.suffix == ".mat":
        one_based = _load_split_mat(path, SPLIT_KEYS[split])
    else:
        try:
            one_based = np.array([int(v) for v in path.read_text().split()])
        except ValueError as e:
            raise DataSourceError(f"split file {str(path)!r} must hold integers (1-based indices): {e}") from e
    one_based = one_based.astype(np.int64)
    if one_based.size == 0 or one_based.min() < 1 or one_based.max() > num_examples:
        lo, hi = (int(one_based.min()), int(one_based.max())) if one_based.size else (None, None)
        raise DataSourceError(
            f"split file {str(path)!r} ({split}): indices must be 1-based in [1, {num_examples}] (MATLAB convention), "
            f"got range [{lo}, {hi}] over {one_based.size} entries"
        )
    return one_based - 1


class NYUMatSource:
    """The labeled NYU Depth v2 `.mat` (HDF5) as records {"image": uint8 HWC, "depth": float32 m}.

    Args:
      path: the labeled `.mat` file.
      split: "all", "train" or "test" (module docstring).
      split_file: the split file for "train"/"test"; default `splits.mat` next to `path`.
      indices: 0-based example indices; overrides split / split_file.
    The HDF5 file is opened lazily in each process (h5py handles do not pickle into grain workers).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        split: str = "all",
        *,
        split_file: str | os.PathLike | None = None,
        indices: Sequence[int] | None = None,
    ):
        import h5py

        self.path = str(path)
        if not h5py.is_hdf5(self.path):
            why = "does not exist" if not os.path.exists(self.path) else "is not an HDF5 (MATLAB v7.3) file"
            raise DataSourceError(f"NYU labeled file {self.path!r} {why}; expected nyu_depth_v2_labeled.mat")
        with h5py.File(self.path, "r") as f:
            missing = [k for k in ("images", "depths") if k not in f]
            if missing:
                raise DataSourceError(f"{self.path!r} has no dataset(s) {missing}; keys: {sorted(f.keys())}")
            images, depths = f["images"].shape, f["depths"].shape
        if len(images) != 4 or images[1] != 3 or len(depths) != 3 or images[0] != depths[0] or images[2:] != depths[1:]:
            raise DataSourceError(
                f"{self.path!r}: images {images} / depths {depths} are not (N, 3, W, H) / (N, W, H) as h5py reads "
                "the labeled NYU file"
            )
        self.num_total = images[0]
        if indices is not None:
            chosen = np.asarray(indices, np.int64)
            if chosen.size and (chosen.min() < 0 or chosen.max() >= self.num_total):
                raise ValueError(
                    f"indices must be 0-based in [0, {self.num_total}), got [{chosen.min()}, {chosen.max()}]"
                )
        elif split == "all":
            chosen = np.arange(self.num_total)
        elif split in SPLIT_KEYS:
            chosen = read_split(split_file or Path(self.path).with_name(SPLIT_FILE), split, self.num_total)
        else:
            raise ValueError(f"split={split!r} is not one of {list(SPLITS)}")
        self.indices = chosen
        self._file = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_file": None}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index) -> dict[str, Any]:
        if self._file is None:
            import h5py

            self._file = h5py.File(self.path, "r")
        j = int(self.indices[int(index)])
        image = np.ascontiguousarray(self._file["images"][j].transpose(2, 1, 0))  # (3, W, H) -> (H, W, 3)
        depth = np.ascontiguousarray(self._file["depths"][j].T, np.float32)  # (W, H) -> (H, W) metres
        where = f"{self.path}[{j}]"
        return {"image": image, "depth": depth, "path": where, "depth_path": where}

    def __repr__(self) -> str:
        return f"NYUMatSource(path={self.path!r}, len={len(self)})"


def _is_header(fields: list[str]) -> bool:
    return not any(f.lower().endswith(IMAGE_EXTENSIONS) for f in fields)


class NYUPairSource:
    """RGB + 16-bit depth PNG pairs named by a list file, as records {"image": bytes, "depth": bytes}.

    Every listed file must exist (checked here: the error names the list file, its line and the
    missing path); the depth bit depth is checked when decoded (`nf.data.dense.decode_depth_png`).
    """

    def __init__(self, list_file: str | os.PathLike):
        self.list_file = str(list_file)
        entries = read_list_file(list_file, "lines 'rgb_path depth_path' relative to the list's folder")
        if _is_header(entries[0][1]):
            entries = entries[1:]
        base = os.path.dirname(os.path.abspath(self.list_file))
        rgb, depth = [], []
        for lineno, fields in entries:
            if len(fields) < 2:
                raise DataSourceError(
                    f"list file {self.list_file!r} line {lineno}: expected 'rgb_path depth_path', got {fields}"
                )
            for path in (pair := [os.path.join(base, f) for f in fields[:2]]):
                if not os.path.isfile(path):
                    raise DataSourceError(f"list file {self.list_file!r} line {lineno} names a missing file {path!r}")
            rgb.append(pair[0])
            depth.append(pair[1])
        if not rgb:
            raise DataSourceError(f"list file {self.list_file!r} lists no image pairs")
        self._rgb = np.array([p.encode("utf-8") for p in rgb], dtype=np.bytes_)
        self._depth = np.array([p.encode("utf-8") for p in depth], dtype=np.bytes_)

    def __len__(self) -> int:
        return len(self._rgb)

    def __getitem__(self, index) -> dict[str, Any]:
        index = int(index)
        path, depth_path = self._rgb[index].decode("utf-8"), self._depth[index].decode("utf-8")
        return {**read_bytes(path, "image"), **read_bytes(depth_path, "depth"), "path": path, "depth_path": depth_path}

    def __repr__(self) -> str:
        return f"NYUPairSource(list_file={self.list_file!r}, len={len(self)})"


def open_nyu(
    path: str | os.PathLike,
    split: str = "train",
    *,
    split_file: str | os.PathLike | None = None,
    indices: Sequence[int] | None = None,
) -> NYUMatSource | NYUPairSource:
    """The NYU source for `path`: HDF5 `.mat` -> `NYUMatSource(path, split)`; a list file ->
    `NYUPairSource(path)` (the list is the split); a folder -> `NYUPairSource(path/<split>.txt)`."""
    import h5py

    p = Path(path)
    if p.is_dir():
        return NYUPairSource(p / f"{split}.txt")
    if p.suffix == ".mat" or (p.is_file() and h5py.is_hdf5(p)):
        return NYUMatSource(p, split, split_file=split_file, indices=indices)
    if not p.exists():
        raise DataSourceError(
            f"NYU path {str(p)!r} does not exist; expected the labeled .mat file, a list file of "
            "'rgb_path depth_path' lines, or a folder holding <split>.txt"
        )
    return NYUPairSource(p)
