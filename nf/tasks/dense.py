"""Dense prediction models: a (dilated) registered backbone, a head, upsampling to the input.

The segmentation and depth tasks compose their models here, above both `nf.models` (backbones)
and `nf.heads` (heads), so neither of those packages imports the other's consumers.

The backbone is the classification model without its classifier, under `backbone`, so its
parameter subtree is the classification model's minus `head` and classification checkpoints
restore into it (nf.train.transfer).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from nf.heads import FCNHead, FCRNHead, head_style
from nf.heads.fcn import skip_stages
from nf.models.network import ResidualNetwork
from nf.models.registry import create_model


class DenseModel(nnx.Module):
    """`backbone.features(x) -> head -> bilinear resize to x's height and width`."""

    def __init__(self, backbone: ResidualNetwork, head: nnx.Module):
        self.backbone, self.head = backbone, head  # "backbone" is BACKBONE_KEY
        self.in_channels = backbone.in_channels

    def __call__(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None, collect_stats: bool = False):
        """(n, H, W, out channels) float32 predictions (and the backbone's SPP statistics)."""
        features = self.backbone.features(x, train=train, key=key, collect_stats=collect_stats)
        out = self.head(features, train)
        out = jax.image.resize(out, (*x.shape[:3], out.shape[-1]), "bilinear").astype(jnp.float32)
        return (out, features.stats) if collect_stats else out


def create_backbone(
    name: str, *, output_stride: int | None = None, rngs: nnx.Rngs, **overrides: Any
) -> ResidualNetwork:
    """A registered classification model at `output_stride`, its classifier removed."""
    model = create_model(name, rngs=rngs, num_classes=1, output_stride=output_stride, **overrides)
    model.head = None  # replaced by a dense head
    return model


def segmentation_model(
    name: str,
    num_classes: int,
    *,
    output_stride: int | None = 16,
    head_width: int = 256,
    head_dilation: int = 6,
    skip_stride: int | None = None,
    seed: int = 0,
    **overrides: Any,
) -> DenseModel:
    """FCN on a registered backbone (paper App. H: output stride 16, two 3x3 dilation-6 convs);
    `skip_stride` adds FCN-8s skips down to that stride (nf.heads.fcn)."""
    rngs = nnx.Rngs(seed)
    backbone = create_backbone(name, output_stride=output_stride, rngs=rngs, **overrides)
    skips = {i: backbone.stage_widths[i] for i in skip_stages(backbone.feature_strides, skip_stride)}
    head = FCNHead(
        backbone.num_features,
        num_classes,
        head_style(backbone),
        width=head_width,
        dilation=head_dilation,
        skips=skips,
        dtype=overrides.get("dtype"),
        rngs=rngs,
    )
    return DenseModel(backbone, head)


def depth_model(
    name: str,
    *,
    output_stride: int | None = None,
    init_depth: float = 0.0,
    skip_stride: int | None = None,
    seed: int = 0,
    **overrides: Any,
) -> DenseModel:
    """FCRN on a registered backbone (paper App. H: undilated, four up-projections); the head's
    output starts at `init_depth` metres; `skip_stride` adds the outputs of the last stage at each
    finer stride down to that one to the up-projection of the same resolution (nf.heads.fcrn)."""
    rngs = nnx.Rngs(seed)
    backbone = create_backbone(name, output_stride=output_stride, rngs=rngs, **overrides)
    strides = backbone.feature_strides
    skips = {  # up-projection k brings the features to stride output_stride / 2^(k+1)
        (strides[-1] // strides[i]).bit_length() - 2: (i, backbone.stage_widths[i])
        for i in skip_stages(strides, skip_stride)
    }
    head = FCRNHead(
        backbone.num_features,
        head_style(backbone),
        init_depth=init_depth,
        skips=skips,
        dtype=overrides.get("dtype"),
        rngs=rngs,
    )
    return DenseModel(backbone, head)
