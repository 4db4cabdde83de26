"""NFNets F0-F7 and F0+-F7+ ("High-Performance Large-Scale Image Recognition Without
Normalization", the NFNet paper): grouped bottlenecks with two 3x3 convs, SE on the output, GELU x gamma."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from nf.layers import Conv, grouped_width, make_divisible
from nf.layers.activations import Activation
from nf.models.blocks import ResidualBlock, channel_attention
from nf.models.network import FinalConv, ResidualNetwork, check_positive, ws_conv_and_activation
from nf.models.stages import block_schedule

NFNET_WIDTHS = (256, 512, 1536, 1536)
NFNET_PLUS_WIDTHS = (384, 768, 2048, 2048)
# F(N-1): depths N * (1, 2, 6, 3), (train px, test px, dropout)  (NFNet paper)
_SIZES = [
    (192, 256, 0.2),
    (224, 320, 0.3),
    (256, 352, 0.4),
    (320, 416, 0.4),
    (384, 512, 0.5),
    (416, 544, 0.5),
    (448, 576, 0.5),
    (480, 608, 0.5),
]
NFNET_VARIANTS: dict[str, dict] = {
    f"f{n - 1}": dict(depths=tuple(n * d for d in (1, 2, 6, 3)), train_size=t, test_size=e, dropout=p)
    for n, (t, e, p) in enumerate(_SIZES, start=1)
}


class NFNetStem(nnx.Module):
    """3x3 convs 16 (stride 2) -> act -> 32 -> act -> 64 -> act -> width (stride 2); no final act.
    `hidden` replaces (16, 32, 64)."""

    def __init__(self, in_ch: int, width: int, conv, activation: Activation, hidden: Sequence[int] = (16, 32, 64)):
        chans = (in_ch, *hidden, width)
        self.convs = nnx.List([conv(chans[i], chans[i + 1], 3, strides=2 if i in (0, 3) else 1) for i in range(4)])
        self.activation = activation

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, conv in enumerate(self.convs):
            x = conv(x if i == 0 else self.activation(x))
        return x


class NFNetBlock(ResidualBlock):
    """The NFNet bottleneck (NFNet paper, Fig. 3 and App. C Fig. 5): conv0 1x1 down to the
    bottleneck width, conv1 3x3 grouped (stride), conv1b 3x3 grouped, conv2 1x1 up, then SE (or
    timm's ECA) on the output; every conv is Scaled WS and follows the scaled activation.

    The parameters keep the names every family's checkpoints use: conv0 is `conv_in`, conv1 and
    conv1b are `spatial[0]` and `spatial[1]`, conv2 is `conv_out` (`nf.pretrained.deepmind`)."""

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
        attention: str,
        skipinit: bool,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ):
        conv = functools.partial(conv, dtype=dtype, rngs=rngs)
        self.activation = activation
        run_stride = self._init_shortcut(conv, in_ch, out_ch, stride, dilation, pool_shortcut=True)
        self.conv_in = conv(in_ch, mid, 1)  # conv0
        self.spatial = nnx.List(
            [
                conv(mid, mid, 3, strides=run_stride, dilation=dilation, groups=groups),  # conv1
                conv(mid, mid, 3, dilation=dilation, groups=groups),  # conv1b
            ]
        )
        self.conv_out = conv(mid, out_ch, 1)  # conv2
        self.se = channel_attention(attention, out_ch, se_ratio, gain=se_gain, divisor=se_divisor, rngs=rngs)
        self._init_merge(alpha, skipinit)

    def __call__(self, x, *, beta, drop_rate, key, train):
        act = self.activation
        conv0, (conv1, conv1b), conv2 = self.conv_in, self.spatial, self.conv_out
        h = act(x) * beta  # unit variance at init: beta = 1 / the expected std of x
        shortcut = self._shortcut(x, h)
        r = conv0(h)
        r = conv1(act(r))
        r = conv1b(act(r))
        r = conv2(act(r))  # gamma-scaled activations + WS keep Var ~ 1 through every conv
        if self.se is not None:
            r = self.se(r)  # 2 * sigmoid gate keeps the variance
        return self._merge(r, shortcut, drop_rate, key), r  # Var(r) ~ 1 at init: the SPP's third panel


class NFNet(ResidualNetwork):
    """Stem -> 4 stages of grouped bottlenecks -> 1x1 final conv (2x width) -> act -> pool -> linear.

    timm's NFNet-L / ECA-NFNet-L models are this network with SiLU, `bottleneck_ratio=0.25`,
    `group_width=64`, `final_conv_mult` 1.5 or 2, SE (ratio 0.25, `se_divisor=8`) or
    `attention='eca'`, `skipinit=False`, `channel_divisor=8`, `padding='SYMMETRIC'`,
    `ws_formula='timm'` and `gamma_in_conv=True`."""

    def __init__(
        self,
        depths: Sequence[int],
        *,
        widths: Sequence[int] = NFNET_WIDTHS,
        strides: Sequence[int] = (1, 2, 2, 2),
        bottleneck_ratio: float = 0.5,
        group_width: int = 128,
        se_ratio: float = 0.5,
        se_gain: float = 2.0,
        se_divisor: int | None = None,
        attention: str = "se",
        activation: str | Activation = "gelu",
        alpha: float = 0.2,
        stochastic_depth: float = 0.25,
        dropout: float = 0.2,
        skipinit: bool = True,
        final_conv_mult: float = 2,
        stem_widths: Sequence[int] = (16, 32, 64),
        channel_divisor: int | None = None,
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
            depths=depths,
            widths=widths,
            strides=strides,
            group_width=group_width,
            num_classes=num_classes,
            in_channels=in_channels,
        )
        block_conv, act = ws_conv_and_activation(
            activation, padding=padding, ws_formula=ws_formula, gamma_in_conv=gamma_in_conv
        )
        conv = functools.partial(block_conv, dtype=dtype, rngs=rngs)
        self.in_channels, self.dropout_rate, self.activation = in_channels, dropout, act
        stem_width = widths[0] // 2
        self.stem = NFNetStem(in_channels, stem_width, conv, act, tuple(stem_widths))

        def make_block(stage, in_ch, out_ch, stride, dilation, first, r):
            mid, groups = grouped_width(
                out_ch * bottleneck_ratio if channel_divisor else int(out_ch * bottleneck_ratio),
                group_width,
                f"stage {stage + 1} (width {out_ch})",
                channel_divisor,
            )
            return NFNetBlock(
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
                attention=attention,
                skipinit=skipinit,
                dtype=dtype,
                rngs=r,
            )

        schedule = block_schedule(depths, alpha, stochastic_depth)
        out_ch = self.build_stages(
            make_block,
            stem_width,
            widths,
            depths,
            strides,
            schedule,
            stem_stride=4,
            output_stride=output_stride,
            remat=remat,
            rngs=rngs,
        )
        final_ch = int(final_conv_mult * out_ch)  # 2 x 1536 = 3072
        if channel_divisor is not None:
            final_ch = make_divisible(final_ch, channel_divisor)
        self.final = FinalConv(conv(out_ch, final_ch, 1), act)
        self.make_head(final_ch, num_classes, nnx.initializers.normal(0.01), rngs=rngs)
