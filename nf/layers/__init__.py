"""Normalizer-free building blocks: Scaled WS conv, gamma-scaled activations, SE, regularizers."""

from nf.layers.activations import ACTIVATIONS, GAMMA, estimate_gamma, get_activation, scaled_activation
from nf.layers.channels import grouped_width, make_divisible
from nf.layers.conv import (
    TIMM_WS_EPS,
    WS_EPS,
    Conv,
    ScaledWSConv,
    fold_ws,
    he_normal,
    set_conv_impl,
    standardize_weight,
    standardize_weight_timm,
)
from nf.layers.conv_ops import conv2d, max_pool
from nf.layers.eca import EfficientChannelAttention
from nf.layers.regularizers import SkipGain, dropout, stochastic_depth
from nf.layers.squeeze_excite import SqueezeExcite

__all__ = [
    "ACTIVATIONS",
    "GAMMA",
    "TIMM_WS_EPS",
    "WS_EPS",
    "Conv",
    "EfficientChannelAttention",
    "ScaledWSConv",
    "SkipGain",
    "SqueezeExcite",
    "conv2d",
    "dropout",
    "estimate_gamma",
    "fold_ws",
    "get_activation",
    "grouped_width",
    "he_normal",
    "make_divisible",
    "max_pool",
    "scaled_activation",
    "set_conv_impl",
    "standardize_weight",
    "standardize_weight_timm",
    "stochastic_depth",
]
