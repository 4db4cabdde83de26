"""BN-ResNet-50 (pre-activation, BN-ReLU-Conv) on ImageNet: the paper's batch-normalized baseline.

Run (ImageNet as image folders data/imagenet/{train,val}/<wnid>/*.JPEG; accelerators, not a CPU):

    nf-train --config=configs/bn_resnet50_imagenet.py --workdir=runs/bn_resnet50_imagenet

Same recipe as configs/nf_resnet50_imagenet.py (`nf.train.recipes.resnet_imagenet`), regularized.
BatchNorm statistics are per device, as in the paper's setting.

Expected: ImageNet top-1 76.4 ± 0.1 % (paper Table 1, BN-ResNet-50, regularized; 76.8 unregularized).
"""

import ml_collections

from nf.train import recipes


def get_config() -> ml_collections.ConfigDict:
    return recipes.resnet_imagenet("bn_resnet50", regularized=True)
