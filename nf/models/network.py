"""The shape every family shares: stem -> stages of residual blocks -> final unit -> pool ->
dropout -> linear, with SPP statistics collected from the same forward pass."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from nf.layers import dropout
from nf.models.stages import BlockConstants, Stage


def check_positive(**values) -> None:
    """Fail with the key's name when a size is not a positive integer."""
    for name, value in values.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        if not items or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0 for v in items):
            raise ValueError(f"{name} must be positive integers, got {value!r}")


class ResidualNetwork(nnx.Module):
    """Subclasses set `stem`, `stages` (via `build_stages`), `final`, `head` and `total_stride`."""

    in_channels: int
    total_stride: int
    dropout_rate: float

    def build_stages(
        self,
        make_block: Callable[[int, int, int, int, bool, nnx.Rngs], nnx.Module],
        in_ch: int,
        widths: Sequence[int],
        depths: Sequence[int],
        strides: Sequence[int],
        schedule: Sequence[BlockConstants],
        *,
        remat: bool,
        rngs: nnx.Rngs,
    ) -> int:
        """Stages of `make_block(stage, in_ch, out_ch, stride, first, rngs)`; returns the output width."""
        if not len(depths) == len(widths) == len(strides):
            raise ValueError(
                f"depths {tuple(depths)}, widths {tuple(widths)} and strides {tuple(strides)} need one entry per stage"
            )
        stages = []
        for s, (depth, width, stride, constants) in enumerate(zip(depths, widths, strides, schedule)):

            def make(first, r, s=s, in_ch=in_ch, width=width, stride=stride):
                return make_block(s, in_ch if first else width, width, stride if first else 1, first, r)

            stages.append(Stage(make, depth, constants, remat=remat, rngs=rngs))
            in_ch = width
        self.stages = nnx.List(stages)
        self.stage_ends = tuple(int(e) - 1 for e in np.cumsum(depths))  # index of each stage's last block
        return in_ch

    def make_head(self, in_ch: int, num_classes: int, kernel_init, *, rngs: nnx.Rngs) -> None:
        self.head = nnx.Linear(in_ch, num_classes, kernel_init=kernel_init, rngs=rngs)
        for variable in (self.head.kernel, self.head.bias):
            variable.set_metadata(classifier=True)  # optimizers exempt it from AGC by this tag

    def __call__(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None, collect_stats: bool = False):
        """Logits (and per-block SPP statistics when `collect_stats`); `key` drives stochastic
        depth and dropout in training."""
        if x.ndim != 4 or x.shape[-1] != self.in_channels:
            raise ValueError(f"Expected NHWC images with {self.in_channels} channels, got shape {x.shape}")
        if min(x.shape[1:3]) < self.total_stride:
            raise ValueError(
                f"Images of {x.shape[1]}x{x.shape[2]} px are too small: this network's strides need at least "
                f"{self.total_stride}x{self.total_stride}"
            )
        key = key if train else None
        x = self.stem(x)
        stats = []
        for i, stage in enumerate(self.stages):
            stage_key = None if key is None else jax.random.fold_in(key, i)
            x, s = stage(x, key=stage_key, train=train, collect_stats=collect_stats)
            stats.append(s)
        x = jnp.mean(self.final(x, train), axis=(1, 2))
        x = dropout(x, self.dropout_rate, None if key is None else jax.random.fold_in(key, len(self.stages)))
        logits = self.head(x.astype(jnp.float32))
        if not collect_stats:
            return logits
        return logits, {k: jnp.concatenate([s[k] for s in stats]) for k in stats[0]}
