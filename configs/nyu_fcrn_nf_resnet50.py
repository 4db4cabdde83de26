"""NYU Depth v2: FCRN (Laina et al. 2016) on an NF-ResNet-50 (paper App. H, paper Appendix H).

Data (not downloaded for you): the labeled file nyu_depth_v2_labeled.mat (HDF5; standard split
795 train / 654 test) at data/nyu_depth_v2_labeled.mat, or a folder of RGB + 16-bit depth PNG
pairs with train.txt / test.txt lists (--config.data.path=FOLDER). The backbone comes from an
ImageNet run of configs/resnet_imagenet.py:nf_resnet50 (its EMA weights):

    nf-train --config=configs/nyu_fcrn_nf_resnet50.py --workdir=runs/nyu_fcrn_nf_resnet50 \
        --config.init_from=runs/nf_resnet50_imagenet

Frames resized to 320x240 and centre-cropped to 304x228; flip, grayscale p=0.3, brightness,
saturation and hue jitter; berHu loss; 7,500 steps at batch 256, SGD Nesterov 0.9, lr 0.16
cosine. Expected (paper, NF-ResNet-50): delta1 81.9%, rms 0.572 m, rel 0.141 (`ema_delta1`,
`ema_rms`, `ema_rel` in metrics.jsonl); the BN twin is configs/nyu_fcrn_bn_resnet50.py.
"""

import ml_collections


def get_config(backbone: str = "nf_resnet50") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = "depth"
    config.init_from = f"runs/{backbone}_imagenet"  # a classification workdir or checkpoint; "" = scratch
    config.init_from_params = "ema"
    config.seed = 0
    config.batch_size = 256  # global
    config.total_steps = 7_500
    config.log_every_steps = 50
    config.eval_every_steps = 1_500
    config.checkpoint_every_steps = 500
    config.keep_checkpoints = 3
    config.max_bad_steps = 1  # consecutive non-finite (skipped) steps before the run stops
    config.profile_steps = 0
    config.spp_after_training = False

    config.model = ml_collections.ConfigDict()
    config.model.name = backbone
    config.model.stochastic_depth = 0.0
    config.model.output_stride = 32  # FCRN: undilated
    config.model.dtype = ""

    config.data = ml_collections.ConfigDict()
    config.data.prepare = ""
    config.data.root = "data"
    config.data.path = "data/nyu_depth_v2_labeled.mat"
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.image_size = (228, 304)  # (height, width) centre crop
    config.data.resize_to = (240, 320)
    config.data.hflip = True
    config.data.color = True
    config.data.workers = 8
    config.data.prefetch = 2
    config.data.on_corrupt = "error"

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.lr = 0.16
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_steps = 0
    config.optimizer.end_lr = 0.0
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-5
    config.optimizer.agc_clip = 0.0
    config.optimizer.ema_decay = 0.999
    config.optimizer.accum_steps = 1

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    return config
