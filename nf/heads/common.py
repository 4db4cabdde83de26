"""What both dense heads share: the conv flavour of the backbone they sit on, and conv units.

A normalizer-free backbone gets Scaled WS convs followed by its own gamma-scaled activation; a
BatchNorm backbone gets bias-free convs followed by the same BatchNorm as its blocks and its
activation (paper App. H). The flavour is read off the backbone's structure (does it hold a
BatchNorm?), not its name.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
from flax import nnx

from nf.layers import Conv, ScaledWSConv
from nf.layers.activations import Activation
from nf.models.blocks import batch_norm

# A dense model holds its backbone under this attribute (and parameter subtree), so the
# classification checkpoint's tree minus its head restores into it (nf.tasks.dense, nf.train.transfer).
BACKBONE_KEY = "backbone"


@dataclass(frozen=True)
class HeadStyle:
    """How a head's conv units are built: `act(norm(conv(x)))`."""

    conv: Callable[..., Conv]  # ScaledWSConv, or a bias-free Conv followed by BatchNorm
    batch_norm: bool
    activation: Activation


def head_style(backbone: nnx.Module) -> HeadStyle:
    """The head flavour matching `backbone` (any ResidualNetwork: it carries `activation`)."""
    uses_bn = any(isinstance(node, nnx.BatchNorm) for _, node in nnx.iter_graph(backbone))
    if uses_bn:
        return HeadStyle(functools.partial(Conv, use_bias=False), True, backbone.activation)
    return HeadStyle(ScaledWSConv, False, backbone.activation)


class ConvUnit(nnx.Module):
    """conv -> [BatchNorm] -> [activation]: the head's building block."""

    def __init__(
        self,
        style: HeadStyle,
        in_ch: int,
        out_ch: int,
        kernel_size: int | Sequence[int],
        *,
        act: bool = True,
        dtype=None,
        rngs: nnx.Rngs,
        **conv_kwargs,
    ):
        self.conv = style.conv(in_ch, out_ch, kernel_size, dtype=dtype, rngs=rngs, **conv_kwargs)
        self.bn = batch_norm(out_ch, rngs=rngs) if style.batch_norm else None
        self.activation = style.activation if act else None

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x, use_running_average=not train)
        return x if self.activation is None else self.activation(x)


def output_conv(in_ch: int, out_ch: int, kernel_size: int = 1, *, rngs: nnx.Rngs) -> Conv:
    """A head's output conv (float32, bias, small init), tagged like the classification head so
    the optimizer exempts it from AGC."""
    conv = Conv(in_ch, out_ch, kernel_size, kernel_init=nnx.initializers.normal(0.01), rngs=rngs)
    for variable in (conv.kernel, conv.bias):
        variable.set_metadata(classifier=True)
    return conv
