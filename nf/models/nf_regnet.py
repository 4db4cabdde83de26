"""NF-RegNets B0-B8 (paper Appendix C): RegNetY-400MF-like inverted bottlenecks, normalizer-free."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax.numpy as jnp
from flax import nnx

from nf.layers import Conv, grouped_width, make_divisible
from nf.layers.activations import Activation
from nf.models.blocks import ResidualBlock, channel_attention
from nf.models.network import FinalConv, ResidualNetwork, check_positive, ws_conv_and_activation
from nf.models.stages import block_schedule

# variant -> (stage widths before x0.75, depths, train px, test px, dropout)  (paper App. C)
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


class NFRegNetBlock(ResidualBlock):
    """The NF-RegNet inverted bottleneck (paper App. C, after RegNetY): act -> *beta -> 1x1 expand
    -> act -> 3x3 grouped (stride) -> SE -> act -> 1x1 project -> drop path -> * skip gain * alpha
    + shortcut (2x2 average pool then 1x1 on transitions)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        *,
        dilation: int = 1,
        mid: int,
        groups: int,
        conv: Callable[..., Conv],
        activation: Activation,
        alpha: float,
        se_ratio: float,
        se_gain: float,
        se_divisor: int | None,
        skipinit: bool,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ):
        conv = functools.partial(conv, dtype=dtype, rngs=rngs)
        self.activation = activation
        run_stride = self._init_shortcut(conv, in_ch, out_ch, stride, dilation, pool_shortcut=True)
        self.conv_in = conv(in_ch, mid, 1)  # expand
        self.spatial = nnx.List([conv(mid, mid, 3, strides=run_stride, dilation=dilation, groups=groups)])
        self.conv_out = conv(mid, out_ch, 1)  # project
        self.se = channel_attention("se", mid, se_ratio, gain=se_gain, divisor=se_divisor, rngs=rngs)
        self._init_merge(alpha, skipinit)

    def __call__(self, x, *, beta, drop_rate, key, train):
        act = self.activation
        h = act(x) * beta  # unit variance at init
        shortcut = self._shortcut(x, h)
        (grouped,) = self.spatial
        r = self.conv_in(h)
        r = grouped(act(r))
        if self.se is not None:
            r = self.se(r)  # 2 * sigmoid gate keeps the variance
        r = self.conv_out(act(r))
        return self._merge(r, shortcut, drop_rate, key), r  # Var(r) ~ 1 at init: the SPP's third panel


class NFRegNet(ResidualNetwork):
    """3x3/2 stem -> stages (each starts with stride 2) -> 1x1 final conv -> act -> pool -> linear.

    timm's NF-RegNets (`nf_regnet_b1`) are this network with `channel_divisor=8` (stage, stem,
    final and bottleneck widths rounded to multiples of 8 by timm's `make_divisible`: B1's stages
    are 40, 80, 160, 328 instead of 36, 78, 156, 330), `se_divisor=8`, `skipinit=False`,
    `padding='SYMMETRIC'`, `ws_formula='timm'` and `gamma_in_conv=True`."""

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
        channel_divisor: int | None = None,
        se_divisor: int | None = None,
        padding: str = "SAME",
        ws_formula: str = "deepmind",
        gamma_in_conv: bool = False,
        num_classes: int = 1000,
        in_channels: int = 3,
        output_stride: int | None = None,
        remat: bool | str = False,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ):
        check_positive(
            widths=widths, depths=depths, group_width=group_width, num_classes=num_classes, in_channels=in_channels
        )
        if channel_divisor is None:
            final_ch = int(1280 * int(widths[-1] * width_mult) // 440)  # EfficientNet-style final expansion (B0: 960)
            widths = [int(w * width_mult) for w in widths]
        else:  # timm: from the unscaled last width, then scaled and rounded like every width
            final_ch = make_divisible(width_mult * (1280 * widths[-1] // 440), channel_divisor)
            widths = [make_divisible(w * width_mult, channel_divisor) for w in widths]
        strides = (2,) * len(widths)
        block_conv, act = ws_conv_and_activation(
            activation, padding=padding, ws_formula=ws_formula, gamma_in_conv=gamma_in_conv
        )
        conv = functools.partial(block_conv, dtype=dtype, rngs=rngs)
        self.in_channels, self.dropout_rate, self.activation = in_channels, dropout, act
        self.stem = conv(in_channels, widths[0], 3, strides=2)

        def make_block(stage, in_ch, out_ch, stride, dilation, first, r):
            ratio = 1.0 if stage == 0 and first else expansion  # the network's first block does not expand
            mid, groups = grouped_width(
                in_ch * ratio if channel_divisor else int(in_ch * ratio),
                group_width,
                f"stage {stage + 1} (width {out_ch})",
                channel_divisor,
            )
            return NFRegNetBlock(
                in_ch,
                out_ch,
                stride,
                dilation=dilation,
                mid=mid,
                groups=groups,
                conv=block_conv,
                activation=act,
                alpha=alpha,
                se_ratio=se_ratio,
                se_gain=se_gain,
                se_divisor=se_divisor,
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
        self.final = FinalConv(conv(out_ch, final_ch, 1), act)
        self.make_head(final_ch, num_classes, nnx.initializers.zeros, rngs=rngs)
