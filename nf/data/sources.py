"""Random-access data sources for image classification (grain `RandomAccessDataSource` protocol).

A source is an object with `__len__` and `__getitem__(i) -> record`. Every source here returns
the same record, so the transforms and the pipeline do not care where the bytes came from:

    {"image": bytes,   # the encoded file (JPEG/PNG/...), decoded later by the transform
     "label": int,     # index into `source.classes`
     "path": str}      # where the example came from (named in corrupt-image warnings/errors)

Sources:

* `ImageFolderSource(root)`: `root/<class>/<image>` (the ImageNet `train/<wnid>/*.JPEG` layout).
  Classes are the sub-folder names sorted by name; label = position in that sorted list.
* `ArrayRecordImageSource(dir)`: shards written by `nf-make-arrayrecord` (format below),
  read through `grain.sources.ArrayRecordDataSource`.

ArrayRecord record format ("NFI1", no TensorFlow, no pickle): one record per image, little-endian

    bytes 0..3   magic b"NFI1"
    bytes 4..7   uint32 label
    bytes 8..9   uint16 n = length of the UTF-8 path
    bytes 10..   n bytes of path (relative to the source folder), then the encoded image bytes

The shard directory also holds `metadata.json` ({"format": "NFI1", "classes": [...],
"num_records": N, "shards": [file names in order]}). Records are written in the folder
source's order (class by class, files sorted), split into contiguous shards, so global record i
of the ArrayRecord source is record i of the `ImageFolderSource` it was made from.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from nf.data.source_base import DataSourceError, RecordFileSource

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")

RECORD_MAGIC = b"NFI1"
_HEADER = struct.Struct("<4sIH")  # magic, label, path length
METADATA_FILE = "metadata.json"
SHARD_PATTERN = "images.array_record-{index:05d}-of-{count:05d}"


def encode_record(image: bytes, label: int, path: str) -> bytes:
    """Serializes one example in the NFI1 format (see module docstring)."""
    path_bytes = path.encode("utf-8")
    if len(path_bytes) > 0xFFFF:
        raise ValueError(f"path longer than 65535 bytes cannot be stored: {path[:80]}...")
    return _HEADER.pack(RECORD_MAGIC, int(label), len(path_bytes)) + path_bytes + bytes(image)


def decode_record(record: bytes) -> dict[str, Any]:
    """Inverse of `encode_record`: returns {"image": bytes, "label": int, "path": str}."""
    if len(record) < _HEADER.size or record[:4] != RECORD_MAGIC:
        raise DataSourceError(
            f"ArrayRecord entry is not an NFI1 image record (starts with {bytes(record[:4])!r}); "
            "shards must be written by nf-make-arrayrecord"
        )
    _, label, n = _HEADER.unpack_from(record)
    start = _HEADER.size
    path = bytes(record[start : start + n]).decode("utf-8")
    return {"image": bytes(record[start + n :]), "label": int(label), "path": path}


def _is_image_file(name: str, extensions: Sequence[str]) -> bool:
    return not name.startswith(".") and name.lower().endswith(tuple(extensions))


def scan_image_folder(
    root: str | os.PathLike, classes: Sequence[str] | None = None, extensions: Sequence[str] = IMAGE_EXTENSIONS
) -> tuple[list[str], list[str], list[int]]:
    """Lists `root/<class>/<image>`: returns (classes, relative paths, labels), in source order.

    Raises `DataSourceError` naming `root` when it is missing, not a directory, has no class
    sub-folders, or has no image file in any class.
    """
    root = Path(root)
    expected = f"one sub-folder per class holding image files ({', '.join(extensions)})"
    if not root.exists():
        raise DataSourceError(f"image folder {str(root)!r} does not exist; expected a directory with {expected}")
    if not root.is_dir():
        raise DataSourceError(f"image folder {str(root)!r} is not a directory; expected a directory with {expected}")
    found = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if classes is None:
        classes = found
        if not classes:
            stray = sum(1 for e in os.scandir(root) if e.is_file() and _is_image_file(e.name, extensions))
            hint = f" (it holds {stray} image files directly: move them into class sub-folders)" if stray else ""
            raise DataSourceError(f"image folder {str(root)!r} has no class sub-folders{hint}; expected {expected}")
    else:
        classes = list(classes)
        missing = [c for c in classes if c not in found]
        if len(missing) == len(classes):
            raise DataSourceError(
                f"image folder {str(root)!r} has none of the {len(classes)} requested class sub-folders "
                f"(e.g. {classes[:3]}); found {found[:5]}"
            )
    paths: list[str] = []
    labels: list[int] = []
    empty = []
    for label, name in enumerate(classes):
        class_dir = root / name
        files = (
            sorted(e.name for e in os.scandir(class_dir) if e.is_file() and _is_image_file(e.name, extensions))
            if class_dir.is_dir()
            else []
        )
        if not files:
            empty.append(name)
        paths.extend(f"{name}/{f}" for f in files)
        labels.extend([label] * len(files))
    if not paths:
        raise DataSourceError(
            f"image folder {str(root)!r} has {len(classes)} class sub-folders but no image files in any of them "
            f"(looked for {', '.join(extensions)})"
        )
    if empty:
        logging.warning(
            "image folder %s: %d of %d classes have no images: %s%s",
            root,
            len(empty),
            len(classes),
            empty[:10],
            " ..." if len(empty) > 10 else "",
        )
    return list(classes), paths, labels


def read_list_file(path: str | os.PathLike, what: str) -> list[tuple[int, list[str]]]:
    """A text list (one entry a line, fields split on commas or whitespace; blank lines and lines
    starting with '#' skipped) -> [(line number, fields)]. Raises `DataSourceError` naming `path`
    when it is missing or lists nothing; `what` says what the list should be, for the message."""
    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"list file {str(path)!r} does not exist; expected {what}")
    entries = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append((lineno, line.replace(",", " ").split()))
    if not entries:
        raise DataSourceError(f"list file {str(path)!r} lists nothing; expected {what}")
    return entries


def read_bytes(path: str, key: str) -> dict[str, Any]:
    """{key: file bytes}, or {key: b"", key_read_error: why} (reported by the transform, which names
    the file and honours on_corrupt)."""
    try:
        with open(path, "rb") as f:
            return {key: f.read()}
    except OSError as e:
        prefix = "" if key == "image" else f"{key}_"
        return {key: b"", f"{prefix}read_error": f"{type(e).__name__}: {e}"}


class ImageFolderSource:
    """`root/<class>/<image>` as a random-access source of {"image": bytes, "label", "path"}.

    Only the file list is held in memory (as compact numpy arrays, so pickling the source into
    grain worker processes stays cheap); the bytes are read in `__getitem__`, i.e. in the worker.

    Args:
      root: the folder.
      classes: optional class (sub-folder) names fixing the label order, e.g. the training
        set's classes when building the validation source. Default: sorted sub-folders.
      extensions: file name endings (case-insensitive) that count as images.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        classes: Sequence[str] | None = None,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ):
        self.root = str(root)
        self.classes, paths, labels = scan_image_folder(root, classes, extensions)
        self._paths = np.array([p.encode("utf-8") for p in paths], dtype=np.bytes_)
        self._labels = np.asarray(labels, dtype=np.int32)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def relpath(self, index: int) -> str:
        return self._paths[index].decode("utf-8")

    def __len__(self) -> int:
        return len(self._paths)

    def __getitem__(self, index) -> dict[str, Any]:
        index = int(index)
        path = os.path.join(self.root, self.relpath(index))
        # A read error is reported by the transform like an undecodable image (skip or error).
        return {**read_bytes(path, "image"), "label": int(self._labels[index]), "path": path}

    def __repr__(self) -> str:
        return f"ImageFolderSource(root={self.root!r}, len={len(self)}, num_classes={self.num_classes})"


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
    directory = Path(directory)
    meta_path = directory / METADATA_FILE
    if not directory.is_dir():
        raise DataSourceError(
            f"ArrayRecord directory {str(directory)!r} does not exist; expected the output of "
            "`nf-make-arrayrecord --src=IMAGE_FOLDER --dst=DIR`"
        )
    if not meta_path.exists():
        raise DataSourceError(
            f"{str(meta_path)!r} is missing; expected a directory written by nf-make-arrayrecord "
            f"(it holds {len(list(directory.iterdir()))} entries)"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != "NFI1":
        raise DataSourceError(f"{str(meta_path)!r}: unknown record format {meta.get('format')!r} (expected 'NFI1')")
    return meta


class ArrayRecordImageSource(RecordFileSource):
    """ArrayRecord shards from `nf-make-arrayrecord` as a source of {"image", "label", "path"}.

    Args:
      directory: the `--dst` directory (holds `metadata.json` and the shards).
    """

    def __init__(self, directory: str | os.PathLike):
        import grain

        self.directory = str(directory)
        meta = read_metadata(directory)
        self.classes: list[str] = list(meta["classes"])
        shard_paths = [os.path.join(self.directory, s) for s in meta["shards"]]
        missing = [p for p in shard_paths if not os.path.exists(p)]
        if missing:
            raise DataSourceError(
                f"ArrayRecord directory {self.directory!r} is missing shards listed in metadata.json: {missing[:3]}"
            )
        if not shard_paths or meta["num_records"] == 0:
            raise DataSourceError(f"ArrayRecord directory {self.directory!r} holds no records")
        self._source = grain.sources.ArrayRecordDataSource(shard_paths)
        if len(self._source) != meta["num_records"]:
            raise DataSourceError(
                f"ArrayRecord directory {self.directory!r}: shards hold {len(self._source)} records but "
                f"metadata.json says {meta['num_records']}; rewrite it with nf-make-arrayrecord"
            )

    def __getitem__(self, index) -> dict[str, Any]:
        record = decode_record(self._source[int(index)])
        record["path"] = f"{self.directory}::{record['path']}"
        return record

    def __repr__(self) -> str:
        return f"ArrayRecordImageSource(directory={self.directory!r}, len={len(self)}, num_classes={self.num_classes})"


def write_arrayrecord(
    source: ImageFolderSource, dst: str | os.PathLike, num_shards: int = 1, *, log_every: int = 10_000
) -> Path:
    """Writes `source` as NFI1 ArrayRecord shards plus `metadata.json` into `dst`; returns `dst`.

    Records keep the source order and are split into `num_shards` contiguous shards (written with
    `group_size:1`, uncompressed: the image bytes are already compressed, and grain needs group
    size 1 for fast random access). `metadata.json` is written last, so a directory without it is
    an unfinished conversion. The image bytes are copied as they are (not decoded or checked).
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    n = len(source)
    if not 1 <= num_shards <= n:
        raise ValueError(f"num_shards must be in [1, {n}] for {n} images, got {num_shards}")
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    if (dst / METADATA_FILE).exists():
        raise FileExistsError(f"{str(dst)!r} already holds an ArrayRecord dataset ({METADATA_FILE}); remove it first")
    names = [SHARD_PATTERN.format(index=i, count=num_shards) for i in range(num_shards)]
    bounds = [round(i * n / num_shards) for i in range(num_shards + 1)]
    for i, name in enumerate(names):
        writer = ArrayRecordWriter(str(dst / name), "group_size:1,uncompressed")
        try:
            for j in range(bounds[i], bounds[i + 1]):
                record = source[j]
                if "read_error" in record:
                    raise DataSourceError(f"cannot read {record['path']}: {record['read_error']}")
                writer.write(encode_record(record["image"], record["label"], source.relpath(j)))
                if log_every and (j + 1) % log_every == 0:
                    logging.info("wrote %d / %d records", j + 1, n)
        finally:
            writer.close()
    meta = {"format": "NFI1", "classes": source.classes, "num_records": n, "shards": names, "source": source.root}
    (dst / METADATA_FILE).write_text(json.dumps(meta, indent=1))
    return dst
