"""Pascal VOC 2012 segmentation: FCN on an NF-ResNet-50 at output stride 16 (paper App. H,
paper Appendix H; the MoCo/BYOL protocol).

Data (not downloaded for you): the VOC 2012 folder with JPEGImages/, SegmentationClassAug/ (or
SegmentationClass/ with --config.data.mask_dir=SegmentationClass) and
ImageSets/Segmentation/{train_aug,val}.txt, at data/VOC2012 (or --config.data.path=...). The
backbone comes from an ImageNet run of configs/resnet_imagenet.py:nf_resnet50 (its EMA weights):

    nf-train --config=configs/voc_fcn_nf_resnet50.py --workdir=runs/voc_fcn_nf_resnet50 \
        --config.init_from=runs/nf_resnet50_imagenet

30,000 steps at batch 16, SGD Nesterov 0.9, lr 0.003 x0.1 at 70% and 90%, weight decay 5e-5,
random scale 0.5-2, flip, 513 crops; evaluation on val with a 513 centre crop. Expected (paper):
74.4 mIoU (EMA, `ema_miou` in metrics.jsonl); the BN twin configs/voc_fcn_bn_resnet50.py: 75.4.
"""

import ml_collections


def get_config(backbone: str = "nf_resnet50") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = "segmentation"
    config.init_from = f"runs/{backbone}_imagenet"  # a classification workdir or checkpoint; "" = scratch
    config.init_from_params = "ema"
    config.seed = 0
    config.batch_size = 16  # global
    config.total_steps = 30_000
    config.log_every_steps = 100
    config.eval_every_steps = 5_000
    config.checkpoint_every_steps = 1_000
    config.keep_checkpoints = 3
    config.max_bad_steps = 1  # consecutive non-finite (skipped) steps before the run stops
    config.profile_steps = 0
    config.spp_after_training = False

    config.model = ml_collections.ConfigDict()
    config.model.name = backbone
    config.model.stochastic_depth = 0.0
    config.model.output_stride = 16  # last stage: stride 1, dilation 2
    config.model.dtype = ""

    config.head = ml_collections.ConfigDict()
    config.head.width = 256
    config.head.dilation = 6

    config.data = ml_collections.ConfigDict()
    config.data.prepare = ""
    config.data.root = "data/VOC2012"
    config.data.path = "data/VOC2012"
    config.data.num_classes = 21
    config.data.train_split = "train_aug"  # 10,582 ids (SegmentationClassAug); "train": 1,464
    config.data.eval_split = "val"  # 1,449 ids
    config.data.mask_dir = "SegmentationClassAug"
    config.data.crop_size = 513
    config.data.eval_crop_size = 513
    config.data.scale_range = (0.5, 2.0)
    config.data.hflip = True
    config.data.workers = 8
    config.data.prefetch = 2
    config.data.on_corrupt = "error"

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.lr = 0.003
    config.optimizer.schedule = "piecewise"
    config.optimizer.boundaries = (0.7, 0.9)
    config.optimizer.decay_factor = 0.1
    config.optimizer.warmup_steps = 0
    config.optimizer.end_lr = 0.0
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-5
    config.optimizer.agc_clip = 0.0
    config.optimizer.ema_decay = 0.9999
    config.optimizer.accum_steps = 1

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    return config
