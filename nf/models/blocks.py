"""What every family's residual blocks share; each family writes its own block the way its paper
draws it (NF-ResNet: `nf.models.resnet`, NF-RegNet: `nf.models.nf_regnet`, NFNet: `nf.models.nfnet`).

A block maps `x -> (out, residual)` where `residual` is the branch output f(x/beta) before it is
scaled and added (the SPP's third statistic). The normalizer-free blocks subclass
`ResidualBlock`: `out = alpha * skip_gain * drop(f(act(x) * beta)) + shortcut` (paper §4).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from nf.layers import Conv, EfficientChannelAttention, SkipGain, SqueezeExcite
from nf.layers import stochastic_depth as drop_branch
from nf.layers.activations import Activation

NORMS = ("none", "bn_act", "act_bn")  # unit before each conv: act, BN->act, act->BN
ATTENTIONS = ("se", "eca")  # Squeeze-Excite (se_ratio > 0 enables it) or ECA (timm's ECA-NFNets)


def batch_norm(channels: int, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """The BatchNorm of every BN model here (baselines and their dense heads)."""
    return nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, rngs=rngs)


class PreActivation(nnx.Module):
    """The unit in front of every conv: `act(x)`, `act(bn(x))` or `bn(act(x))`."""

    def __init__(self, channels: int, norm: str, activation: Activation, *, rngs: nnx.Rngs):
        if norm not in NORMS:
            raise ValueError(f"Unknown norm {norm!r}; valid: {NORMS}")
        self.norm, self.activation = norm, activation
        self.bn = batch_norm(channels, rngs=rngs) if norm != "none" else None

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.norm == "bn_act":
            return self.activation(self.bn(x, use_running_average=not train))
        if self.norm == "act_bn":
            return self.bn(self.activation(x), use_running_average=not train)
        return self.activation(x)


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 stride-2 average pool, SAME padding, dividing by the number of valid cells."""
    n, h, w, c = x.shape
    pads = ((0, 0), (0, h % 2), (0, w % 2), (0, 0))
    total = jnp.pad(x, pads).reshape(n, (h + 1) // 2, 2, (w + 1) // 2, 2, c).sum(axis=(2, 4))
    count = jnp.pad(jnp.ones((1, h, w, 1), x.dtype), pads).reshape(1, (h + 1) // 2, 2, (w + 1) // 2, 2, 1)
    return total / count.sum(axis=(2, 4))


def channel_attention(
    attention: str, channels: int, ratio: float, *, gain: float, divisor: int | None, rngs: nnx.Rngs
) -> nnx.Module | None:
    """Squeeze-Excite (when `ratio` > 0; its x2 `gain` keeps the variance, paper §4.4), ECA, or None."""
    if attention not in ATTENTIONS:
        raise ValueError(f"Unknown attention {attention!r}; valid: {ATTENTIONS}")
    if attention == "eca":
        return EfficientChannelAttention(channels, gain=gain, rngs=rngs)
    if ratio > 0:
        return SqueezeExcite(channels, channels, ratio, gain=gain, divisor=divisor, rngs=rngs)
    return None


class ResidualBlock(nnx.Module):
    """The shortcut and the merge every normalizer-free block shares (subclasses write the branch).

    `stride` is the nominal stride, which decides the parameters; with `dilation > 1` a block runs
    at stride 1 with dilated k x k convs (and no shortcut pooling), same parameters. Subclasses
    create their parameters in a fixed order (shortcut, branch convs, SE, skip gain): the order
    decides the random init of a seed.
    """

    def _init_shortcut(
        self, conv: Callable[..., Conv], in_ch: int, out_ch: int, stride: int, dilation: int, pool_shortcut: bool
    ) -> int:
        """Identity, or on transitions a 1x1 conv (strided, or after a 2x2 average pool when
        `pool_shortcut`); returns the stride the branch runs at."""
        run_stride = 1 if dilation > 1 else stride
        self.pool_shortcut = pool_shortcut and run_stride > 1
        projection = stride > 1 or in_ch != out_ch
        self.shortcut = conv(in_ch, out_ch, 1, strides=1 if self.pool_shortcut else run_stride) if projection else None
        return run_stride

    def _init_merge(self, alpha: float, skipinit: bool) -> None:
        self.skip_gain = SkipGain(jnp.zeros(())) if skipinit else None
        self.alpha = alpha

    def _shortcut(self, x: jax.Array, h: jax.Array) -> jax.Array:
        """x itself, or the projection of h = x/beta (a transition resets the variance to 1)."""
        if self.shortcut is None:
            return x
        return self.shortcut(avg_pool_2x2(h) if self.pool_shortcut else h)

    def _merge(self, r: jax.Array, shortcut: jax.Array, drop_rate: float, key: jax.Array | None) -> jax.Array:
        """`alpha * skip_gain * drop(r) + shortcut`: the variance grows by alpha^2 (paper §4)."""
        r = drop_branch(r, drop_rate, key)
        if self.skip_gain is not None:
            r = r * self.skip_gain[...]
        return r * self.alpha + shortcut
