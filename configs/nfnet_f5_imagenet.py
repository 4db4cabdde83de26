"""NFNet-F5 on ImageNet: the NFNet recipe of "High-Performance Large-Scale Image Recognition
Without Normalization" (NFNet paper).

Run (ImageNet as image folders data/imagenet/train/<wnid>/*.JPEG and data/imagenet/val/<wnid>/*.JPEG,
the validation images sorted into class folders; a large accelerator pod, not a CPU):

    nf-train --config=configs/nfnet_f5_imagenet.py --workdir=runs/nfnet_f5_imagenet

Recipe (`nf.train.recipes.nfnet_imagenet`): global batch 4096, 360 epochs (112,602 steps), lr
0.1 x 4096 / 256 = 1.6 after a 5-epoch linear warmup, cosine to 0, SGD Nesterov 0.9, weight decay
2e-5, AGC 0.01, bf16 compute with float32 master weights, EMA 0.99999, label smoothing 0.1,
stochastic depth 0.25, dropout of the variant, MixUp + CutMix then RandAugment (4 layers,
magnitude 15 on the 10-scale of `nf.data.randaugment`); train at 416 px, evaluate at 544 px
(resize to 576^2, centre crop). If the batch does not fit, raise optimizer.accum_steps or
mesh.fsdp rather than the batch size's meaning.

Expected: ImageNet top-1 86.0% (NFNet paper Table 3, mean of 3 seeds); compare with the EMA top-1
in runs/nfnet_f5_imagenet/metrics.jsonl.
"""

import ml_collections

from nf.train import recipes


def get_config() -> ml_collections.ConfigDict:
    return recipes.nfnet_imagenet("f5")
