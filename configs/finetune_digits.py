"""Fine-tuning a classifier onto new classes: the quickstart NF-ResNet (10 digit classes) becomes
an even / odd classifier (2 classes) with a fresh head, its backbone restored from the checkpoint.

The parity folders hold the bundled digits' images and split in two classes (data/digit_parity,
written on first use; `nf.data.prepare_digit_parity`). `init_from` reads every parameter but the
classifier from the quickstart workdir (a workdir of nf-import or nf.inference.save_model works
the same way; its nf_model.json names the architecture to set in config.model); the 2-way head
starts fresh because the class count differs. The backbone learns at 0.1x the head's rate
(`backbone_lr_mult`); `--config.freeze_backbone=True` trains the head alone. Run (after
`nf-train --config=configs/quickstart.py --workdir=runs/quickstart`):

    nf-train --config=configs/finetune_digits.py --workdir=runs/finetune_digits
    nf-train --config=configs/finetune_digits.py --workdir=runs/finetune_digits_frozen --config.freeze_backbone=True
    nf-train --config=configs/finetune_digits.py --workdir=runs/finetune_digits_scratch --config.init_from=''

Expected: the fine-tuned and the frozen-backbone runs ahead of the from-scratch run in even/odd
top-1 at the same 150 steps (not re-measured on the current tree; no committed results file).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.init_from = "runs/quickstart"  # a classifier workdir; "" = from scratch
    config.init_from_params = "ema"  # "ema" or "raw" weights of the checkpoint
    config.freeze_backbone = False  # True: the backbone gets no updates (the head alone trains)
    config.backbone_lr_mult = 0.1  # the backbone's learning rate relative to the head's
    config.seed = 0
    config.batch_size = 64  # global
    config.total_steps = 150
    config.log_every_steps = 25
    config.eval_every_steps = 50
    config.checkpoint_every_steps = 50
    config.keep_checkpoints = 1
    config.profile_steps = 0
    config.spp_after_training = False

    config.model = ml_collections.ConfigDict()  # the checkpoint's architecture (configs/quickstart.py)
    config.model.name = "nf_resnet26"
    config.model.depths = (1, 1, 1, 1)
    config.model.widths = (64, 128, 256, 512)
    config.model.stem_width = 32
    config.model.skipinit = False
    config.model.stochastic_depth = 0.0
    config.model.dropout = 0.0
    config.model.dtype = ""

    config.data = ml_collections.ConfigDict()
    config.data.prepare = "digit_parity"  # the digits as even/ and odd/ folders, written when missing
    config.data.root = "data/digit_parity"
    config.data.train = "data/digit_parity/train"
    config.data.eval = "data/digit_parity/test"
    config.data.image_size = 32
    config.data.eval_image_size = 0  # 0 = image_size
    config.data.crop_area_range = (0.5, 1.0)
    config.data.hflip = False
    config.data.workers = 0
    config.data.prefetch = 2
    config.data.mixup_alpha = 0.0
    config.data.cutmix = False
    config.data.randaugment_layers = 0
    config.data.randaugment_magnitude = 0
    config.data.eval_crop = "center_crop"
    config.data.crop_padding = 0
    config.data.on_corrupt = "error"

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.lr = 0.02
    config.optimizer.scale_lr_by_batch = False
    config.optimizer.warmup_steps = 10
    config.optimizer.end_lr = 0.0
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-5
    config.optimizer.label_smoothing = 0.1
    config.optimizer.agc_clip = 0.0
    config.optimizer.ema_decay = 0.99
    config.optimizer.accum_steps = 1

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    return config
