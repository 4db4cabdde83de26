"""Monocular depth (paper App. H, Laina et al. 2016): reverse Huber (berHu) loss and the
standard metrics over valid pixels (ground-truth depth 0 = invalid).

Batches: `image` (B, H, W, 3), `depth` float (B, H, W) in metres, optional `mask` (B,) of valid
examples. Model outputs: (B, H, W, 1) depth in metres.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from nf import data as nf_data
from nf.tasks.base import Batch, Task, example_mask, model_overrides, random_images
from nf.tasks.data import TrainData, loader_settings, on_corrupt, prepare, resolve
from nf.tasks.dense import depth_model

BERHU_C = 0.2  # c = 0.2 * max |e| over the batch's valid pixels
MIN_DEPTH = 1e-3  # predictions are clamped to >= 1 mm for the metrics (depth is positive)
DELTAS = (1.25, 1.25**2, 1.25**3)


def prediction(outputs: jax.Array) -> jax.Array:
    """(B, H, W) float32 depth from the model's (B, H, W, 1)."""
    return outputs[..., 0].astype(jnp.float32)


def valid_pixels(batch: Batch) -> jax.Array:
    """Pixels with ground truth (depth > 0) in valid examples, (B, H, W) bool."""
    depth = batch["depth"]
    return (depth > 0) & (example_mask(batch, depth.shape[0]) > 0)[:, None, None]


def berhu(pred: jax.Array, depth: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean berHu over valid pixels: |e| if |e| <= c else (e^2 + c^2) / 2c, c = 0.2 max|e|.

    c is a constant of the batch (no gradient flows through the max), as in Laina et al."""
    err = jnp.where(valid, pred - depth.astype(jnp.float32), 0.0)
    abs_err = jnp.abs(err)
    c = jax.lax.stop_gradient(jnp.maximum(BERHU_C * jnp.max(abs_err), 1e-6))
    per_pixel = jnp.where(abs_err <= c, abs_err, (err**2 + c**2) / (2 * c))
    return jnp.sum(jnp.where(valid, per_pixel, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def clamped(pred: jax.Array, batch: Batch, valid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(prediction >= MIN_DEPTH, ground truth (1 where invalid), delta = max(p/g, g/p))`."""
    gt = jnp.where(valid, batch["depth"].astype(jnp.float32), 1.0)
    p = jnp.maximum(pred, MIN_DEPTH)
    return p, gt, jnp.maximum(p / gt, gt / p)


def eval_sums(pred: jax.Array, batch: Batch) -> dict[str, jax.Array]:
    """Valid-pixel count and the sums behind delta1-3, rms and rel."""
    valid = valid_pixels(batch)
    p, gt, ratio = clamped(pred, batch, valid)
    zero = jnp.zeros_like(p)
    sums = {f"delta{i + 1}": jnp.sum(jnp.where(valid & (ratio < d), 1.0, zero)) for i, d in enumerate(DELTAS)}
    sums["sq_err"] = jnp.sum(jnp.where(valid, (p - gt) ** 2, zero))
    sums["rel"] = jnp.sum(jnp.where(valid, jnp.abs(p - gt) / gt, zero))
    sums["pixels"] = jnp.sum(valid.astype(jnp.int32))
    return sums


def finalize(totals: Mapping[str, np.ndarray]) -> dict[str, float]:
    """delta1-3 (fractions), rms (m) and rel over every valid pixel of the eval set."""
    pixels = max(float(totals["pixels"]), 1.0)
    out = {f"delta{i}": float(totals[f"delta{i}"]) / pixels for i in (1, 2, 3)}
    out["rms"] = float(np.sqrt(float(totals["sq_err"]) / pixels))
    out["rel"] = float(totals["rel"]) / pixels
    return out


class Depth(Task):
    """FCRN on an undilated backbone (`config.model.output_stride`, default the natural one)."""

    name = "depth"

    @classmethod
    def build_data(cls, config: ml_collections.ConfigDict, workdir: str) -> TrainData:
        """NYU Depth v2 (`data.path`: the labeled .mat, a list file or a folder of <split>.txt lists
        of RGB / 16-bit depth PNG pairs): resize, centre crop, flip and colour jitter (nf.data.depth)."""
        cfg = config.data
        prepare(cfg, workdir)
        root = resolve(cfg.path, workdir)
        sources = {
            split: nf_data.open_nyu(root, cfg[key]) for split, key in (("train", "train_split"), ("eval", "eval_split"))
        }
        resize_to = tuple(cfg.resize_to) if cfg.get("resize_to") else None
        sizes = dict(image_size=tuple(cfg.image_size), resize_to=resize_to, on_corrupt=on_corrupt(config))
        augment = nf_data.DepthTrainTransform(hflip=cfg.get("hflip", True), color=cfg.get("color", True), **sizes)
        evaluate = nf_data.DepthEvalTransform(**sizes)

        def train_iter():
            return nf_data.make_pipeline(sources["train"], augment, loader_settings(config, train=True))

        def eval_batches():
            return nf_data.make_pipeline(sources["eval"], evaluate, loader_settings(config, train=False))

        return TrainData(None, len(sources["train"]), train_iter, eval_batches)

    def synthetic_batch(self, batch_size, image_size, channels, seed=0):
        """Random images and depths (B, H, W) float32 in 0.5-10 m, 10% of them invalid (0)."""
        rng = np.random.default_rng(seed)
        images = random_images(rng, batch_size, image_size, channels)
        dense = (batch_size, image_size, image_size)
        depth = rng.uniform(0.5, 10.0, dense).astype(np.float32)
        return {"image": images, "depth": np.where(rng.random(dense) < 0.1, np.float32(0), depth)}

    def build_model(self) -> nnx.Module:
        head = self.config.get("head", {})
        return depth_model(
            self.config.model.name,
            seed=self.config.seed,
            init_depth=head.get("init_depth", 0.0),
            skip_stride=head.get("skip_stride") or None,
            **model_overrides(self.config),
        )

    def loss(self, outputs, batch):
        pred, valid = prediction(outputs), valid_pixels(batch)
        within = valid & (clamped(pred, batch, valid)[2] < DELTAS[0])
        return berhu(pred, batch["depth"], valid), {"delta1": jnp.sum(within) / jnp.maximum(jnp.sum(valid), 1)}

    def eval_sums(self, outputs, batch):
        return eval_sums(prediction(outputs), batch)

    def finalize(self, totals):
        return finalize(totals)

    def summary_line(self, results: Mapping[str, float]):
        if "ema_delta1" not in results:
            return None
        return (
            f"  eval delta<1.25 {results['delta1']:.2%} (EMA {results['ema_delta1']:.2%}), "
            f"rms {results['rms']:.3f} m (EMA {results['ema_rms']:.3f}), rel {results['rel']:.3f} "
            f"(EMA {results['ema_rel']:.3f})"
        )
