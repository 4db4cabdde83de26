"""Semantic segmentation (paper App. H): per-pixel softmax cross-entropy with label 255 ignored;
mIoU from a confusion matrix summed over the whole eval set, and pixel accuracy.

Batches: `image` (B, H, W, 3), `label` int (B, H, W) with 255 = ignore, optional `mask` (B,) of
valid examples. Model outputs: logits (B, H, W, num_classes).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from nf import data as nf_data
from nf.tasks.base import Batch, Task, example_mask, model_overrides, random_images
from nf.tasks.data import TrainData, loader_settings, on_corrupt, prepare, resolve
from nf.tasks.dense import segmentation_model

IGNORE_LABEL = 255


def valid_pixels(labels: jax.Array, batch: Batch, num_classes: int) -> jax.Array:
    """Pixels that count: labelled with a class (not 255) in a valid example, (B, H, W) bool."""
    mask = example_mask(batch, labels.shape[0]) > 0
    return (labels != IGNORE_LABEL) & (labels >= 0) & (labels < num_classes) & mask[:, None, None]


def pixel_cross_entropy(logits: jax.Array, batch: Batch) -> tuple[jax.Array, jax.Array]:
    """`(per-pixel cross-entropy, valid)`; ignored pixels have loss 0."""
    labels = batch["label"].astype(jnp.int32)
    valid = valid_pixels(labels, batch, logits.shape[-1])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.where(valid, labels, 0))
    return jnp.where(valid, ce, 0.0), valid


def loss(logits: jax.Array, batch: Batch) -> jax.Array:
    """Mean cross-entropy over the batch's valid pixels."""
    ce, valid = pixel_cross_entropy(logits, batch)
    return jnp.sum(ce) / jnp.maximum(jnp.sum(valid), 1)


def confusion_matrix(labels: jax.Array, predictions: jax.Array, valid: jax.Array, num_classes: int) -> jax.Array:
    """(num_classes, num_classes) int32 counts, rows = true class, columns = predicted class."""
    index = jnp.where(valid, labels * num_classes + predictions, 0).reshape(-1)
    counts = jnp.bincount(index, weights=valid.reshape(-1).astype(jnp.int32), length=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def eval_sums(logits: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    """Confusion matrix, summed cross-entropy and valid-pixel count of one batch."""
    num_classes = logits.shape[-1]
    ce, valid = pixel_cross_entropy(logits, batch)
    labels = batch["label"].astype(jnp.int32)
    return {
        "confusion": confusion_matrix(labels, jnp.argmax(logits, -1), valid, num_classes),
        "loss": jnp.sum(ce),
        "pixels": jnp.sum(valid.astype(jnp.int32)),
    }


def metrics_from_confusion(confusion: np.ndarray) -> dict[str, float]:
    """mIoU (mean over every class of the dataset definition; a class neither labelled nor
    predicted anywhere counts 0) and pixel accuracy."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    iou = np.divide(tp, union, out=np.zeros_like(tp), where=union > 0)
    return {"miou": float(iou.mean()), "pixel_accuracy": float(tp.sum() / max(confusion.sum(), 1.0))}


class Segmentation(Task):
    """FCN on a dilated backbone (`config.model.output_stride`, default 16)."""

    name = "segmentation"
    benchmark_num_classes = 21  # Pascal VOC

    @classmethod
    def build_data(cls, config: ml_collections.ConfigDict, workdir: str) -> TrainData:
        """VOC-format folders (`data.path` with ImageSets/Segmentation/<split>.txt): random scale,
        flip and crop for training, centre crop for evaluation (nf.data.segmentation)."""
        cfg = config.data
        prepare(cfg, workdir)
        root = resolve(cfg.path, workdir)
        sources = {
            split: nf_data.VOCSource(
                root, cfg[key], num_classes=cfg.num_classes, mask_dir=cfg.get("mask_dir", "SegmentationClass")
            )
            for split, key in (("train", "train_split"), ("eval", "eval_split"))
        }
        corrupt = on_corrupt(config)
        augment = nf_data.SegmentationTrainTransform(
            cfg.crop_size,
            cfg.num_classes,
            scale_range=tuple(cfg.get("scale_range", (0.5, 2.0))),
            hflip=cfg.get("hflip", True),
            on_corrupt=corrupt,
        )
        crop = cfg.get("eval_crop_size") or cfg.crop_size
        evaluate = nf_data.SegmentationEvalTransform(crop, cfg.num_classes, on_corrupt=corrupt)

        def train_iter():
            return nf_data.make_pipeline(sources["train"], augment, loader_settings(config, train=True))

        def eval_batches():
            return nf_data.make_pipeline(sources["eval"], evaluate, loader_settings(config, train=False))

        return TrainData(cfg.num_classes, len(sources["train"]), train_iter, eval_batches)

    def synthetic_batch(self, batch_size, image_size, channels, seed=0):
        """Random images and per-pixel labels (B, H, W) int32, 10% of them ignored (255)."""
        rng = np.random.default_rng(seed)
        images = random_images(rng, batch_size, image_size, channels)
        dense = (batch_size, image_size, image_size)
        labels = rng.integers(0, self.num_classes, dense, dtype=np.int32)
        return {"image": images, "label": np.where(rng.random(dense) < 0.1, IGNORE_LABEL, labels).astype(np.int32)}

    def build_model(self) -> nnx.Module:
        head = self.config.get("head", {})
        return segmentation_model(
            self.config.model.name,
            self.num_classes,
            seed=self.config.seed,
            head_width=head.get("width", 256),
            head_dilation=head.get("dilation", 6),
            skip_stride=head.get("skip_stride") or None,
            **model_overrides(self.config),
        )

    def loss(self, outputs, batch):
        ce, valid = pixel_cross_entropy(outputs, batch)
        pixels = jnp.maximum(jnp.sum(valid), 1)
        correct = jnp.sum((jnp.argmax(outputs, -1) == batch["label"]) & valid)
        return jnp.sum(ce) / pixels, {"pixel_accuracy": correct / pixels}

    def eval_sums(self, outputs, batch):
        return eval_sums(outputs, batch)

    def finalize(self, totals):
        pixels = max(float(totals["pixels"]), 1.0)
        return metrics_from_confusion(totals["confusion"]) | {"loss": float(totals["loss"]) / pixels}

    def summary_line(self, results: Mapping[str, float]):
        if "ema_miou" not in results:
            return None
        return (
            f"  eval mIoU {results['miou']:.2%} (EMA {results['ema_miou']:.2%}), "
            f"pixel accuracy {results['pixel_accuracy']:.2%} (EMA {results['ema_pixel_accuracy']:.2%})"
        )
