"""The shape every family shares: stem -> stages of residual blocks -> final unit -> pool ->
dropout -> linear, with SPP statistics collected from the same forward pass.

`features` is that forward pass up to the final unit (what dense heads consume); `__call__`
pools it and applies the classifier. An `output_stride` below the natural one turns the last
stride-2 stages into dilated stride-1 stages (DeepLab): same parameters, denser features.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nf.layers import ScaledWSConv, dropout, get_activation, scaled_activation
from nf.layers.activations import Activation
from nf.models.stages import BlockConstants, Stage


def check_positive(**values) -> None:
    """Fail with the key's name when a size is not a positive integer."""
    for name, value in values.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        if not items or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0 for v in items):
            raise ValueError(f"{name} must be positive integers, got {value!r}")


def ws_conv_and_activation(
    activation: str | Activation,
    *,
    act_gain: float | None = None,
    padding: str = "SAME",
    ws_formula: str = "deepmind",
    gamma_in_conv: bool = False,
) -> tuple[Callable[..., ScaledWSConv], Activation]:
    """The family's Scaled WS conv factory and its activation.

    The gain gamma goes in the activation (DeepMind, paper §4.3), or with `gamma_in_conv` into
    every WS conv's kernel with plain activations (timm's non-`dm_` models). The two agree wherever
    an activation feeds a WS conv; they differ where it does not (the stem's first conv sees the
    image, the final activation feeds the pooled classifier). `act_gain` replaces gamma in the
    activation (ablations)."""
    if gamma_in_conv:
        if act_gain is not None:
            raise ValueError("gamma_in_conv puts gamma into the WS convs; it takes no act_gain")
        _, gamma = get_activation(activation)
        conv = functools.partial(ScaledWSConv, padding=padding, ws_formula=ws_formula, gamma=gamma)
        return conv, scaled_activation(activation, 1.0)
    conv = functools.partial(ScaledWSConv, padding=padding, ws_formula=ws_formula)
    return conv, scaled_activation(activation, act_gain)


