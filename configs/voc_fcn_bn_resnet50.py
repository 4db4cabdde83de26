"""Pascal VOC 2012 segmentation, BN-ResNet-50 twin of configs/voc_fcn_nf_resnet50.py (same recipe;
the FCN head uses BatchNorm like its backbone).

    nf-train --config=configs/voc_fcn_bn_resnet50.py --workdir=runs/voc_fcn_bn_resnet50 \
        --config.init_from=runs/bn_resnet50_imagenet

Expected (paper): 75.4 mIoU (NF-ResNet-50: 74.4).
"""

import importlib.util
import os

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "voc_fcn_nf_resnet50.py")
    spec = importlib.util.spec_from_file_location("voc_fcn_nf_resnet50", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("bn_resnet50")
