"""Residual blocks shared by every family (NF-ResNet, NF-RegNet, NFNet and the baselines).

A block maps `x -> (out, residual)` where `residual` is the branch output f(x/beta) before it is
scaled and added (the SPP's third statistic). `Bottleneck` covers the pre-activation bottleneck
of ResNetV2, NF-RegNet's inverted bottleneck and NFNet's grouped bottleneck: they differ only in
widths, groups, the number of spatial convs, where the SE sits and the strided shortcut.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from nf.layers import Conv, EfficientChannelAttention, SkipGain, SqueezeExcite
from nf.layers import stochastic_depth as drop_branch
from nf.layers.activations import Activation

NORMS = ("none", "bn_act", "act_bn")  # unit before each conv: act, BN->act, act->BN
SE_POSITIONS = ("out", "mid")
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


class Bottleneck(nnx.Module):
    """Pre-activation bottleneck: 1x1 -> k x k (stride, groups) [-> k x k] -> 1x1, optional SE
    (after the grouped conv or on the output) and SkipInit gain; `out = r * alpha + shortcut`.

    `stride` is the nominal stride, which decides the parameters; with `dilation > 1` the block
    runs at stride 1 with dilated k x k convs (and no shortcut pooling), same parameters."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        *,
        dilation: int = 1,
        mid: int,
        groups: int = 1,
        spatial_convs: int = 1,
        conv: Callable[..., Conv],
        norm: str = "none",
        activation: Activation,
        alpha: float,
        se_ratio: float = 0.0,
        se_gain: float = 2.0,
        se_position: str = "out",
        se_divisor: int | None = None,
        attention: str = "se",
        pool_shortcut: bool = False,
        skipinit: bool = True,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ):
        if se_position not in SE_POSITIONS:
            raise ValueError(f"Unknown se_position {se_position!r}; valid: {SE_POSITIONS}")
        if attention not in ATTENTIONS:
            raise ValueError(f"Unknown attention {attention!r}; valid: {ATTENTIONS}")
        conv = functools.partial(conv, dtype=dtype, rngs=rngs)
        self.pre = PreActivation(in_ch, norm, activation, rngs=rngs)
        run_stride = 1 if dilation > 1 else stride
        self.pool_shortcut = pool_shortcut and run_stride > 1
        projection = stride > 1 or in_ch != out_ch  # avg-pool then 1x1, or a strided 1x1
        self.shortcut = conv(in_ch, out_ch, 1, strides=1 if self.pool_shortcut else run_stride) if projection else None
        self.conv_in = conv(in_ch, mid, 1)
        self.spatial = nnx.List(
            [
                conv(mid, mid, 3, strides=run_stride if i == 0 else 1, dilation=dilation, groups=groups)
                for i in range(spatial_convs)
            ]
        )
        self.conv_out = conv(mid, out_ch, 1)
        self.acts = nnx.List([PreActivation(mid, norm, activation, rngs=rngs) for _ in range(spatial_convs + 1)])
        se_ch = out_ch if se_position == "out" else mid
        if attention == "eca":
            self.se = EfficientChannelAttention(se_ch, gain=se_gain, rngs=rngs)
        elif se_ratio > 0:
            self.se = SqueezeExcite(se_ch, se_ch, se_ratio, gain=se_gain, divisor=se_divisor, rngs=rngs)
        else:
            self.se = None
        self.se_position = se_position
        self.skip_gain = SkipGain(jnp.zeros(())) if skipinit else None
        self.alpha = alpha

    def __call__(self, x, *, beta, drop_rate, key, train):
        h = self.pre(x, train) * beta  # block input has unit variance at init
        shortcut = x
        if self.shortcut is not None:  # transitions see x/beta: the variance resets
            shortcut = self.shortcut(avg_pool_2x2(h) if self.pool_shortcut else h)
        r = self.conv_in(h)
        for act, conv in zip(self.acts, self.spatial):
            r = conv(act(r, train))
        if self.se is not None and self.se_position == "mid":
            r = self.se(r)  # 2 * sigmoid gate keeps the variance
        r = self.conv_out(self.acts[-1](r, train))
        if self.se is not None and self.se_position == "out":
            r = self.se(r)
        residual = r  # Var(f(x)) ~ 1 at init: what the SPP's third panel shows
        r = drop_branch(r, drop_rate, key)
        if self.skip_gain is not None:
            r = r * self.skip_gain[...]
        return r * self.alpha + shortcut, residual  # variance grows by alpha^2


class FixupBottleneck(nnx.Module):
    """FixUp (Zhang et al. 2019) in pre-activation order: scalar biases before each conv and
    activation, a scalar multiplier, branch convs He-init scaled by L^(-1/4), last conv zero."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        *,
        dilation: int = 1,
        mid: int,
        num_blocks: int,
        dtype: jnp.dtype | None,
        rngs: nnx.Rngs,
    ):
        scale = num_blocks ** (-1.0 / (2 * 3 - 2))  # m = 3 convs per branch
        branch_init = nnx.initializers.variance_scaling(2.0 * scale**2, "fan_in", "normal")
        conv = functools.partial(Conv, use_bias=False, dtype=dtype, rngs=rngs)
        run_stride = 1 if dilation > 1 else stride  # dilation replaces the stride (same parameters)
        projection = stride > 1 or in_ch != out_ch
        self.shortcut = conv(in_ch, out_ch, 1, strides=run_stride) if projection else None
        self.conv1 = conv(in_ch, mid, 1, kernel_init=branch_init)
        self.conv2 = conv(mid, mid, 3, strides=run_stride, dilation=dilation, kernel_init=branch_init)
        self.conv3 = conv(mid, out_ch, 1, kernel_init=nnx.initializers.zeros)
        self.biases = nnx.Param(jnp.zeros((6,)))  # 1a, 1b, 2a, 2b, 3a, 3b
        self.multiplier = nnx.Param(jnp.ones(()))

    def __call__(self, x, *, beta, drop_rate, key, train):
        b = self.biases[...]
        h = jax.nn.relu(x) * beta
        shortcut = x if self.shortcut is None else self.shortcut(h)
        r = jax.nn.relu(self.conv1(h + b[0]) + b[1])
        r = jax.nn.relu(self.conv2(r + b[2]) + b[3])
        r = self.conv3(r + b[4]) * self.multiplier[...] + b[5]
        residual = r
        return drop_branch(r, drop_rate, key) + shortcut, residual
