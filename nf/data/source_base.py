"""What the record-file sources share (`nf.data.sources`, `nf.data.tfds_source`): their error and
their `classes` / length bookkeeping."""

from __future__ import annotations

from typing import Any


class DataSourceError(ValueError):
    """A data source could not be built from what is on disk (message says where and why)."""


class RecordFileSource:
    """A classification source over a random-access reader of record files (`_source`): its
    `classes` (in label order) and length; subclasses turn a stored record into the common one."""

    classes: list[str]
    _source: Any

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self._source)
