"""Pre-activation (V2) bottleneck ResNets: NF-ResNets and the paper's comparison models.

One bottleneck serves every family in the paper's SPP and Table 1 studies; they differ only
in the conv (Scaled WS or He-init Gaussian), the unit before each conv (gamma-scaled activation,
BN-ReLU, ReLU-BN or plain ReLU), the alpha/beta scaling and the optional SE / skip gain.
FixUp changes the branch itself (scalar biases, multiplier) and has its own block.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nf.layers import Conv, ScaledWSConv, SkipGain, SqueezeExcite, dropout, max_pool, scaled_activation
from nf.layers import stochastic_depth as drop_branch
from nf.layers.activations import Activation
from nf.models.stages import Stage, block_schedule

NORMS = ("none", "bn_act", "act_bn")  # unit before each conv: act, BN->act, act->BN


class PreActivation(nnx.Module):
    """The unit in front of every conv: `act(x)`, `act(bn(x))` or `bn(act(x))`."""

    def __init__(self, channels: int, norm: str, activation: Activation, *, rngs: nnx.Rngs):
        if norm not in NORMS:
            raise ValueError(f"Unknown norm {norm!r}; valid: {NORMS}")
        self.norm, self.activation = norm, activation
        self.bn = nnx.BatchNorm(channels, momentum=0.9, epsilon=1e-5, rngs=rngs) if norm != "none" else None

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.norm == "bn_act":
            return self.activation(self.bn(x, use_running_average=not train))
        if self.norm == "act_bn":
            return self.bn(self.activation(x), use_running_average=not train)
        return self.activation(x)


class Bottleneck(nnx.Module):
    """Pre-activation bottleneck: 1x1 -> 3x3 (stride) -> 1x1, with an optional SE and skip gain."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        *,
        ratio: float,
        conv: Callable[..., Conv],
        norm: str,
        activation: Activation,
        alpha: float,
        se_ratio: float,
        se_gain: float,
        skipinit: bool,
        dtype: jnp.dtype | None,
        rngs: nnx.Rngs,
    ):
        mid = max(1, int(out_ch * ratio))
        conv = functools.partial(conv, dtype=dtype, rngs=rngs)
        self.pre = PreActivation(in_ch, norm, activation, rngs=rngs)
        self.shortcut = conv(in_ch, out_ch, 1, strides=stride) if stride > 1 or in_ch != out_ch else None
        self.conv1 = conv(in_ch, mid, 1)
        self.act1 = PreActivation(mid, norm, activation, rngs=rngs)
        self.conv2 = conv(mid, mid, 3, strides=stride)
        self.act2 = PreActivation(mid, norm, activation, rngs=rngs)
        self.conv3 = conv(mid, out_ch, 1)
        self.se = SqueezeExcite(out_ch, out_ch, se_ratio, gain=se_gain, rngs=rngs) if se_ratio > 0 else None
        self.skip_gain = SkipGain(jnp.zeros(())) if skipinit else None
        self.alpha = alpha

    def __call__(self, x, *, beta, drop_rate, key, train):
        h = self.pre(x, train) * beta  # block input has unit variance at init
        shortcut = x if self.shortcut is None else self.shortcut(h)  # transitions reset the variance
        r = self.conv1(h)
        r = self.conv2(self.act1(r, train))
        r = self.conv3(self.act2(r, train))
        if self.se is not None:
            r = self.se(r)  # 2 * sigmoid gate keeps the variance
        residual = r  # Var(f(x)) ~ 1 at init: what the SPP's third panel shows
        r = drop_branch(r, drop_rate, key)
        if self.skip_gain is not None:
            r = r * self.skip_gain[...]
        return r * self.alpha + shortcut, residual  # variance grows by alpha^2


