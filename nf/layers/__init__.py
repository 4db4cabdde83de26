"""Normalizer-free building blocks: Scaled WS conv, gamma-scaled activations, SE, regularizers."""

from nf.layers.activations import ACTIVATIONS, GAMMA, estimate_gamma, get_activation, scaled_activation
from nf.layers.conv import WS_EPS, Conv, ScaledWSConv, fold_ws, he_normal, standardize_weight
from nf.layers.conv_ops import conv2d, max_pool
from nf.layers.regularizers import SkipGain, dropout, stochastic_depth
from nf.layers.squeeze_excite import SqueezeExcite

__all__ = [
    "ACTIVATIONS",
    "GAMMA",
    "WS_EPS",
    "Conv",
    "ScaledWSConv",
    "SkipGain",
    "SqueezeExcite",
    "conv2d",
    "dropout",
    "estimate_gamma",
    "fold_ws",
    "get_activation",
    "he_normal",
    "max_pool",
    "scaled_activation",
    "standardize_weight",
    "stochastic_depth",
]
