"""What the trainer needs from a task: its data, a model, a training loss with its batch metrics,
an evaluation that sums over batches and is finalized once over the whole eval set, and
optionally a model card. A new task is one subclass of `Task` registered with
`nf.tasks.register_task` (README, "Adding a task").

Tasks know nothing about device sharding or checkpoints; the trainer knows nothing about a task's
data or outputs beyond these methods.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from nf.data.transforms import MEAN_RGB, STDDEV_RGB
from nf.models.registry import model_kwargs
from nf.tasks.data import TrainData

if TYPE_CHECKING:
    from nf.data.card import ModelCard

Batch = Mapping[str, jax.Array]


def model_overrides(config: ml_collections.ConfigDict, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """`config.model` minus its name (and `exclude`) as registry overrides (nf.models.model_kwargs)."""
    return model_kwargs(config.model, exclude)


def random_images(rng: np.random.Generator, batch_size: int, image_size: int, channels: int) -> np.ndarray:
    """Standard-normal float32 images (B, H, W, C) for synthetic batches."""
    return rng.standard_normal((batch_size, image_size, image_size, channels), dtype=np.float32)


def model_images(batch: Batch) -> jax.Array:
    """The model's input from a batch's "image": uint8 pixels (training batches of
    `nf.data.ClassificationTrain`) normalized here, on the device, with ImageNet's mean/std as
    `nf.data.transforms.normalize` does on the host; float images arrive normalized."""
    images = batch["image"]
    if images.dtype != jnp.uint8:
        return images
    mean, std = jnp.asarray(MEAN_RGB, jnp.float32), jnp.asarray(STDDEV_RGB, jnp.float32)
    return (images.astype(jnp.float32) - mean) / std  # unit-scale input, as with host normalization


def example_mask(batch: Batch, batch_size: int) -> jax.Array:
    """The batch's valid-example mask (eval batches pad with masked examples), float32 (B,)."""
    if "mask" in batch:
        return batch["mask"].astype(jnp.float32)
    return jnp.ones((batch_size,), jnp.float32)


class Task(abc.ABC):
    """One training objective; `config` is the whole trainer config, `num_classes` the data's
    (`build_data` runs first and tells it)."""

    name: str = ""  # the `config.task` that selects this task

    # Dotted config keys this task reads beyond the trainer's (`nf.train.config_schema.KEYS`),
    # with their smallest valid value (None: any value); `config_schema.validate` accepts them.
    config_keys: ClassVar[Mapping[str, float | None]] = {}

    def __init__(self, config: ml_collections.ConfigDict, num_classes: int | None):
        self.config, self.num_classes = config, num_classes

    @classmethod
    @abc.abstractmethod
    def build_data(cls, config: ml_collections.ConfigDict, workdir: str) -> TrainData:
        """This process's train and eval pipelines for `config.data` (preparing an embedded data
        set when `data.prepare` names one; `{workdir}` in paths is the run's workdir)."""

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

    def model_card(self, class_names: list[str] | None, source: Mapping[str, Any]) -> ModelCard | None:
        """The self-describing card (nf.data.card) the trainer writes into the workdir, so
        nf-eval / nf-predict / nf-export / init_from need no config; None (the default): this
        task's models are not served by those tools. `source` records where the weights came from."""
        return None

    def summary_line(self, results: Mapping[str, float]) -> str | None:
        """One human line of the final eval (raw and EMA), or None."""
        return None

    # The class count a benchmark of this task builds its model with (its reference dataset), or
    # None when the model has no class outputs.
    benchmark_num_classes: int | None = None
    # The dtype of the images in its training batches (uint8: raw pixels, see `model_images`).
    train_image_dtype: ClassVar[type] = np.float32

    def synthetic_batch(self, batch_size: int, image_size: int, channels: int, seed: int = 0) -> dict[str, np.ndarray]:
        """A random training batch of this task's layout (`tools/benchmark.py` times steps on it):
        standard-normal `image` (B, image_size, image_size, channels) float32 plus the targets."""
        raise NotImplementedError(f"Task {self.name!r} defines no synthetic_batch; benchmarks need one.")
