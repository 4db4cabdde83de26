"""Image classification: softmax cross-entropy with label smoothing, top-1 / top-5 accuracy, on
image folders or ArrayRecord directories (`data.train`, `data.eval`; nf.data.classification)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from nf import data as nf_data
from nf.data.card import ModelCard, card_from_config
from nf.data.preprocessing import nf_preprocessing
from nf.models.registry import create_model_from_dict
from nf.tasks.base import Task, random_images
from nf.tasks.data import TrainData, loader_settings, on_corrupt, prepare, resolve


def targets(batch: dict[str, jax.Array], num_classes: int, label_smoothing: float = 0.0) -> jax.Array:
    """Target distribution: `label_onehot` (one-hot or MixUp/CutMix mixture) or one-hot `label`."""
    probs = batch["label_onehot"] if "label_onehot" in batch else jax.nn.one_hot(batch["label"], num_classes)
    return optax.smooth_labels(probs, label_smoothing) if label_smoothing else probs


def loss(logits: jax.Array, batch: dict[str, jax.Array], label_smoothing: float = 0.0) -> jax.Array:
    """Mean softmax cross-entropy over the batch."""
    t = targets(batch, logits.shape[-1], label_smoothing)
    return jnp.mean(optax.softmax_cross_entropy(logits.astype(jnp.float32), t))


def eval_sums(logits: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """Sums over valid examples (`mask`): correct top-1, correct top-5, loss, count."""
    labels = batch["label"]
    mask = batch.get("mask", jnp.ones(labels.shape, bool)).astype(jnp.float32)
    logits = logits.astype(jnp.float32)
    k = min(5, logits.shape[-1])
    topk = jax.lax.top_k(logits, k)[1]
    per_example_loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return {
        "top1": jnp.sum((topk[:, 0] == labels) * mask),
        "top5": jnp.sum(jnp.any(topk == labels[:, None], axis=-1) * mask),
        "loss": jnp.sum(per_example_loss * mask),
        "count": jnp.sum(mask),
    }


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    return jnp.mean(jnp.argmax(logits, -1) == labels)


class Classification(Task):
    """Softmax cross-entropy (label smoothing from `config.optimizer`); eval top-1 / top-5 / loss."""

    name = "classification"
    benchmark_num_classes = 1000  # ImageNet
    train_image_dtype = np.uint8  # ClassificationTrain's batches: normalized on the device

    @classmethod
    def build_data(cls, config: ml_collections.ConfigDict, workdir: str) -> TrainData:
        """Inception crop, flip, MixUp/CutMix and RandAugment for training; centre (or other
        `data.eval_crop`) crop at `data.eval_image_size` for evaluation."""
        cfg = config.data
        prepare(cfg, workdir)
        tfds_dir = cfg.get("tfds_data_dir") or None  # for "tfds:NAME:SPLIT" sources (nf.data.tfds_source)
        train_source = nf_data.open_source(resolve(cfg.train, workdir), tfds_data_dir=tfds_dir)
        classes = getattr(train_source, "classes", None)
        eval_source = nf_data.open_source(resolve(cfg.eval, workdir), classes=classes, tfds_data_dir=tfds_dir)
        num_classes, corrupt = train_source.num_classes, on_corrupt(config)
        augment = nf_data.ClassificationTrain(
            cfg.image_size,
            num_classes,
            crop_area_range=tuple(cfg.get("crop_area_range", nf_data.INCEPTION_CROP_AREA)),
            hflip=cfg.get("hflip", True),
            antialias=cfg.get("antialias", True),
            mixup_alpha=cfg.get("mixup_alpha", 0.0),
            cutmix=cfg.get("cutmix", False),
            randaugment_layers=cfg.get("randaugment_layers", 0),  # 0 = off
            randaugment_magnitude=cfg.get("randaugment_magnitude", 0.0),
            on_corrupt=corrupt,
        )
        evaluate = nf_data.ClassificationEval(nf_preprocessing(cfg), num_classes, on_corrupt=corrupt)  # the card's

        def train_iter():
            return nf_data.make_pipeline(train_source, augment, loader_settings(config, train=True))

        def eval_batches():
            return nf_data.make_pipeline(eval_source, evaluate, loader_settings(config, train=False))

        names = list(classes) if classes else None
        return TrainData(train_source.num_classes, len(train_source), train_iter, eval_batches, names)

    def model_card(self, class_names: list[str] | None, source: Mapping[str, Any]) -> ModelCard:
        """The model, classes and the eval preprocessing (nf.data.card)."""
        return card_from_config(self.config, self.num_classes, class_names, source)

    def synthetic_batch(self, batch_size, image_size, channels, seed=0):
        """Random images and class ids (B,) int32."""
        rng = np.random.default_rng(seed)
        images = random_images(rng, batch_size, image_size, channels)
        return {"image": images, "label": rng.integers(0, self.num_classes, batch_size, dtype=np.int32)}

    def build_model(self) -> nnx.Module:
        return create_model_from_dict(self.config.model, seed=self.config.seed, num_classes=self.num_classes)

    def loss(self, outputs, batch):
        value = loss(outputs, batch, self.config.optimizer.label_smoothing)
        return value, {"accuracy": accuracy(outputs, batch["label"])}

    def eval_sums(self, outputs, batch):
        return eval_sums(outputs, batch)

    def finalize(self, totals: Mapping[str, np.ndarray]) -> dict[str, float]:
        count = max(float(totals["count"]), 1.0)
        return {k: float(totals[k]) / count for k in ("top1", "top5", "loss")}

    def summary_line(self, results):
        if "ema_top1" not in results:
            return None
        return (
            f"  eval top-1 {results['top1']:.2%} (EMA {results['ema_top1']:.2%}), "
            f"top-5 {results['top5']:.2%} (EMA {results['ema_top5']:.2%})"
        )
