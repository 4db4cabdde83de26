"""FCN segmentation head (paper App. H, the MoCo/BYOL protocol on Pascal VOC).

features (output stride 16) -> [3x3 conv, dilation 6, 256 -> act] x 2 -> 1x1 classifier
-> bilinear upsampling of the logits to the input size (done by the dense model)

Optional skips (FCN-8s, Long et al. 2015): with `skip_stride` s below the output stride, the
logits are upsampled (bilinear) to each finer stride of the backbone down to s in turn and added
to a 1x1 class score of that stride's last stage output; the protocol's head has none. On small
inputs this is what makes thin structures resolvable: 64 px scenes give 4x4 features at output
stride 16, too coarse for the logits of a 3-6 px wide digit stroke.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from nf.heads.common import ConvUnit, HeadStyle, output_conv
from nf.models.network import Features


def skip_stages(feature_strides: tuple[int, ...], skip_stride: int | None) -> tuple[int, ...]:
    """Indices of the stages an FCN head fuses, coarse to fine: the last stage at each stride
    finer than the output stride (`feature_strides[-1]`) and at least `skip_stride` (None: none)."""
    if not skip_stride:
        return ()
    output_stride = feature_strides[-1]
    if skip_stride not in feature_strides or skip_stride >= output_stride:
        valid = sorted(s for s in set(feature_strides) if s < output_stride)
        raise ValueError(f"skip_stride={skip_stride} must be a stage stride below {output_stride}; valid: {valid}")
    last = {s: i for i, s in enumerate(feature_strides)}  # the last stage at each stride
    return tuple(last[s] for s in sorted(last, reverse=True) if skip_stride <= s < output_stride)


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
        skips: dict[int, int] | None = None,
        dtype=None,
        rngs: nnx.Rngs,
    ):
        """`skips`: {stage index: its channels} of the stages fused (`skip_stages`), or None."""
        self.convs = nnx.List(
            [
                ConvUnit(style, in_ch if i == 0 else width, width, 3, dilation=dilation, dtype=dtype, rngs=rngs)
                for i in range(num_convs)
            ]
        )
        self.classifier = output_conv(width, num_classes, rngs=rngs)
        skips = dict(skips or {})
        self.skip_stages = tuple(skips)  # coarse to fine
        self.skip_scores = nnx.List([output_conv(ch, num_classes, rngs=rngs) for ch in skips.values()])

    def __call__(self, features: Features, train: bool) -> jax.Array:
        """Per-pixel class logits at the output stride, or at the finest skip's stride (float32)."""
        x = features.final
        for conv in self.convs:
            x = conv(x, train)
        logits = self.classifier(x.astype(jnp.float32))
        for stage, score in zip(self.skip_stages, self.skip_scores):
            skip = features.stages[stage][0]
            logits = jax.image.resize(logits, (*skip.shape[:3], logits.shape[-1]), "bilinear")
            logits = logits + score(skip.astype(jnp.float32))
        return logits
