"""A data string of a config (`data.train`, `data.eval`) -> its source: a TFDS dataset, an ArrayRecord
directory or an image folder."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from nf.data.sources import METADATA_FILE, ArrayRecordImageSource, DataSourceError, ImageFolderSource
from nf.data.tfds_source import TFDS_PREFIX, open_tfds_source


def open_source(path: str | os.PathLike, classes: Sequence[str] | None = None, tfds_data_dir: str | None = None):
    """A `TfdsImageSource` for `"tfds:NAME:SPLIT"` (prepared under `tfds_data_dir`), an
    `ArrayRecordImageSource` if `path` holds `metadata.json`, else an `ImageFolderSource`."""
    tfds_spec = str(path).startswith(TFDS_PREFIX)
    if tfds_spec or (Path(path) / METADATA_FILE).exists():
        source = open_tfds_source(str(path), tfds_data_dir) if tfds_spec else ArrayRecordImageSource(path)
        if classes is not None and list(classes) != source.classes:
            raise DataSourceError(
                f"{str(path)!r} was written with classes {source.classes[:5]}..., not the requested ones"
            )
        return source
    return ImageFolderSource(path, classes=classes)
