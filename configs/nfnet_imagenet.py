"""NFNet-F0 ... F7 on ImageNet: the recipe of "High-Performance Large-Scale Image Recognition Without
Normalization" (NFNet paper, App. A). The argument after ':' picks the variant (default f0).

Run (ImageNet as image folders data/imagenet/train/<wnid>/*.JPEG and data/imagenet/val/<wnid>/*.JPEG,
the validation images sorted into class folders; a large accelerator pod, not a CPU):

    nf-train --config=configs/nfnet_imagenet.py:f0 --workdir=runs/nfnet_f0_imagenet
    nf-train --config=configs/nfnet_imagenet.py:f3 --workdir=runs/nfnet_f3_imagenet

Recipe (`nf.train.recipes.nfnet_imagenet`): global batch 4096, 360 epochs (112,602 steps), lr
0.1 x 4096 / 256 = 1.6 after a 5-epoch linear warmup, cosine to 0, SGD Nesterov 0.9, weight decay
2e-5, AGC 0.01 (not on the classifier), bf16 compute with float32 master weights, EMA 0.99999,
label smoothing 0.1, stochastic depth 0.25, the variant's dropout, MixUp + CutMix then RandAugment
(4 layers; magnitude 5 for F0, 10 for F1-F2, 15 from F3 on, on the 10-scale of
`nf.data.randaugment`); evaluation resizes to (px + 32)^2 and centre-crops. If the batch does not
fit, raise optimizer.accum_steps or mesh.fsdp rather than the batch size's meaning.

Variants (train px / test px, dropout; NFNet paper Table 1) and the expected ImageNet top-1
(NFNet paper Table 3, mean of 3 seeds); compare with the EMA top-1 in WORKDIR/metrics.jsonl:

    f0  192 / 256  0.2   Expected: 83.6%
    f1  224 / 320  0.3   Expected: 84.7%
    f2  256 / 352  0.4   Expected: 85.1%
    f3  320 / 416  0.4   Expected: 85.7%
    f4  384 / 512  0.5   Expected: 85.9%
    f5  416 / 544  0.5   Expected: 86.0%
    f6  448 / 576  0.5   Expected: about 86.2% (the paper's 86.5% used SAM, which nf does not
                         implement; SAM gave F5 +0.3)
    f7  480 / 608  0.5   Expected: no published result (the paper trains up to F6)
"""

import ml_collections

from nf.train import recipes


def get_config(variant: str = "f0") -> ml_collections.ConfigDict:
    return recipes.nfnet_imagenet(variant or "f0")
