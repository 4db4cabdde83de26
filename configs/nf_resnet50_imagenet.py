"""NF-ResNet-50 on ImageNet, the paper's regularized Table 1 recipe (paper §4, App. A).

Run (ImageNet as image folders data/imagenet/{train,val}/<wnid>/*.JPEG; accelerators, not a CPU):

    nf-train --config=configs/nf_resnet50_imagenet.py --workdir=runs/nf_resnet50_imagenet

Recipe (`nf.train.recipes.resnet_imagenet`): batch 1024, 90 epochs (112,600 steps), SGD Nesterov
0.9, 5-epoch warmup to lr 0.4 then cosine to 0, weight decay 5e-5, label smoothing 0.1, alpha 0.2,
SkipInit, stochastic depth 0.1, dropout 0.25; 224 px, centre-crop evaluation.

Expected: ImageNet top-1 76.8 ± 0.1 % (paper Table 1, NF-ResNet-50, regularized; 75.8 without
stochastic depth and dropout: `--config.model.stochastic_depth=0 --config.model.dropout=0`).
"""

import ml_collections

from nf.train import recipes


def get_config() -> ml_collections.ConfigDict:
    return recipes.resnet_imagenet("nf_resnet50", regularized=True)
