"""Digit scenes segmentation: FCN on the quickstart NF-ResNet, fine-tuned from its checkpoint.

The scenes (64x64, 1-4 digits on dark plates over a textured background; 11 classes = background
+ 10 digits, the mask labels the strokes) are composed from the bundled digits on first use
(data/digit_scenes, no download; `nf/data/scenes.py`). The backbone starts from the quickstart
classifier's EMA weights; its last stage runs dilated (output stride 16). At 64 px that leaves 4x4
logits, too coarse for digit strokes a few pixels wide (logits holding each cell's exact class
fractions reach 15% mIoU once upsampled), so the head adds FCN-8s skips from the stride-8 and
stride-4 stages (`head.skip_stride`; logits at 16x16). Run (after
`nf-train --config=configs/quickstart.py --workdir=runs/quickstart`):

    nf-train --config=configs/scenes_seg.py --workdir=runs/scenes_seg
    nf-train --config=configs/scenes_seg.py --workdir=runs/scenes_seg_scratch --config.init_from=''

or `python tools/transfer_demo.py`, which runs quickstart (when missing), both of these and
the depth pair, and prints the results side by side. Expected, measured at 250 steps over 3 seeds
(`python tools/transfer_demo.py --task=segmentation --steps=250 --seed=0 --seed=1 --seed=2`,
tools/results/transfer_demo_seeds.json): EMA mIoU 27.3 ± 0.1% pretrained vs 26.2 ± 0.5% from
scratch, a small gain (+1.0 ± 0.4 points) of the same sign on every seed (docs/transfer.md).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = "segmentation"
    config.init_from = "runs/quickstart"  # a classification workdir or checkpoint; "" = from scratch
    config.init_from_params = "ema"  # "ema" or "raw" weights of the classifier
    config.seed = 0
    config.batch_size = 32  # global
    config.total_steps = 600
    config.log_every_steps = 25
    config.eval_every_steps = 300
    config.checkpoint_every_steps = 300
    config.keep_checkpoints = 1
    config.max_bad_steps = 1  # consecutive non-finite (skipped) steps before the run stops
    config.profile_steps = 0
    config.spp_after_training = False

    config.model = ml_collections.ConfigDict()  # must match the checkpoint's (configs/quickstart.py)
    config.model.name = "nf_resnet26"
    config.model.depths = (1, 1, 1, 1)
    config.model.widths = (64, 128, 256, 512)
    config.model.stem_width = 32
    config.model.skipinit = False
    config.model.stochastic_depth = 0.0
    config.model.output_stride = 16  # last stage dilated (paper App. H)
    config.model.dtype = ""

    config.head = ml_collections.ConfigDict()
    config.head.width = 128  # paper App. H: 256 for ImageNet backbones
    config.head.dilation = 2  # paper App. H: 6 at 513 px (33x33 features); these are 4x4
    config.head.skip_stride = 4  # FCN-8s skips from the stride-8 and stride-4 stages (0 = none, as in §7)

    config.data = ml_collections.ConfigDict()
    config.data.prepare = "digit_scenes"
    config.data.root = "data/digit_scenes"  # where `prepare` writes
    config.data.path = "data/digit_scenes/voc"  # the VOC-format folder
    config.data.num_classes = 11
    config.data.train_split = "train"
    config.data.eval_split = "val"
    config.data.mask_dir = "SegmentationClass"
    config.data.crop_size = 64
    config.data.eval_crop_size = 64
    config.data.scale_range = (0.75, 1.5)
    config.data.hflip = False  # a mirrored digit is another symbol
    config.data.workers = 0
    config.data.prefetch = 2
    config.data.on_corrupt = "error"

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.lr = 0.05
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_steps = 20
    config.optimizer.end_lr = 0.0
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-5
    config.optimizer.agc_clip = 0.0
    config.optimizer.ema_decay = 0.99
    config.optimizer.accum_steps = 1

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    return config