def stage_dilations(
    stem_stride: int, strides: Sequence[int], output_stride: int | None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """`(dilations, feature strides)` per stage for an `output_stride` (None: the natural one).

    Every stage whose stride would take the running stride past `output_stride` runs at stride 1
    and multiplies the dilation by its stride instead (ResNet-50, OS 16: dilations 1, 1, 1, 2;
    OS 8: 1, 1, 2, 4); all its blocks use that dilation.
    """
    natural = stem_stride * math.prod(strides)
    target = natural if output_stride is None else output_stride
    dilations, feature_strides, current, dilation = [], [], stem_stride, 1
    for s in strides:
        if current * s > target:
            dilation *= s  # this stage's stride becomes dilation
        else:
            current *= s
        dilations.append(dilation)
        feature_strides.append(current)
    if current != target:
        reachable = sorted({stem_stride * math.prod(strides[:i]) for i in range(len(strides) + 1)})
        raise ValueError(f"output_stride={output_stride} is not reachable for this network; valid: {reachable}")
    return tuple(dilations), tuple(feature_strides)


class Features(NamedTuple):
    """One forward pass of the backbone."""

    stages: list[tuple[jax.Array, int]]  # each stage's output (pre-activation) and its stride
    final: jax.Array  # the final unit's (activated) output at the output stride: what heads consume
    stats: dict[str, jax.Array] | None  # per-block SPP statistics when collected


class FinalConv(nnx.Module):
    """The final unit of NF-RegNets and NFNets: 1x1 conv then activation, before pooling."""

    def __init__(self, conv: ScaledWSConv, activation: Activation):
        self.conv, self.activation = conv, activation

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return self.activation(self.conv(x))


class ResidualNetwork(nnx.Module):
    """Subclasses set `stem`, `stages` (via `build_stages`), `final`, `head` (via `make_head`)
    and `activation` (the backbone's scaled activation, which dense heads reuse)."""

    in_channels: int
    total_stride: int  # the output stride
    dropout_rate: float

    def build_stages(
        self,
        make_block: Callable[[int, int, int, int, int, bool, nnx.Rngs], nnx.Module],
        in_ch: int,
        widths: Sequence[int],
        depths: Sequence[int],
        strides: Sequence[int],
        schedule: Sequence[BlockConstants],
        *,
        stem_stride: int,
        output_stride: int | None = None,
        remat: bool | str,
        rngs: nnx.Rngs,
    ) -> int:
        """Stages of `make_block(stage, in_ch, out_ch, stride, dilation, first, rngs)`; returns the
        output width. `stride` is the nominal one (it decides the shortcut's parameters); a block
        with `dilation > 1` runs at stride 1 with dilated spatial convs."""
        if not len(depths) == len(widths) == len(strides):
            raise ValueError(
                f"depths {tuple(depths)}, widths {tuple(widths)} and strides {tuple(strides)} need one entry per stage"
            )
        dilations, self.feature_strides = stage_dilations(stem_stride, strides, output_stride)
        self.stage_widths = tuple(int(w) for w in widths)  # channels of each stage's output
        self.total_stride = self.feature_strides[-1]
        stages = []
        for s, (depth, width, stride, dilation, constants) in enumerate(
            zip(depths, widths, strides, dilations, schedule)
        ):

            def make(first, r, s=s, in_ch=in_ch, width=width, stride=stride, dilation=dilation):
                return make_block(s, in_ch if first else width, width, stride if first else 1, dilation, first, r)

            stages.append(Stage(make, depth, constants, remat=remat, rngs=rngs))
            in_ch = width
        self.stages = nnx.List(stages)
        self.stage_ends = tuple(int(e) - 1 for e in np.cumsum(depths))  # index of each stage's last block
        return in_ch

    def make_head(self, in_ch: int, num_classes: int, kernel_init, *, rngs: nnx.Rngs) -> None:
        self.num_features = in_ch  # channels of `features(x).final`
        self.head = nnx.Linear(in_ch, num_classes, kernel_init=kernel_init, rngs=rngs)
        for variable in (self.head.kernel, self.head.bias):
            variable.set_metadata(classifier=True)  # optimizers exempt it from AGC by this tag

    def __call__(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None, collect_stats: bool = False):
        """Logits (and per-block SPP statistics when `collect_stats`); `key` drives stochastic
        depth and dropout in training."""
        features = self.features(x, train=train, key=key, collect_stats=collect_stats)
        key = key if train else None
        x = jnp.mean(features.final, axis=(1, 2))
        x = dropout(x, self.dropout_rate, None if key is None else jax.random.fold_in(key, len(self.stages)))
        logits = self.head(x.astype(jnp.float32))
        return (logits, features.stats) if collect_stats else logits

    def features(
        self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None, collect_stats: bool = False
    ) -> Features:
        """Stem -> stages -> final unit; `key` drives stochastic depth in training."""
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"Expected NHWC images with {self.in_channels} channels, got shape {x.shape}")
        if min(x.shape[1:3]) < self.total_stride:
            raise ValueError(
                f"Images of {x.shape[1]}x{x.shape[2]} px are too small: this network's strides need at least "
                f"{self.total_stride}x{self.total_stride}"
            )
        key = key if train else None
        x = self.stem(x)
        outputs, stats = [], []
        for i, (stage, stride) in enumerate(zip(self.stages, self.feature_strides)):
            stage_key = None if key is None else jax.random.fold_in(key, i)
            x, s = stage(x, key=stage_key, train=train, collect_stats=collect_stats)
            outputs.append((x, stride))
            stats.append(s)
        merged = {k: jnp.concatenate([s[k] for s in stats]) for k in stats[0]} if collect_stats else None
        return Features(outputs, self.final(x, train), merged)
