"""Squeeze-and-Excite with the variance-restoring x2 (paper §4.4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nf.layers.activations import Activation
from nf.layers.channels import make_divisible


class SqueezeExcite(nnx.Module):
    """`gain * sigmoid(MLP(mean_hw(x))) * x`. At init the gate is ~0.5, halving the std, so gain=2
    restores unit variance (paper §4.4). `divisor` rounds the hidden width as timm does."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        ratio: float,
        *,
        gain: float = 2.0,
        activation: Activation = jax.nn.relu,
        divisor: int | None = None,
        rngs: nnx.Rngs,
    ):
        # hidden width: floor (DeepMind), or timm's rounding to a multiple of `divisor`
        hidden = (
            max(1, int(in_features * ratio)) if divisor is None else make_divisible(in_features * ratio, divisor, 0.0)
        )
        self.fc1 = nnx.Linear(in_features, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, out_features, rngs=rngs)
        self.gain, self.activation = gain, activation

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jnp.mean(x, axis=(1, 2))
        gate = jax.nn.sigmoid(self.fc2(self.activation(self.fc1(h))))
        return self.gain * gate[:, None, None, :].astype(x.dtype) * x
