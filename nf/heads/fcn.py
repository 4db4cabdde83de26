"""FCN segmentation head (REFERENCE §7, the MoCo/BYOL protocol on Pascal VOC).

features (output stride 16) -> [3x3 conv, dilation 6, 256 -> act] x 2 -> 1x1 classifier
-> bilinear upsampling of the logits to the input size (done by the dense model)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nf.heads.common import ConvUnit, HeadStyle, output_conv


class FCNHead(nnx.Module):
    def __init__(
        self,
        in_ch: int,
        num_classes: int,
        style: HeadStyle,
        *,
        width: int = 256,
        dilation: int = 6,
        num_convs: int = 2,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        self.convs = nnx.List(
            [
                ConvUnit(style, in_ch if i == 0 else width, width, 3, dilation=dilation, dtype=dtype, rngs=rngs)
                for i in range(num_convs)
            ]
        )
        self.classifier = output_conv(width, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Per-pixel class logits at the feature resolution (float32)."""
        for conv in self.convs:
            x = conv(x, train)
        return self.classifier(x.astype(jnp.float32))
