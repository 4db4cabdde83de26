"""NF-RegNet-B3 on ImageNet: the NF-RegNet recipe of the NF-ResNets paper (paper App. A).

Run (ImageNet as image folders data/imagenet/train/<wnid>/*.JPEG and data/imagenet/val/<wnid>/*.JPEG,
the validation images sorted into class folders; an accelerator pod, not a CPU):

    nf-train --config=configs/nf_regnet_b3_imagenet.py --workdir=runs/nf_regnet_b3_imagenet

Recipe (`nf.train.recipes.nf_regnet_imagenet`): global batch 1024, 360 epochs
(450,410 steps), SGD Nesterov 0.9, 5-epoch linear warmup to lr 0.4 then cosine to 0.001, weight
decay 8e-5 (5e-5 + 1e-5 x 3), EMA 0.99999, MixUp + CutMix, label smoothing 0.1, stochastic
depth 0.1, dropout of the variant, float32; train at 288 px, evaluate at 320 px (centre crop).

Expected: ImageNet top-1 81.2 ± 0.1% (paper Table 3, "w/ Augs" = MixUp + CutMix, median of 5 seeds;
80.6% without them); compare with the EMA top-1 in runs/nf_regnet_b3_imagenet/metrics.jsonl.
"""

import ml_collections

from nf.train import recipes


def get_config() -> ml_collections.ConfigDict:
    return recipes.nf_regnet_imagenet("b3")
