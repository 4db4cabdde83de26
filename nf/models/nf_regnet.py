"""NF-RegNets B0-B8 (paper Appendix C): RegNetY-400MF-like inverted bottlenecks, normalizer-free."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx

from nf.layers import ScaledWSConv, scaled_activation
from nf.layers.activations import Activation
from nf.models.blocks import Bottleneck
from nf.models.network import ResidualNetwork, check_positive
from nf.models.stages import block_schedule

# variant -> (stage widths before x0.75, depths, train px, test px, dropout)  (REFERENCE §4)
NF_REGNET_VARIANTS: dict[str, dict] = {
    "b0": dict(widths=(48, 104, 208, 440), depths=(1, 3, 6, 6), train_size=192, test_size=224, dropout=0.2),
    "b1": dict(widths=(48, 104, 208, 440), depths=(2, 4, 7, 7), train_size=224, test_size=256, dropout=0.2),
    "b2": dict(widths=(56, 112, 232, 488), depths=(2, 4, 8, 8), train_size=240, test_size=272, dropout=0.3),
    "b3": dict(widths=(56, 128, 248, 528), depths=(2, 5, 9, 9), train_size=288, test_size=320, dropout=0.3),
    "b4": dict(widths=(64, 144, 288, 616), depths=(2, 6, 11, 11), train_size=320, test_size=384, dropout=0.4),
    "b5": dict(widths=(80, 168, 336, 704), depths=(3, 7, 14, 14), train_size=384, test_size=456, dropout=0.4),
    "b6": dict(widths=(88, 184, 376, 792), depths=(3, 8, 16, 16), train_size=448, test_size=528, dropout=0.5),
    "b7": dict(widths=(96, 208, 416, 880), depths=(4, 10, 19, 19), train_size=512, test_size=600, dropout=0.5),
    "b8": dict(widths=(104, 232, 456, 968), depths=(4, 11, 22, 22), train_size=600, test_size=672, dropout=0.5),
}


def grouped_width(channels: int, group_width: int, where: str) -> tuple[int, int]:
    """`(width, groups)` with width rounded down to a multiple of `group_width`."""
    groups = channels // group_width
    if groups < 1:
        raise ValueError(f"{where}: {channels} channels cannot hold one group of width {group_width}")
    return groups * group_width, groups


class NFRegNet(ResidualNetwork):
    """3x3/2 stem -> stages (each starts with stride 2) -> 1x1 final conv -> act -> pool -> linear."""

    def __init__(
        self,
        widths: Sequence[int],
        depths: Sequence[int],
        *,
        width_mult: float = 0.75,
        expansion: float = 2.25,
        group_width: int = 8,
        se_ratio: float = 0.5,
        se_gain: float = 2.0,
        activation: str | Activation = "silu",
        alpha: float = 0.2,
        stochastic_depth: float = 0.1,
        dropout: float = 0.2,
        skipinit: bool = True,
        num_classes: int = 1000,
        in_channels: int = 3,
        output_stride: int | None = None,
        remat: bool = False,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ):
        check_positive(
            widths=widths, depths=depths, group_width=group_width, num_classes=num_classes, in_channels=in_channels
        )
        widths = [int(w * width_mult) for w in widths]
        strides = (2,) * len(widths)
        act = scaled_activation(activation)
        conv = functools.partial(ScaledWSConv, dtype=dtype, rngs=rngs)
        self.in_channels, self.dropout_rate, self.activation = in_channels, dropout, act
        self.stem = conv(in_channels, widths[0], 3, strides=2)

        def make_block(stage, in_ch, out_ch, stride, dilation, first, r):
            ratio = 1.0 if stage == 0 and first else expansion  # the network's first block does not expand
            mid, groups = grouped_width(int(in_ch * ratio), group_width, f"stage {stage + 1} (width {out_ch})")
            return Bottleneck(
                in_ch,
                out_ch,
                stride,
                dilation=dilation,
                mid=mid,
                groups=groups,
                conv=ScaledWSConv,
                activation=act,
                alpha=alpha,
                se_ratio=se_ratio,
                se_gain=se_gain,
                se_position="mid",
                pool_shortcut=True,
                skipinit=skipinit,
                dtype=dtype,
                rngs=r,
            )

        schedule = block_schedule(depths, alpha, stochastic_depth)
        out_ch = self.build_stages(
            make_block,
            widths[0],
            widths,
            depths,
            strides,
            schedule,
            stem_stride=2,
            output_stride=output_stride,
            remat=remat,
            rngs=rngs,
        )
        final_ch = int(1280 * out_ch // 440)  # EfficientNet-style final expansion (B0: 960)
        self.final = FinalConv(conv(out_ch, final_ch, 1), act)
        self.make_head(final_ch, num_classes, nnx.initializers.zeros, rngs=rngs)


class FinalConv(nnx.Module):
    """1x1 conv then activation, before pooling."""

    def __init__(self, conv: ScaledWSConv, activation: Activation):
        self.conv, self.activation = conv, activation

    def __call__(self, x, train: bool):
        return self.activation(self.conv(x))