class FixupBottleneck(nnx.Module):
    """FixUp (Zhang et al. 2019) in pre-activation order: scalar biases before each conv and
    activation, a scalar multiplier, branch convs He-init scaled by L^(-1/4), last conv zero."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, *, ratio: float, num_blocks: int,
                 dtype: jnp.dtype | None, rngs: nnx.Rngs):
        mid = max(1, int(out_ch * ratio))
        scale = num_blocks ** (-1.0 / (2 * 3 - 2))  # m = 3 convs per branch
        branch_init = nnx.initializers.variance_scaling(2.0 * scale**2, "fan_in", "normal")
        conv = functools.partial(Conv, use_bias=False, dtype=dtype, rngs=rngs)
        self.shortcut = conv(in_ch, out_ch, 1, strides=stride) if stride > 1 or in_ch != out_ch else None
        self.conv1 = conv(in_ch, mid, 1, kernel_init=branch_init)
        self.conv2 = conv(mid, mid, 3, strides=stride, kernel_init=branch_init)
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


class ResNetV2(nnx.Module):
    """Stem (7x7/2 conv, 3x3/2 max-pool) -> 4 stages of bottlenecks -> pre-act -> pool -> linear."""

    def __init__(
        self,
        depths: Sequence[int],
        *,
        widths: Sequence[int] = (256, 512, 1024, 2048),
        stem_width: int = 64,
        strides: Sequence[int] = (1, 2, 2, 2),
        bottleneck_ratio: float = 0.25,
        num_classes: int = 1000,
        in_channels: int = 3,
        block: str = "nf",
        norm: str = "none",
        ws: bool = True,
        activation: str | Activation = "relu",
        act_gain: float | None = None,
        alpha: float = 0.2,
        scale_inputs: bool = True,
        skipinit: bool = True,
        se_ratio: float = 0.0,
        se_gain: float = 2.0,
        stochastic_depth: float = 0.0,
        dropout: float = 0.0,
        remat: bool = False,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ):
        _check_positive(depths=depths, widths=widths, stem_width=stem_width, num_classes=num_classes,
                        in_channels=in_channels)
        if len(depths) != len(widths) or len(depths) != len(strides):
            raise ValueError(f"depths {tuple(depths)}, widths {tuple(widths)} and strides {tuple(strides)} "
                             "must have one entry per stage")
        if block not in ("nf", "fixup"):
            raise ValueError(f"Unknown block {block!r}; valid: ('nf', 'fixup')")
        if block == "fixup" and (se_ratio or norm != "none" or ws):
            raise ValueError("block='fixup' takes no se_ratio, norm or ws options (set ws=False, norm='none')")
        act = scaled_activation(activation, act_gain)
        # WS convs always carry a bias; plain convs only when no BN follows them.
        conv = ScaledWSConv if ws else functools.partial(Conv, use_bias=norm == "none")
        self.in_channels, self.num_classes, self.dropout_rate = in_channels, num_classes, dropout
        self.stem = conv(in_channels, stem_width, 7, strides=2, dtype=dtype, rngs=rngs)

        schedule = block_schedule(depths, alpha, stochastic_depth, scale_inputs)
        stages, in_ch = [], stem_width
        for depth, width, stride, constants in zip(depths, widths, strides, schedule):
            def make_block(first, r, in_ch=in_ch, width=width, stride=stride):
                ch, s = (in_ch, stride) if first else (width, 1)
                if block == "fixup":
                    return FixupBottleneck(ch, width, s, ratio=bottleneck_ratio, num_blocks=sum(depths),
                                           dtype=dtype, rngs=r)
                return Bottleneck(ch, width, s, ratio=bottleneck_ratio, conv=conv, norm=norm, activation=act,
                                  alpha=alpha, se_ratio=se_ratio, se_gain=se_gain, skipinit=skipinit,
                                  dtype=dtype, rngs=r)

            stages.append(Stage(make_block, depth, constants, remat=remat, rngs=rngs))
            in_ch = width
        self.stages = nnx.List(stages)
        self.final = PreActivation(in_ch, norm, act if block == "nf" else jax.nn.relu, rngs=rngs)
        head_init = nnx.initializers.zeros if block == "fixup" else nnx.initializers.normal(0.01)
        self.head = nnx.Linear(in_ch, num_classes, kernel_init=head_init, rngs=rngs)
        for variable in (self.head.kernel, self.head.bias):
            variable.set_metadata(classifier=True)  # optimizers exempt it from AGC by this tag
        self.stage_ends = tuple(int(e) - 1 for e in np.cumsum(depths))  # index of each stage's last block

    def __call__(
        self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None, collect_stats: bool = False
    ):
        """Logits (and per-block SPP statistics when `collect_stats`); `key` drives stochastic
        depth and dropout in training."""
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"Expected NHWC images with {self.in_channels} channels, got shape {x.shape}")
        key = key if train else None
        x = max_pool(self.stem(x), 3, 2)
        stats = []
        for i, stage in enumerate(self.stages):
            x, s = stage(x, key=None if key is None else jax.random.fold_in(key, i), train=train,
                         collect_stats=collect_stats)
            stats.append(s)
        x = jnp.mean(self.final(x, train), axis=(1, 2))
        x = dropout(x, self.dropout_rate, None if key is None else jax.random.fold_in(key, len(self.stages)))
        logits = self.head(x.astype(jnp.float32))
        if not collect_stats:
            return logits
        return logits, {k: jnp.concatenate([s[k] for s in stats]) for k in stats[0]}


def _check_positive(**values) -> None:
    for name, value in values.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        if not items or any((not isinstance(v, int)) or v <= 0 for v in items):
            raise ValueError(f"{name} must be positive integers, got {value!r}")


