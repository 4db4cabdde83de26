"""Input pipelines: grain sources, numpy/PIL transforms, deterministic checkpointable batches.

from nf import data
source = data.ImageFolderSource(data.prepare_digits("data/digits") / "train")
it = data.make_pipeline(source, train=True, batch_size=128, image_size=32, seed=0)
batch = next(it)  # {"image", "label", "label_onehot", "mask"}: see nf.data.pipeline
"""

from nf.data.digits import prepare_digits
from nf.data.pipeline import DataIterator, make_dataset, make_pipeline, steps_per_epoch
from nf.data.randaugment import RandAugment
from nf.data.sources import (
    ArrayRecordImageSource,
    DataSourceError,
    ImageFolderSource,
    decode_record,
    encode_record,
    open_source,
    write_arrayrecord,
)
from nf.data.transforms import (
    CorruptImageError,
    EvalTransform,
    TrainTransform,
    decode_image,
    denormalize,
    mix_batch,
    normalize,
)

__all__ = [
    "ArrayRecordImageSource",
    "CorruptImageError",
    "DataIterator",
    "DataSourceError",
    "EvalTransform",
    "ImageFolderSource",
    "RandAugment",
    "TrainTransform",
    "decode_image",
    "decode_record",
    "denormalize",
    "encode_record",
    "make_dataset",
    "make_pipeline",
    "mix_batch",
    "normalize",
    "open_source",
    "prepare_digits",
    "steps_per_epoch",
    "write_arrayrecord",
]
