"""NF-ResNet-50 at tiny batch sizes (paper Table 2): 15 epochs at batch 8 (lr 0.025) or 4 (lr 0.01).

Run (ImageNet image folders under data/imagenet; the suffix picks the batch size, default 8):

    nf-train --config=configs/nf_resnet50_small_batch.py:8 --workdir=runs/nf_resnet50_bs8
    nf-train --config=configs/nf_resnet50_small_batch.py:4 --workdir=runs/nf_resnet50_bs4
    # the BN baseline that collapses at these batch sizes:
    nf-train --config=configs/nf_resnet50_small_batch.py:8 --config.model.name=bn_resnet50 --workdir=runs/bn_bs8

Expected ImageNet top-1 (paper Table 2): NF-ResNet-50 69.6 ± 0.1 % at batch 8 and 69.9 ± 0.1 % at
batch 4; BN-ResNet-50 65.7 % and 55.7 %.
"""

import ml_collections

from nf.train import recipes


def get_config(batch_size: str = "8") -> ml_collections.ConfigDict:
    return recipes.resnet_small_batch("nf_resnet50", int(batch_size or 8))
