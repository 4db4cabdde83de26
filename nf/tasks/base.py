"""What the trainer needs from a task: a model, a training loss with its batch metrics, and an
evaluation that sums over batches and is finalized once over the whole eval set.

Tasks know nothing about sharding or checkpoints; the trainer knows nothing about a task's
outputs beyond these methods.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

Batch = Mapping[str, jax.Array]

MODEL_KEYS_NOT_OVERRIDES = ("name",)


def model_overrides(config: ml_collections.ConfigDict, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """`config.model` minus its name (and `exclude`) as registry overrides; `dtype: ""` = float32."""
    return model_kwargs(config.model, exclude)


def model_kwargs(model: Mapping[str, Any], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """A model description (`config.model`, a model card's "model") minus its name (and `exclude`)
    as registry overrides; `dtype: ""` = float32."""
    overrides = {k: v for k, v in model.items() if k not in MODEL_KEYS_NOT_OVERRIDES + exclude}
    if overrides.get("dtype"):
        overrides["dtype"] = jnp.dtype(overrides["dtype"])
    else:
        overrides.pop("dtype", None)
    return overrides


def random_images(rng: np.random.Generator, batch_size: int, image_size: int, channels: int) -> np.ndarray:
    """Standard-normal float32 images (B, H, W, C) for synthetic batches."""
    return rng.standard_normal((batch_size, image_size, image_size, channels), dtype=np.float32)


def example_mask(batch: Batch, batch_size: int) -> jax.Array:
    """The batch's valid-example mask (eval batches pad with masked examples), float32 (B,)."""
    if "mask" in batch:
        return batch["mask"].astype(jnp.float32)
    return jnp.ones((batch_size,), jnp.float32)


class Task(abc.ABC):
    """One training objective; `config` is the whole trainer config, `num_classes` the data's."""

    name: str = ""

    def __init__(self, config: ml_collections.ConfigDict, num_classes: int | None):
        self.config, self.num_classes = config, num_classes

    @abc.abstractmethod
    def build_model(self) -> nnx.Module:
        """The model `config.model` describes, with this task's output."""

    @abc.abstractmethod
    def loss(self, outputs: jax.Array, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """`(mean loss, train metrics)` of one (micro-)batch; metrics are batch means."""

    @abc.abstractmethod
    def eval_sums(self, outputs: jax.Array, batch: Batch) -> dict[str, jax.Array]:
        """Additive statistics of one eval batch (masked examples contribute nothing)."""

    @abc.abstractmethod
    def finalize(self, totals: Mapping[str, np.ndarray]) -> dict[str, float]:
        """Eval metrics from the statistics summed over the whole eval set."""

    def summary_line(self, results: Mapping[str, float]) -> str | None:
        """One human line of the final eval (raw and EMA), or None."""
        return None

    # The class count a benchmark of this task builds its model with (its reference dataset), or
    # None when the model has no class outputs.
    benchmark_num_classes: int | None = None

    def synthetic_batch(self, batch_size: int, image_size: int, channels: int, seed: int = 0) -> dict[str, np.ndarray]:
        """A random training batch of this task's layout (`tools/benchmark.py` times steps on it):
        standard-normal `image` (B, image_size, image_size, channels) float32 plus the targets."""
        raise NotImplementedError(f"Task {self.name!r} defines no synthetic_batch; benchmarks need one.")
