"""NF-RegNet-B0 ... B5 on ImageNet: the NF-RegNet recipe of the NF-ResNets paper (paper App. A).
The argument after ':' picks the variant (default b0).

Run (ImageNet as image folders data/imagenet/train/<wnid>/*.JPEG and data/imagenet/val/<wnid>/*.JPEG,
the validation images sorted into class folders; an accelerator pod, not a CPU):

    nf-train --config=configs/nf_regnet_imagenet.py:b0 --workdir=runs/nf_regnet_b0_imagenet
    nf-train --config=configs/nf_regnet_imagenet.py:b2 --workdir=runs/nf_regnet_b2_imagenet

Recipe (`nf.train.recipes.nf_regnet_imagenet`): global batch 1024, 360 epochs (450,410 steps), SGD
Nesterov 0.9, 5-epoch linear warmup to lr 0.4 then cosine to 0.001, weight decay 5e-5 + 1e-5 x level,
EMA 0.99999, MixUp + CutMix, label smoothing 0.1, stochastic depth 0.1, the variant's dropout,
float32; train at the train px, evaluate at the test px (centre crop of px/(px+32)).

Variants (train px / test px, dropout; paper App. C) and the expected ImageNet top-1 (paper Table 3,
"w/ Augs" = MixUp + CutMix, median of 5 seeds; without them in brackets); compare with the EMA top-1
in WORKDIR/metrics.jsonl:

    b0  192 / 224  0.2   Expected: 77.0 ± 0.1%  (76.8)
    b1  224 / 256  0.2   Expected: 78.7 ± 0.1%  (78.6)
    b2  240 / 272  0.3   Expected: 80.0 ± 0.1%  (79.6)
    b3  288 / 320  0.3   Expected: 81.2 ± 0.1%  (80.6)
    b4  320 / 384  0.4   Expected: 82.5 ± 0.1%  (81.7)
    b5  384 / 456  0.4   Expected: 83.0 ± 0.2%  (82.0)
"""

import ml_collections

from nf.train import recipes


def get_config(variant: str = "b0") -> ml_collections.ConfigDict:
    return recipes.nf_regnet_imagenet(variant or "b0")
