"""Per-example stochastic depth, dropout and the SkipInit gain."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class SkipGain(nnx.Param):
    """Scalar gain at the end of a residual branch (SkipInit: initialised to 0)."""


def stochastic_depth(x: jax.Array, rate: float | jax.Array, key: jax.Array | None) -> jax.Array:
    """Zero the whole residual branch for a random `rate` of the examples, without rescaling.

    The NF recipe keeps the surviving branches unscaled (DeepMind reference, paper §4).
    """
    if key is None or (isinstance(rate, (int, float)) and rate == 0):
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return x * keep.astype(x.dtype)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout (rescaled by 1/keep); identity when `key` is None or rate is 0."""
    if key is None or rate == 0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))
