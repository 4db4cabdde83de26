"""Dense prediction heads on (dilated) backbone features: FCN segmentation, FCRN depth."""

from nf.heads.common import BACKBONE_KEY, ConvUnit, HeadStyle, head_style, output_conv
from nf.heads.fcn import FCNHead
from nf.heads.fcrn import FastUpConv, FCRNHead, UpProjection, interleave

__all__ = [
    "BACKBONE_KEY",
    "ConvUnit",
    "FCNHead",
    "FCRNHead",
    "FastUpConv",
    "HeadStyle",
    "UpProjection",
    "head_style",
    "interleave",
    "output_conv",
]
