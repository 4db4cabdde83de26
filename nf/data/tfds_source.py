"""TFDS datasets stored in the ArrayRecord file format as a random-access source of the same
records as `nf.data.sources` ({"image": encoded bytes, "label": int, "path": str}).

    data.train = "tfds:imagenet2012:train"       # NAME:SPLIT, TFDS slicing allowed ("train[:1%]")
    data.tfds_data_dir = "/data/tensorflow_datasets"   # default: TFDS's ($TFDS_DATA_DIR or ~/tensorflow_datasets)

Read through `tfds.data_source` (no TensorFlow, no download: the dataset must already be prepared
there, as big_vision and DeepMind's code hold ImageNet) with the image left encoded
(`tfds.decode.SkipDecoding`), so decoding and augmentation are the pipeline's own, as for image
folders. The features are chosen by type: the dataset's one `Image` feature, its one `ClassLabel`
(whose names are the classes, in the label order) and, when it has exactly one `Text` feature
(ImageNet's `file_name`), that text names the example. Random access makes it resumable like the
other sources: grain's iterator state is a position, not a file offset.
Needs the optional extra `tfds` (`pip install ".[tfds]"`: tensorflow-datasets).
"""

from __future__ import annotations

from typing import Any

from nf.data.source_base import DataSourceError, RecordFileSource

TFDS_PREFIX = "tfds:"
ARRAY_RECORD = "array_record"


def parse_tfds_spec(spec: str) -> tuple[str, str]:
    """`"tfds:NAME:SPLIT"` -> (NAME, SPLIT); NAME may name a config (`name/config`)."""
    body = spec[len(TFDS_PREFIX) :] if spec.startswith(TFDS_PREFIX) else spec
    name, sep, split = body.partition(":")
    if not sep or not name or not split:
        raise DataSourceError(f"{spec!r}: a TFDS source is written 'tfds:NAME:SPLIT', e.g. 'tfds:imagenet2012:train'")
    return name, split


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataSourceError(
            "a 'tfds:' data source needs tensorflow-datasets: pip install 'nf[tfds]' (or tensorflow-datasets)"
        ) from e
    return tfds


def _one_feature(features, kind: type, what: str, where: str, required: bool = True) -> str | None:
    names = [k for k, f in features.items() if isinstance(f, kind)]
    if len(names) == 1:
        return names[0]
    if not required and not names:
        return None
    raise DataSourceError(
        f"TFDS dataset {where} has {len(names) or 'no'} {what} features {names or ''} among "
        f"{sorted(features)}; nf reads datasets with exactly one (an image and a class label per example)"
    )


class TfdsImageSource(RecordFileSource):
    """A prepared TFDS dataset split (ArrayRecord files) as a source of {"image", "label", "path"}.

    Args:
      name: the dataset (`imagenet2012`, or `name/config`).
      split: the split, TFDS slicing allowed (`train`, `validation`, `train[:10%]`).
      data_dir: where the dataset was prepared (default: TFDS's data dir).
    """

    def __init__(self, name: str, split: str, data_dir: str | None = None):
        tfds = _import_tfds()
        self.name, self.split, self.data_dir = name, split, data_dir
        where = f"{name!r} in {data_dir or 'the default TFDS data dir'}"
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except Exception as e:  # DatasetNotFoundError, a bad name, an unreadable dataset_info.json
            raise DataSourceError(
                f"TFDS dataset {where} cannot be opened ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                "prepare it there first (`tfds build NAME --data_dir=DIR --file_format=array_record`) and set "
                "data.tfds_data_dir"
            ) from e
        info = builder.info
        if not builder.is_prepared():
            raise DataSourceError(
                f"TFDS dataset {where} is not prepared: run `tfds build {name} --data_dir=DIR "
                "--file_format=array_record` (nf never downloads at run time)"
            )
        file_format = str(getattr(info.file_format, "value", info.file_format))
        if file_format != ARRAY_RECORD:
            raise DataSourceError(
                f"TFDS dataset {where} is stored as {file_format}, which has no random access; convert it with "
                f"`tfds convert_format --root_data_dir=DIR --out_file_format={ARRAY_RECORD}`"
            )
        base_split = split.split("[")[0]
        if base_split not in info.splits:
            raise DataSourceError(f"TFDS dataset {where} has no split {base_split!r}; it has {sorted(info.splits)}")
        features = info.features
        self._image_key = _one_feature(features, tfds.features.Image, "Image", where)
        self._label_key = _one_feature(features, tfds.features.ClassLabel, "ClassLabel", where)
        self._name_key = _one_feature(features, tfds.features.Text, "Text", where, required=False)
        self.classes: list[str] = list(features[self._label_key].names)
        self._source = self._open()

    def _open(self):
        tfds = _import_tfds()
        return tfds.data_source(
            self.name,
            split=self.split,
            data_dir=self.data_dir,
            download=False,
            decoders={self._image_key: tfds.decode.SkipDecoding()},  # the encoded bytes
        )

    def __getstate__(self) -> dict[str, Any]:  # grain workers reopen the files instead of pickling readers
        return {k: v for k, v in self.__dict__.items() if k != "_source"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._source = self._open()

    def __getitem__(self, index) -> dict[str, Any]:
        index = int(index)
        example = self._source[index]
        where = f"{TFDS_PREFIX}{self.name}:{self.split}[{index}]"
        if self._name_key is not None:
            text = example[self._name_key]
            where += f" ({text.decode('utf-8') if isinstance(text, bytes) else text})"
        return {"image": bytes(example[self._image_key]), "label": int(example[self._label_key]), "path": where}

    def __repr__(self) -> str:
        return f"TfdsImageSource(name={self.name!r}, split={self.split!r}, len={len(self)}, classes={self.num_classes})"


def open_tfds_source(spec: str, data_dir: str | None = None) -> TfdsImageSource:
    """The source named by `"tfds:NAME:SPLIT"` (prepared under `data_dir`)."""
    name, split = parse_tfds_spec(spec)
    return TfdsImageSource(name, split, data_dir)
