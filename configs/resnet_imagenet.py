"""ResNet-50s on ImageNet: the paper's Table 1 recipe (paper §4, App. A) for the NF-ResNet and its
batch-normalized baseline. The argument after ':' names the model (default nf_resnet50; any
registered ResNet, e.g. nf_resnet101 or bn_resnet50).

Run (ImageNet as image folders data/imagenet/{train,val}/<wnid>/*.JPEG; accelerators, not a CPU):

    nf-train --config=configs/resnet_imagenet.py:nf_resnet50 --workdir=runs/nf_resnet50_imagenet
    nf-train --config=configs/resnet_imagenet.py:bn_resnet50 --workdir=runs/bn_resnet50_imagenet

Recipe (`nf.train.recipes.resnet_imagenet`): batch 1024, 90 epochs (112,600 steps), SGD Nesterov
0.9, 5-epoch warmup to lr 0.4 then cosine to 0, weight decay 5e-5, label smoothing 0.1, 224 px,
centre-crop evaluation; regularized: stochastic depth 0.1 and dropout 0.25. The NF-ResNet uses
alpha 0.2 and SkipInit; the BN-ResNet is pre-activation (BN-ReLU-Conv) with per-device statistics.

Expected ImageNet top-1 (paper Table 1, regularized; unregularized in brackets, with
`--config.model.stochastic_depth=0 --config.model.dropout=0`):

    nf_resnet50  Expected: 76.8 ± 0.1%  (75.8)
    bn_resnet50  Expected: 76.4 ± 0.1%  (76.8)
"""

import ml_collections

from nf.train import recipes


def get_config(model: str = "nf_resnet50") -> ml_collections.ConfigDict:
    return recipes.resnet_imagenet(model or "nf_resnet50", regularized=True)
