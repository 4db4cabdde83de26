"""Efficient Channel Attention (Wang et al. 2020, "ECA-Net", eq. 12), as timm's ECA-NFNets use it."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def eca_kernel_size(channels: int, gamma: float = 2.0, beta: float = 1.0) -> int:
    """ECA-Net eq. 12: the odd size nearest `(log2(C) + b) / gamma`, rounded down, at least 3."""
    t = int(abs(math.log(channels, 2) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


class EfficientChannelAttention(nnx.Module):
    """`gain * sigmoid(conv1d_k(mean_hw(x))) * x`: a k-tap conv across channels (zero padded, no
    bias) gates each channel. `gain=2` restores the variance the ~0.5 gate halves (as for SE)."""

    def __init__(self, channels: int, *, gain: float = 2.0, rngs: nnx.Rngs):
        k = eca_kernel_size(channels)
        bound = 1.0 / math.sqrt(k)  # PyTorch's Conv1d default init (fan-in k)
        self.kernel = nnx.Param(jax.random.uniform(rngs.params(), (k,), jnp.float32, -bound, bound))
        self.gain = gain

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jnp.mean(x, axis=(1, 2))  # (n, c)
        k = self.kernel.shape[0]
        hp = jnp.pad(h, ((0, 0), (k // 2, k // 2)))
        logits = sum(self.kernel[i] * hp[:, i : i + h.shape[1]] for i in range(k))
        gate = jax.nn.sigmoid(logits)
        return self.gain * gate[:, None, None, :].astype(x.dtype) * x
