"""Pre-activation (V2) bottleneck ResNets: NF-ResNets (paper §4) and the comparison models.

Every family of the paper's SPP and Table 1 studies is one option set: the conv (Scaled WS or
He-init Gaussian), the unit before each conv (gamma-scaled activation, BN-ReLU, ReLU-BN or plain
ReLU), the alpha/beta scaling and the optional SE / skip gain; FixUp has its own block.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from nf.layers import Conv, make_divisible, max_pool
from nf.layers import stochastic_depth as drop_branch
from nf.layers.activations import Activation
from nf.models.blocks import PreActivation, ResidualBlock, channel_attention
from nf.models.network import ResidualNetwork, check_positive, ws_conv_and_activation
from nf.models.stages import block_schedule

BLOCKS = ("nf", "fixup")


class Bottleneck(ResidualBlock):
    """Pre-activation bottleneck (ResNetV2; NF-ResNet, paper §4): pre -> *beta -> 1x1 -> pre ->
    3x3 (stride) -> pre -> 1x1 [-> SE] -> drop path -> * skip gain * alpha + shortcut. `pre` is
    the unit before each conv (`PreActivation`: the scaled activation, or a BN baseline's)."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        *,
        dilation: int = 1,
        mid: int,
        conv: Callable[..., Conv],
        norm: str = "none",
        activation: Activation,
        alpha: float,
        se_ratio: float = 0.0,
        se_gain: float = 2.0,
        pool_shortcut: bool = False,
        skipinit: bool = True,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ):
        conv = functools.partial(conv, dtype=dtype, rngs=rngs)
        self.pre = PreActivation(in_ch, norm, activation, rngs=rngs)
        run_stride = self._init_shortcut(conv, in_ch, out_ch, stride, dilation, pool_shortcut)
        self.conv_in = conv(in_ch, mid, 1)
        self.spatial = nnx.List([conv(mid, mid, 3, strides=run_stride, dilation=dilation)])
        self.conv_out = conv(mid, out_ch, 1)
        self.acts = nnx.List([PreActivation(mid, norm, activation, rngs=rngs) for _ in range(2)])
        self.se = channel_attention("se", out_ch, se_ratio, gain=se_gain, divisor=None, rngs=rngs)
        self._init_merge(alpha, skipinit)

    def __call__(self, x, *, beta, drop_rate, key, train):
        h = self.pre(x, train) * beta  # block input has unit variance at init
        shortcut = self._shortcut(x, h)
        (conv3x3,) = self.spatial
        r = self.conv_in(h)
        r = conv3x3(self.acts[0](r, train))
        r = self.conv_out(self.acts[1](r, train))
        if self.se is not None:
            r = self.se(r)  # 2 * sigmoid gate keeps the variance
        return self._merge(r, shortcut, drop_rate, key), r  # Var(r) ~ 1 at init: the SPP's third panel


class FixupBottleneck(ResidualBlock):
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
        run_stride = self._init_shortcut(conv, in_ch, out_ch, stride, dilation, pool_shortcut=False)
        self.conv1 = conv(in_ch, mid, 1, kernel_init=branch_init)
        self.conv2 = conv(mid, mid, 3, strides=run_stride, dilation=dilation, kernel_init=branch_init)
        self.conv3 = conv(mid, out_ch, 1, kernel_init=nnx.initializers.zeros)
        self.biases = nnx.Param(jnp.zeros((6,)))  # 1a, 1b, 2a, 2b, 3a, 3b
        self.multiplier = nnx.Param(jnp.ones(()))

    def __call__(self, x, *, beta, drop_rate, key, train):
        b = self.biases[...]
        h = jax.nn.relu(x) * beta
        shortcut = self._shortcut(x, h)
        r = jax.nn.relu(self.conv1(h + b[0]) + b[1])
        r = jax.nn.relu(self.conv2(r + b[2]) + b[3])
        r = self.conv3(r + b[4]) * self.multiplier[...] + b[5]
        return drop_branch(r, drop_rate, key) + shortcut, r


