"""Input pipelines: grain sources, numpy/PIL transforms, deterministic checkpointable batches.

from nf import data
source = data.ImageFolderSource(data.prepare_digits("data/digits") / "train")
it = data.make_pipeline(source, train=True, batch_size=128, image_size=32, seed=0)
batch = next(it)  # {"image", "label", "label_onehot", "mask"}: see nf.data.classification

Dense prediction (nf.data.segmentation, nf.data.depth):
it = data.make_segmentation_pipeline(data.VOCSource(root, "train"), train=True, batch_size=16, crop_size=513)
batch = next(it)  # {"image", "label" (255 = ignore), "mask"}
it = data.make_depth_pipeline(data.open_nyu(path, "train"), train=True, batch_size=16)
batch = next(it)  # {"image", "depth" (metres, 0 = invalid), "mask"}
"""

from nf.data.batching import DataIterator
from nf.data.classification import make_dataset, make_pipeline
from nf.data.dense import AnnotationError
from nf.data.depth import make_depth_pipeline
from nf.data.digits import prepare_digit_parity, prepare_digits
from nf.data.nyu import NYUMatSource, NYUPairSource, open_nyu
from nf.data.randaugment import RandAugment
from nf.data.scenes import prepare_digit_scenes
from nf.data.segmentation import make_segmentation_pipeline
from nf.data.sources import (
    ArrayRecordImageSource,
    DataSourceError,
    ImageFolderSource,
    decode_record,
    encode_record,
    open_source,
    write_arrayrecord,
)
from nf.data.textured_digits import prepare_textured_digits
from nf.data.tfds_source import TfdsImageSource
from nf.data.transforms import (
    INCEPTION_CROP_AREA,
    INCEPTION_CROP_ASPECT,
    CorruptImageError,
    EvalTransform,
    TrainTransform,
    decode_image,
    denormalize,
    mix_batch,
    normalize,
)
from nf.data.voc import VOCSource

__all__ = [
    "INCEPTION_CROP_AREA",
    "INCEPTION_CROP_ASPECT",
    "AnnotationError",
    "ArrayRecordImageSource",
    "CorruptImageError",
    "DataIterator",
    "DataSourceError",
    "EvalTransform",
    "ImageFolderSource",
    "NYUMatSource",
    "NYUPairSource",
    "RandAugment",
    "TfdsImageSource",
    "TrainTransform",
    "VOCSource",
    "decode_image",
    "decode_record",
    "denormalize",
    "encode_record",
    "make_dataset",
    "make_depth_pipeline",
    "make_pipeline",
    "make_segmentation_pipeline",
    "mix_batch",
    "normalize",
    "open_nyu",
    "open_source",
    "prepare_digit_parity",
    "prepare_digit_scenes",
    "prepare_digits",
    "prepare_textured_digits",
    "write_arrayrecord",
]
