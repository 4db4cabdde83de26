"""The classification input pipeline (paper App. A): Inception crop + flip, MixUp/CutMix,
RandAugment, eval crops; batched by the engine in `nf.data.batching`.

    loader = LoaderSettings(batch_size=128, seed=0, shard_index=jax.process_index(),
                            shard_count=jax.process_count(), worker_count=2)
    it = make_pipeline(source, ClassificationTrain(image_size=32), loader)
    batch = next(it)
    evals = make_pipeline(source, ClassificationEval(Preprocessing.nf(32)), loader)

Batch format (every batch, train and eval; B = per-process `batch_size`, C = `num_classes`):

    image         uint8   (B, px, px, 3)  training: raw 0..255 pixels, NHWC, normalized on the device
                                          by the step (`nf.tasks.base.model_images`, ImageNet's
                                          mean/std; a quarter of float32's host copies and
                                          host->device bytes)
                  float32 (B, px, px, 3)  evaluation (the card's mean/std), and training batches
                                          whose MixUp/CutMix mixture is not rounded for RandAugment:
                                          normalized on the host (transforms.normalize)
    label         int32   (B,)            class index of the (primary) image
    label_onehot  float32 (B, C)          the training target: one-hot, or the MixUp/CutMix
                                          mixture (rows sum to 1); all-zero rows where mask is False
    mask          bool    (B,)            True for a real example; False for eval padding and for
                                          a skipped corrupt eval image. Always True in training.

Losses should use `label_onehot` (label smoothing goes on top of it); accuracy uses `label`
and `mask`.

Train: the engine's shuffle/repeat/shard (`nf.data.batching`) around a per-example random
augmentation seeded by (seed, global example index; uint8); each batch then gets one-hot targets,
MixUp/CutMix (on float 0..255 images) with a numpy Generator seeded by (seed, shard_index, step),
RandAugment (uint8, optional) with a Generator per example from (seed, shard_index, step, example
in batch), and normalization (on the device for uint8 batches). Eval: one padded pass with the
eval crop, normalized on the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import grain
import numpy as np

from nf.data import transforms as T
from nf.data.batching import LoaderSettings
from nf.data.preprocessing import Preprocessing
from nf.data.randaugment import RandAugment


class _FinalizeBatch(grain.transforms.MapWithIndex):
    """Batch index -> one-hot targets, MixUp/CutMix, RandAugment, normalization.

    Order (paper App. A, the NFNet recipe "MixUp + CutMix then RandAugment"): the uint8 images
    become float32 in 0..255; MixUp/CutMix (numpy Generator seeded by (seed, shard, step)) mix them
    (linear, so this equals mixing normalized images); RandAugment then works on the mixture
    rounded to uint8, each example with its own Generator from (seed, shard, step, example);
    finally `normalize`. Without mixing or RandAugment the uint8 batch is normalized directly.
    With `keep_uint8`, a batch that is uint8 at the end stays so: the step normalizes it on the
    device with ImageNet's mean/std (`nf.tasks.base.model_images`).
    """

    def __init__(
        self,
        num_classes: int,
        seed: int,
        shard_index: int,
        mixup_alpha: float,
        cutmix: bool,
        randaugment: RandAugment | None = None,
        mean: Sequence[float] = tuple(T.MEAN_RGB),
        std: Sequence[float] = tuple(T.STDDEV_RGB),
        keep_uint8: bool = False,
    ):
        self.num_classes, self.seed, self.shard_index = num_classes, seed, shard_index
        self.keep_uint8 = keep_uint8
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.mixup_alpha, self.cutmix = mixup_alpha, cutmix
        self.randaugment = randaugment

    def map_with_index(self, index: int, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        labels = batch["label"]
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = labels[(labels < 0) | (labels >= self.num_classes)][0]
            raise ValueError(f"label {int(bad)} is outside [0, num_classes={self.num_classes})")
        mask = batch["mask"].astype(bool)
        targets = T.one_hot(labels, self.num_classes, mask)
        image = batch["image"]
        mixing = self.mixup_alpha > 0 or self.cutmix
        rng = np.random.default_rng([self.seed, self.shard_index, index]) if mixing else None
        key = (self.seed, self.shard_index, index)
        if self.randaugment is not None and mask.all():  # the NFNet recipe's path: uint8 throughout
            if mixing:
                mix = {"mixup_alpha": self.mixup_alpha, "cutmix": self.cutmix}
                image, targets = T.mix_batch(image, targets, rng, **mix, dtype=np.uint8)
            image = self.randaugment.augment_batch(image, key, mask)
        elif mixing or self.randaugment is not None:
            image = np.asarray(image, np.float32)  # 0..255
            image[~mask] = self.mean  # blank slots are zero after normalization, as below
            if mixing:
                image, targets = T.mix_batch(image, targets, rng, mixup_alpha=self.mixup_alpha, cutmix=self.cutmix)
            if self.randaugment is not None:
                image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
                image = self.randaugment.augment_batch(image, key, mask)
        if not (self.keep_uint8 and image.dtype == np.uint8):
            image = T.normalize(image, self.mean, self.std)
        image[~mask] = 0  # blank slots (eval padding; never in training): masked out of every metric
        return {
            "image": image,
            "label": labels.astype(np.int32),
            "label_onehot": targets,
            "mask": mask,
            **{k: v for k, v in batch.items() if k.startswith("_")},  # bookkeeping (_corrupt, _converted)
        }


@dataclass(frozen=True)
class ClassificationTrain:
    """The training examples of the ImageNet recipes (paper App. A): Inception crop + flip per
    example; one-hot targets, MixUp/CutMix, RandAugment and normalization per batch.

    Attributes:
      image_size: output side px.
      num_classes: defaults to the source's `num_classes`.
      crop_area_range, crop_aspect_range, hflip: the Inception crop and the flip.
      mixup_alpha, cutmix: MixUp ratio ~ Beta(mixup_alpha, mixup_alpha) (0: off); CutMix on/off;
        both on: half the batch each (paper App. A).
      randaugment_layers, randaugment_magnitude: RandAugment (`nf.data.randaugment`) with this many
        random ops per image (0: off) at this magnitude (10-scale), applied after MixUp/CutMix on the
        uint8-rounded images, before normalization (the NFNet recipe).
      mean, std: per-channel normalization on the 0..255 scale (default ImageNet's).
      device_normalize: deliver uint8 batches, normalized by the train step on the device with
        ImageNet's mean/std (`nf.tasks.base.model_images`): the host skips a float32 pass over
        every pixel and sends a quarter of the bytes. Other `mean`/`std` need it off.
      on_corrupt: "error" raises `CorruptImageError` naming the file; "skip" logs a warning naming the
        file, counts it (`it.num_skipped`) and replaces it by the next good image.
      fast_jpeg: decode large JPEGs at a reduced DCT scale when the crop allows (never below px).
      antialias: low-pass before shrinking, like PIL's bicubic; False: tf.data's plain bicubic.
    """

    image_size: int
    num_classes: int | None = None
    crop_area_range: tuple[float, float] = T.INCEPTION_CROP_AREA
    crop_aspect_range: tuple[float, float] = T.INCEPTION_CROP_ASPECT
    hflip: bool = True
    mixup_alpha: float = 0.0
    cutmix: bool = False
    randaugment_layers: int = 0
    randaugment_magnitude: float = 0.0
    mean: tuple[float, ...] = tuple(T.MEAN_RGB)
    std: tuple[float, ...] = tuple(T.STDDEV_RGB)
    on_corrupt: str = "error"
    fast_jpeg: bool = True
    antialias: bool = True
    device_normalize: bool = True
    train: ClassVar[bool] = True

    def __post_init__(self):
        imagenet = (tuple(T.MEAN_RGB), tuple(T.STDDEV_RGB))
        if self.device_normalize and (tuple(self.mean), tuple(self.std)) != imagenet:
            raise ValueError(
                "device_normalize normalizes with ImageNet's mean/std on the device; pass "
                f"device_normalize=False to normalize with mean={self.mean}, std={self.std} on the host"
            )
        if self.mixup_alpha < 0:
            raise ValueError(f"mixup_alpha must be >= 0 (0 turns MixUp off), got {self.mixup_alpha}")
        RandAugment(self.randaugment_layers, self.randaugment_magnitude)  # validates both

    def example_map(self) -> T.TrainTransform:
        return T.TrainTransform(
            self.image_size,
            area_range=tuple(self.crop_area_range),
            aspect_range=tuple(self.crop_aspect_range),
            hflip=self.hflip,
            on_corrupt=self.on_corrupt,
            fast_jpeg=self.fast_jpeg,
            antialias=self.antialias,
        )

    def batch_map(self, source, loader: LoaderSettings) -> _FinalizeBatch:
        randaugment = RandAugment(self.randaugment_layers, self.randaugment_magnitude)
        return _FinalizeBatch(
            _num_classes(self.num_classes, source),
            loader.seed,
            loader.shard_index,
            self.mixup_alpha,
            self.cutmix,
            randaugment if randaugment.num_layers else None,
            self.mean,
            self.std,
            keep_uint8=self.device_normalize,
        )

    def fingerprint(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class ClassificationEval:
    """The evaluation examples: a model's eval `Preprocessing` (its crop, resampling and
    normalization: the model card's, so training, nf-eval and nf-predict read one definition).

    `fast_jpeg` (reduced-DCT JPEG decoding, never below px) defaults to on for the trainer's own
    preprocessing (kind "nf") and off for imported weights (their published numbers). Records that
    cannot be read raise naming the file, or with on_corrupt="skip" are masked out and counted.
    """

    preprocessing: Preprocessing
    num_classes: int | None = None
    on_corrupt: str = "error"
    fast_jpeg: bool | None = None
    train: ClassVar[bool] = False

    def example_map(self) -> T.EvalTransform:
        p = self.preprocessing
        return T.EvalTransform(
            p.image_size,
            eval_crop=p.crop,
            crop_pct=p.crop_pct,
            interpolation=p.interpolation,
            on_corrupt=self.on_corrupt,
            fast_jpeg=p.kind == "nf" if self.fast_jpeg is None else self.fast_jpeg,
        )

    def batch_map(self, source, loader: LoaderSettings) -> _FinalizeBatch:
        p = self.preprocessing
        num_classes = _num_classes(self.num_classes, source)
        return _FinalizeBatch(num_classes, loader.seed, loader.shard_index, 0.0, False, None, p.mean, p.std)

    def fingerprint(self) -> dict[str, Any]:
        return {}


def _num_classes(num_classes: int | None, source) -> int:
    if num_classes is None:
        num_classes = getattr(source, "num_classes", None)
        if num_classes is None:
            raise ValueError(f"{source!r} has no `num_classes`; pass num_classes=")
    return num_classes
