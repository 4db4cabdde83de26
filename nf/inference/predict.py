"""Class probabilities of image files with a model workdir's preprocessing."""

from __future__ import annotations

import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nf.data.card import ModelCard
from nf.data.classification import ClassificationEval
from nf.data.preprocessing import Preprocessing
from nf.data.sources import read_bytes
from nf.data.transforms import normalize
from nf.models import inference_copy


def load_images(paths: Sequence[str], preprocessing: Preprocessing) -> np.ndarray:
    """Files -> float32 (N, px, px, 3) model inputs: the eval crop and normalization of
    `preprocessing` (the same eval transform as nf-eval); unreadable files fail naming the file."""
    p = preprocessing
    transform = ClassificationEval(p).example_map()
    images = []
    for path in paths:
        example = transform.map({**read_bytes(path, "image"), "label": 0, "path": path})  # raises naming the file
        images.append(example["image"])
    return normalize(np.stack(images), p.mean, p.std)


def read_class_names(path: str, num_classes: int) -> list[str]:
    """One class name per line (e.g. an ImageNet class list); blank and '#' lines skipped."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--class_names={path!r} does not exist; expected one class name per line")
    with open(path) as f:
        names = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    if len(names) != num_classes:
        raise ValueError(f"{path} lists {len(names)} class names; the model has {num_classes} classes")
    return names


def class_names(card: ModelCard, names_file: str | None = None) -> list[str]:
    """Names from `names_file`, else the card's, else the class indices."""
    if names_file:
        return read_class_names(names_file, card.num_classes)
    return card.class_names or [str(i) for i in range(card.num_classes)]


def predict(
    model: nnx.Module, images: np.ndarray, top_k: int = 5, batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """`(probabilities, classes)`, each (N, top_k), most probable first. Batches are padded to
    `batch_size`, so one program serves every batch."""
    graphdef, state = nnx.split(inference_copy(model))  # W_hat computed once, blocks unstacked
    k = min(top_k, int(jax.eval_shape(lambda x: nnx.merge(graphdef, state)(x), images[:1]).shape[-1]))

    @jax.jit
    def top(state, x):
        probs = jax.nn.softmax(nnx.merge(graphdef, state)(x, train=False).astype(jnp.float32), axis=-1)
        return jax.lax.top_k(probs, k)

    probs, classes = [], []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        p, c = jax.device_get(top(state, padded))
        probs.append(p[: len(chunk)])
        classes.append(c[: len(chunk)])
    return np.concatenate(probs), np.concatenate(classes)
