"""NYU Depth v2, BN-ResNet-50 twin of configs/nyu_fcrn_nf_resnet50.py (same recipe; the
FCRN head uses BatchNorm like its backbone).

    nf-train --config=configs/nyu_fcrn_bn_resnet50.py --workdir=runs/nyu_fcrn_bn_resnet50 \
        --config.init_from=runs/bn_resnet50_imagenet

Expected: the paper reports the BN-ResNet-50 next to NF-ResNet-50 (delta1 81.9%, rms 0.572, rel 0.141).
"""

import importlib.util
import os

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nyu_fcrn_nf_resnet50.py")
    spec = importlib.util.spec_from_file_location("nyu_fcrn_nf_resnet50", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config("bn_resnet50")
