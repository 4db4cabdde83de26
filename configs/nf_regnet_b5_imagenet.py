"""NF-RegNet-B5 on ImageNet: the NF-RegNet recipe of the NF-ResNets paper (paper App. A).

Run (ImageNet as image folders data/imagenet/train/<wnid>/*.JPEG and data/imagenet/val/<wnid>/*.JPEG,
the validation images sorted into class folders; an accelerator pod, not a CPU):

    nf-train --config=configs/nf_regnet_b5_imagenet.py --workdir=runs/nf_regnet_b5_imagenet

Recipe (`nf.train.recipes.nf_regnet_imagenet`): global batch 1024, 360 epochs
(450,410 steps), SGD Nesterov 0.9, 5-epoch linear warmup to lr 0.4 then cosine to 0.001, weight
decay 1e-4 (5e-5 + 1e-5 x 5), EMA 0.99999, MixUp + CutMix, label smoothing 0.1, stochastic
depth 0.1, dropout of the variant, float32; train at 384 px, evaluate at 456 px (centre crop).

Expected: ImageNet top-1 83.0 ± 0.2% (paper Table 3, "w/ Augs" = MixUp + CutMix, median of 5 seeds;
82.0% without them); compare with the EMA top-1 in runs/nf_regnet_b5_imagenet/metrics.jsonl.
"""

import ml_collections

from nf.train import recipes


def get_config() -> ml_collections.ConfigDict:
    return recipes.nf_regnet_imagenet("b5")