class ResNetStem(nnx.Module):
    """7x7 stride-2 conv, then 3x3 stride-2 max-pool; no activation (blocks pre-activate)."""

    def __init__(self, conv: Conv, pool_padding: str = "SAME"):
        self.conv, self.pool_padding = conv, pool_padding

    def __call__(self, x: jax.Array) -> jax.Array:
        return max_pool(self.conv(x), 3, 2, self.pool_padding, impl=self.conv.conv_impl)  # the conv's kernels


class ResNetV2(ResidualNetwork):
    """Stem -> 4 stages of bottlenecks -> pre-activation -> pool -> dropout -> linear.

    timm's `nf_resnet50` is the NF family with `pool_shortcut=True` (2x2 average pool then 1x1
    conv on strided shortcuts, not a strided 1x1), `skipinit=False`, `channel_divisor=8`,
    `padding='SYMMETRIC'` (convs and the stem's max-pool), `ws_formula='timm'` and
    `gamma_in_conv=True`."""

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
        pool_shortcut: bool = False,
        channel_divisor: int | None = None,
        padding: str = "SAME",
        ws_formula: str = "deepmind",
        gamma_in_conv: bool = False,
        stochastic_depth: float = 0.0,
        dropout: float = 0.0,
        output_stride: int | None = None,
        remat: bool | str = False,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ):
        check_positive(
            depths=depths,
            widths=widths,
            strides=strides,
            stem_width=stem_width,
            num_classes=num_classes,
            in_channels=in_channels,
        )
        if block not in BLOCKS:
            raise ValueError(f"Unknown block {block!r}; valid: {BLOCKS}")
        if block == "fixup" and (se_ratio or norm != "none" or ws):
            raise ValueError("block='fixup' takes no se_ratio, norm or ws options (set ws=False, norm='none')")
        if gamma_in_conv and not ws:
            raise ValueError("gamma_in_conv needs ws=True (gamma goes into the WS convs)")
        ws_conv, act = ws_conv_and_activation(
            activation, act_gain=act_gain, padding=padding, ws_formula=ws_formula, gamma_in_conv=gamma_in_conv
        )
        # WS convs always carry a bias; plain convs only when no BN follows them.
        conv = ws_conv if ws else functools.partial(Conv, use_bias=norm == "none", padding=padding)
        self.in_channels, self.dropout_rate = in_channels, dropout
        self.stem = ResNetStem(conv(in_channels, stem_width, 7, strides=2, dtype=dtype, rngs=rngs), padding)

        def make_block(stage, in_ch, out_ch, stride, dilation, first, r):
            if channel_divisor is None:
                mid = max(1, int(out_ch * bottleneck_ratio))
            else:
                mid = make_divisible(out_ch * bottleneck_ratio, channel_divisor)
            if block == "fixup":
                return FixupBottleneck(
                    in_ch, out_ch, stride, dilation=dilation, mid=mid, num_blocks=sum(depths), dtype=dtype, rngs=r
                )
            return Bottleneck(
                in_ch,
                out_ch,
                stride,
                dilation=dilation,
                mid=mid,
                conv=conv,
                norm=norm,
                activation=act,
                alpha=alpha,
                se_ratio=se_ratio,
                se_gain=se_gain,
                pool_shortcut=pool_shortcut,
                skipinit=skipinit,
                dtype=dtype,
                rngs=r,
            )

        schedule = block_schedule(depths, alpha, stochastic_depth, scale_inputs)
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
        self.activation = act if block == "nf" else jax.nn.relu
        self.final = PreActivation(out_ch, norm, self.activation, rngs=rngs)
        head_init = nnx.initializers.zeros if block == "fixup" else nnx.initializers.normal(0.01)
        self.make_head(out_ch, num_classes, head_init, rngs=rngs)
