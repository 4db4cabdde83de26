"""The classification input pipeline (paper App. A): Inception crop + flip, MixUp/CutMix,
RandAugment, eval crops; batched by the engine in `nf.data.batching`.

    it = make_pipeline(source, train=True, batch_size=128, image_size=32, seed=0,
                       shard_index=jax.process_index(), shard_count=jax.process_count(),
                       worker_count=2)
    batch = next(it)

Batch format (every batch, train and eval; B = per-process `batch_size`, C = `num_classes`):

    image         float32 (B, px, px, 3)  normalized (transforms.normalize), NHWC
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
in batch), and normalization. Eval: one padded pass with the eval crop.
"""

from __future__ import annotations

from collections.abc import Sequence

import grain
import numpy as np

from nf.data import transforms as T
from nf.data.batching import DataIterator, build_batches, open_iterator
from nf.data.randaugment import RandAugment


class _FinalizeBatch(grain.transforms.MapWithIndex):
    """Batch index -> one-hot targets, MixUp/CutMix, RandAugment, normalization.

    Order (paper App. A, the NFNet recipe "MixUp + CutMix then RandAugment"): the uint8 images
    become float32 in 0..255; MixUp/CutMix (numpy Generator seeded by (seed, shard, step)) mix them
    (linear, so this equals mixing normalized images); RandAugment then works on the mixture
    rounded to uint8, each example with its own Generator from (seed, shard, step, example);
    finally `normalize`. Without mixing or RandAugment the uint8 batch is normalized directly.
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
    ):
        self.num_classes, self.seed, self.shard_index = num_classes, seed, shard_index
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
        image = T.normalize(image, self.mean, self.std)
        image[~mask] = 0.0
        return {
            "image": image,
            "label": labels.astype(np.int32),
            "label_onehot": targets,
            "mask": mask,
            **{k: v for k, v in batch.items() if k.startswith("_")},  # bookkeeping (_corrupt, _converted)
        }


def make_dataset(
    source,
    *,
    train: bool,
    batch_size: int,
    image_size: int,
    seed: int = 0,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    num_classes: int | None = None,
    mixup_alpha: float = 0.0,
    cutmix: bool = False,
    randaugment_layers: int = 0,
    randaugment_magnitude: float = 0.0,
    drop_remainder: bool = True,
    eval_crop: str = "center_crop",
    crop_padding: int = T.CROP_PADDING,
    crop_pct: float | None = None,
    interpolation: str = "bicubic",
    mean: Sequence[float] = tuple(T.MEAN_RGB),
    std: Sequence[float] = tuple(T.STDDEV_RGB),
    crop_area_range: tuple[float, float] = T.INCEPTION_CROP_AREA,
    crop_aspect_range: tuple[float, float] = T.INCEPTION_CROP_ASPECT,
    hflip: bool = True,
    on_corrupt: str = "error",
    fast_jpeg: bool = True,
) -> grain.MapDataset:
    """The classification pipeline as a grain `MapDataset` of batches (module docstring); no iteration yet."""
    if mixup_alpha < 0:
        raise ValueError(f"mixup_alpha must be >= 0 (0 turns MixUp off), got {mixup_alpha}")
    if num_classes is None:
        num_classes = getattr(source, "num_classes", None)
        if num_classes is None:
            raise ValueError(f"{source!r} has no `num_classes`; pass num_classes=")
    randaugment = RandAugment(randaugment_layers, randaugment_magnitude)  # validated in eval too
    if not (train and randaugment.num_layers):
        randaugment = None
    finalize = _FinalizeBatch(
        num_classes, seed, shard_index, mixup_alpha if train else 0.0, cutmix and train, randaugment, mean, std
    )
    if train:
        transform = T.TrainTransform(
            image_size,
            area_range=crop_area_range,
            aspect_range=crop_aspect_range,
            hflip=hflip,
            on_corrupt=on_corrupt,
            fast_jpeg=fast_jpeg,
        )
    else:
        transform = T.EvalTransform(
            image_size,
            eval_crop=eval_crop,
            crop_padding=crop_padding,
            crop_pct=crop_pct,
            interpolation=interpolation,
            on_corrupt=on_corrupt,
            fast_jpeg=fast_jpeg,
        )
    return build_batches(
        source,
        transform,
        finalize,
        train=train,
        batch_size=batch_size,
        seed=seed,
        num_epochs=num_epochs,
        shard_index=shard_index,
        shard_count=shard_count,
        drop_remainder=drop_remainder,
    )


def make_pipeline(
    source,
    *,
    train: bool,
    batch_size: int,
    image_size: int,
    seed: int = 0,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    worker_count: int = 0,
    prefetch: int = 2,
    read_threads: int = 1,
    num_classes: int | None = None,
    mixup_alpha: float = 0.0,
    cutmix: bool = False,
    randaugment_layers: int = 0,
    randaugment_magnitude: float = 0.0,
    drop_remainder: bool = True,
    eval_crop: str = "center_crop",
    crop_padding: int = T.CROP_PADDING,
    crop_pct: float | None = None,
    interpolation: str = "bicubic",
    mean: Sequence[float] = tuple(T.MEAN_RGB),
    std: Sequence[float] = tuple(T.STDDEV_RGB),
    crop_area_range: Sequence[float] = T.INCEPTION_CROP_AREA,
    crop_aspect_range: Sequence[float] = T.INCEPTION_CROP_ASPECT,
    hflip: bool = True,
    on_corrupt: str = "error",
    fast_jpeg: bool = True,
) -> DataIterator:
    """Builds the input pipeline and returns its (checkpointable) iterator of numpy batch dicts.

    Args:
      source: a random-access source of {"image": bytes, "label": int, "path": str} records
        (`nf.data.ImageFolderSource`, `nf.data.ArrayRecordImageSource`) with `num_classes`.
      train: training (shuffled, augmented, repeated) or evaluation (one padded pass) pipeline.
      batch_size: per-process batch size.
      image_size: output side px.
      seed: data order, augmentation and MixUp/CutMix are functions of (seed, index). Pass the
        same seed on every process (the global shuffle is shared; shards differ by shard_index).
      num_epochs: train only; None repeats forever. Eval is always one pass.
      shard_index, shard_count: this process and the number of processes (jax.process_index(),
        jax.process_count()); each process sees a disjoint share of every epoch.
      worker_count: grain worker processes (0: in this process, with `read_threads` threads).
      prefetch: batches buffered ahead (per worker when worker_count > 0).
      read_threads: background threads per process computing batches (in each worker when
        worker_count > 0). Batches are computed off the main thread, overlapping the train step;
        more threads help mostly for large JPEGs (PIL decodes without the GIL).
      num_classes: defaults to `source.num_classes`.
      mixup_alpha, cutmix: train only. MixUp ratio ~ Beta(mixup_alpha, mixup_alpha) (0: off);
        CutMix on/off; both on: half the batch each (paper App. A).
      randaugment_layers, randaugment_magnitude: train only. RandAugment (`nf.data.randaugment`)
        with this many random ops per image (0: off) at this magnitude (10-scale), applied after
        MixUp/CutMix on the uint8-rounded images, before normalization (the NFNet recipe).
      drop_remainder: train with finite num_epochs: drop the last partial batch.
      eval_crop: "center_crop" (NF-RegNet), "resize_crop" (NFNet) or "resize_short_crop" (timm),
        see `transforms.EvalTransform`.
      crop_padding: eval crops px of px + crop_padding (default 32; 0: the whole image).
      crop_pct, interpolation: eval only; the crop fraction (overrides crop_padding) and the
        resampling filter (`transforms.INTERPOLATIONS`).
      mean, std: per-channel normalization on the 0..255 scale (default ImageNet's).
      crop_area_range, crop_aspect_range, hflip: train augmentation (Inception crop + flip).
      on_corrupt: "error" raises `CorruptImageError` naming the file; "skip" logs a warning naming
        the file, counts it (`it.num_skipped`) and replaces it (train) or masks it out (eval).
      fast_jpeg: decode large JPEGs at a reduced DCT scale when the crop allows (never below px).
    """
    batches = make_dataset(
        source,
        train=train,
        batch_size=batch_size,
        image_size=image_size,
        seed=seed,
        num_epochs=num_epochs,
        shard_index=shard_index,
        shard_count=shard_count,
        num_classes=num_classes,
        mixup_alpha=mixup_alpha,
        cutmix=cutmix,
        randaugment_layers=randaugment_layers,
        randaugment_magnitude=randaugment_magnitude,
        drop_remainder=drop_remainder,
        eval_crop=eval_crop,
        crop_padding=crop_padding,
        crop_pct=crop_pct,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
        crop_area_range=tuple(crop_area_range),
        crop_aspect_range=tuple(crop_aspect_range),
        hflip=hflip,
        on_corrupt=on_corrupt,
        fast_jpeg=fast_jpeg,
    )
    return open_iterator(
        batches,
        num_examples=len(source),
        train=train,
        batch_size=batch_size,
        seed=seed,
        shard_index=shard_index,
        shard_count=shard_count,
        worker_count=worker_count,
        prefetch=prefetch,
        read_threads=read_threads,
    )
