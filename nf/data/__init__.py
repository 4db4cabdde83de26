"""Input pipelines: grain sources, numpy/PIL transforms, deterministic checkpointable batches.

One way for every task: `make_pipeline(source, transform, loader)`, where `loader` is the
`LoaderSettings` all tasks share and `transform` says what an example becomes (train or eval).

from nf import data
source = data.ImageFolderSource(data.prepare_digits("data/digits") / "train")
loader = data.LoaderSettings(batch_size=128, seed=0)
it = data.make_pipeline(source, data.ClassificationTrain(image_size=32), loader)
batch = next(it)  # {"image", "label", "label_onehot", "mask"}: see nf.data.classification
evals = data.make_pipeline(source, data.ClassificationEval(data.Preprocessing.nf(32)), loader)

Dense prediction (nf.data.segmentation, nf.data.depth):
it = data.make_pipeline(data.VOCSource(root, "train"), data.SegmentationTrainTransform(513, 21), loader)
batch = next(it)  # {"image", "label" (255 = ignore), "mask"}
it = data.make_pipeline(data.open_nyu(path, "train"), data.DepthTrainTransform(), loader)
batch = next(it)  # {"image", "depth" (metres, 0 = invalid), "mask"}
"""

from nf.data.batching import DataIterator, LoaderSettings, PipelineTransform, make_pipeline
from nf.data.classification import ClassificationEval, ClassificationTrain
from nf.data.dense import AnnotationError
from nf.data.depth import DepthEvalTransform, DepthTrainTransform
from nf.data.digits import prepare_digit_parity, prepare_digits
from nf.data.nyu import NYUMatSource, NYUPairSource, open_nyu
from nf.data.preprocessing import Preprocessing
from nf.data.randaugment import RandAugment
from nf.data.scenes import prepare_digit_scenes
from nf.data.segmentation import SegmentationEvalTransform, SegmentationTrainTransform
from nf.data.source_specs import open_source
from nf.data.sources import (
    ArrayRecordImageSource,
    DataSourceError,
    ImageFolderSource,
    decode_record,
    encode_record,
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
    "ClassificationEval",
    "ClassificationTrain",
    "CorruptImageError",
    "DataIterator",
    "DataSourceError",
    "DepthEvalTransform",
    "DepthTrainTransform",
    "EvalTransform",
    "ImageFolderSource",
    "LoaderSettings",
    "NYUMatSource",
    "NYUPairSource",
    "PipelineTransform",
    "Preprocessing",
    "RandAugment",
    "SegmentationEvalTransform",
    "SegmentationTrainTransform",
    "TfdsImageSource",
    "TrainTransform",
    "VOCSource",
    "decode_image",
    "decode_record",
    "denormalize",
    "encode_record",
    "make_pipeline",
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
