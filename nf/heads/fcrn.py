"""FCRN depth head (Laina et al. 2016, paper App. H): up-projections with fast up-convolution.

    features (C channels) -> 1x1 conv to C/2 -> 4 up-projection blocks (C/4, C/8, C/16, C/32;
    each doubles the resolution) -> 3x3 conv to 1 channel (depth in metres)

A fast up-convolution is 2x unpooling (each value to the top-left of a 2x2 cell, zeros elsewhere)
followed by a 5x5 conv, computed without the zeros: the output pixels of each of the four 2x2
phases see only 3x3, 3x2, 2x3 or 2x2 of the 25 taps, so four small convs on the low-resolution
input are interleaved instead.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from nf.heads.common import ConvUnit, HeadStyle, output_conv
from nf.models.network import Features

# (kernel (h, w), padding ((top, bottom), (left, right))) of the convs producing output rows
# 2i + r and columns 2j + s, for (r, s) = (0, 0), (0, 1), (1, 0), (1, 1): even output rows see
# input rows i-1, i, i+1; odd ones i, i+1 (likewise for columns).
_PHASE_TAPS = {0: (3, (1, 1)), 1: (2, (0, 1))}
FAST_UPCONV_PHASES = tuple(
    ((_PHASE_TAPS[r][0], _PHASE_TAPS[s][0]), (_PHASE_TAPS[r][1], _PHASE_TAPS[s][1])) for r in (0, 1) for s in (0, 1)
)


def interleave(phases: list[jax.Array]) -> jax.Array:
    """Four (n, h, w, c) maps for phases (0,0), (0,1), (1,0), (1,1) -> one (n, 2h, 2w, c) map."""
    a, b, c, d = phases
    n, h, w, ch = a.shape
    rows = jnp.stack([jnp.stack([a, b], axis=3), jnp.stack([c, d], axis=3)], axis=2)  # (n, h, 2, w, 2, c)
    return rows.reshape(n, 2 * h, 2 * w, ch)


class FastUpConv(nnx.Module):
    """2x fast up-convolution: four convs (3x3, 3x2, 2x3, 2x2) interleaved on the 2x grid, each
    followed by the style's norm (and activation when `act`)."""

    def __init__(self, style: HeadStyle, in_ch: int, out_ch: int, *, act: bool, dtype=None, rngs: nnx.Rngs):
        self.phases = nnx.List(
            [
                ConvUnit(style, in_ch, out_ch, kernel, padding=pads, act=act, dtype=dtype, rngs=rngs)
                for kernel, pads in FAST_UPCONV_PHASES
            ]
        )

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return interleave([phase(x, train) for phase in self.phases])


class UpProjection(nnx.Module):
    """`act(up1(x) -> act -> 3x3 conv  +  up2(x))` at twice the resolution."""

    def __init__(self, style: HeadStyle, in_ch: int, out_ch: int, *, dtype=None, rngs: nnx.Rngs):
        self.up_main = FastUpConv(style, in_ch, out_ch, act=True, dtype=dtype, rngs=rngs)
        self.conv = ConvUnit(style, out_ch, out_ch, 3, act=False, dtype=dtype, rngs=rngs)
        self.up_skip = FastUpConv(style, in_ch, out_ch, act=False, dtype=dtype, rngs=rngs)
        # NF: both branches have unit variance at init; 1/sqrt(2) keeps their sum at unit variance
        # (a BN head's normalization already does that).
        self.sum_scale = 1.0 if style.batch_norm else 1.0 / math.sqrt(2.0)
        self.activation = style.activation

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        main = self.conv(self.up_main(x, train), train)
        return self.activation((main + self.up_skip(x, train)) * self.sum_scale)


class FCRNHead(nnx.Module):
    def __init__(
        self,
        in_ch: int,
        style: HeadStyle,
        *,
        num_up: int = 4,
        init_depth: float = 0.0,
        skips: dict[int, tuple[int, int]] | None = None,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        """`init_depth`: the output conv's initial bias (metres), e.g. the training set's mean depth,
        so training does not spend its first steps learning that offset.

        `skips` {up-projection index k: (stage index, its channels)}: that stage's output, through
        a 1x1 conv unit, is added to the output of up-projection k (at the same resolution), the
        sum scaled like an up-projection's; the paper's head has none (see `nf.heads.fcn`)."""
        width = in_ch // 2
        if width >> num_up < 1:
            raise ValueError(f"FCRN head: {in_ch} input channels cannot be halved {num_up + 1} times")
        skips = dict(skips or {})
        if any(not 0 <= k < num_up for k in skips):
            raise ValueError(f"FCRN head: skips {sorted(skips)} must follow one of the {num_up} up-projections")
        self.reduce = ConvUnit(style, in_ch, width, 1, act=False, dtype=dtype, rngs=rngs)
        ups, projections = [], []
        for k in range(num_up):
            ups.append(UpProjection(style, width, width // 2, dtype=dtype, rngs=rngs))
            width //= 2
            if k in skips:
                projections.append(ConvUnit(style, skips[k][1], width, 1, act=False, dtype=dtype, rngs=rngs))
            else:
                projections.append(None)
        self.ups, self.skip_projections = nnx.List(ups), nnx.List(projections)
        self.skip_stages = tuple(skips[k][0] if k in skips else None for k in range(num_up))
        self.sum_scale = 1.0 if style.batch_norm else 1.0 / math.sqrt(2.0)  # as in UpProjection
        self.out = output_conv(width, 1, 3, rngs=rngs)
        self.out.bias[...] = jnp.full_like(self.out.bias[...], init_depth)

    def __call__(self, features: Features, train: bool) -> jax.Array:
        """Depth (n, 2^num_up h, 2^num_up w, 1) from the final features (n, h, w, C), float32."""
        x = self.reduce(features.final, train)
        for up, projection, stage in zip(self.ups, self.skip_projections, self.skip_stages):
            x = up(x, train)  # resolution x2, channels /2
            if projection is not None:
                x = (x + projection(features.stages[stage][0], train)) * self.sum_scale
        return self.out(x.astype(jnp.float32))
