"""ImageNet training recipes of the NF papers (paper App. A) as trainer configs.

The configs `configs/resnet_imagenet.py`, `configs/nf_regnet_imagenet.py` and
`configs/nfnet_imagenet.py` each call one builder here with the variant after ':'
(`--config=configs/nfnet_imagenet.py:f3`), so the recipe lives in one place:

    from nf.train import recipes
    def get_config(variant="f0"):
        return recipes.nfnet_imagenet(variant)

The key structure is that of `configs/quickstart.py` (plus `data.eval_image_size` and the
RandAugment keys). Image sizes and dropout come from the model registry (paper App. C, NFNet paper).
"""

from __future__ import annotations

import ml_collections

from nf.data.transforms import INCEPTION_CROP_AREA
from nf.models.registry import DEFAULT_IMAGE_SIZE, MODELS, TEST_IMAGE_SIZE

IMAGENET_TRAIN_IMAGES = 1_281_167
IMAGENET_CLASSES = 1000
IMAGENET_ROOT = "data/imagenet"

NF_REGNET_VARIANTS = tuple(f"b{i}" for i in range(6))
NFNET_VARIANTS = tuple(f"f{i}" for i in range(8))

# RandAugment magnitude (10-scale, nf.data.randaugment) per NFNet variant; 4 layers for all.
NFNET_RANDAUGMENT_MAGNITUDE = {"f0": 5, "f1": 10, "f2": 10, "f3": 15, "f4": 15, "f5": 15, "f6": 15, "f7": 15}
NFNET_RANDAUGMENT_LAYERS = 4


def epochs_to_steps(epochs: float, batch_size: int, num_images: int = IMAGENET_TRAIN_IMAGES) -> int:
    """Optimizer steps for `epochs` passes over `num_images` at global `batch_size` (floor)."""
    return int(num_images * epochs) // batch_size


def _imagenet_base(model_name: str, *, batch_size: int, epochs: int) -> ml_collections.ConfigDict:
    steps_per_epoch = epochs_to_steps(1, batch_size)
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.batch_size = batch_size  # global
    config.total_steps = epochs_to_steps(epochs, batch_size)
    config.log_every_steps = 100
    config.eval_every_steps = 10 * steps_per_epoch  # 50k-image eval (raw and EMA) every ~10 epochs
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 3
    config.max_bad_steps = 1  # consecutive non-finite (skipped) steps before the run stops
    config.profile_steps = 0
    config.spp_after_training = True

    spec = MODELS[model_name]
    config.model = ml_collections.ConfigDict()
    config.model.name = model_name
    config.model.stochastic_depth = 0.0  # set by the recipe
    config.model.dropout = float(spec.args.get("dropout", 0.0))  # the variant's own rate (paper App. C, NFNet paper)
    config.model.dtype = ""  # "" = float32; "bfloat16" for bf16 compute with float32 master weights
    config.model.remat = "none"  # or "block" / a jax.checkpoint policy: recompute activations to save memory

    config.data = ml_collections.ConfigDict()
    config.data.prepare = ""  # ImageNet is not downloaded for you: see the config's docstring
    config.data.root = IMAGENET_ROOT
    config.data.train = f"{IMAGENET_ROOT}/train"
    config.data.eval = f"{IMAGENET_ROOT}/val"
    config.data.image_size = DEFAULT_IMAGE_SIZE[model_name]  # train px
    config.data.eval_image_size = TEST_IMAGE_SIZE[model_name]  # test px
    config.data.crop_area_range = INCEPTION_CROP_AREA
    config.data.hflip = True
    # The reference pipeline's resize (DeepMind's NFNet code: tf.image.resize bicubic, no low-pass
    # when shrinking); True adds nf's PIL-like anti-aliasing for ~10 % more host CPU (docs/input.md).
    config.data.antialias = False
    config.data.workers = 16  # grain worker processes per host; JPEG decoding needs many cores
    config.data.prefetch = 2
    config.data.mixup_alpha = 0.2  # MixUp ratio ~ Beta(0.2, 0.2) on half the batch ...
    config.data.cutmix = True  # ... CutMix on the other half
    config.data.randaugment_layers = 0  # 0 = off
    config.data.randaugment_magnitude = 0
    config.data.eval_crop = "center_crop"
    config.data.crop_padding = 32
    config.data.on_corrupt = "error"

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.lr = 0.4
    config.optimizer.scale_lr_by_batch = False
    config.optimizer.warmup_steps = 5 * steps_per_epoch
    config.optimizer.end_lr = 0.0
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 5e-5
    config.optimizer.label_smoothing = 0.1
    config.optimizer.agc_clip = 0.0  # 0 = off
    config.optimizer.ema_decay = 0.99999
    config.optimizer.accum_steps = 1  # raise (it divides batch_size) when the batch does not fit

    config.mesh = ml_collections.ConfigDict()
    config.mesh.data = -1
    config.mesh.fsdp = 1
    return config


def nf_regnet_imagenet(variant: str) -> ml_collections.ConfigDict:
    """NF-RegNet-B{0..5} (paper App. A): batch 1024, 360 epochs, SGD Nesterov 0.9, 5-epoch warmup
    to 0.4 then cosine to 0.001, weight decay 5e-5 + 1e-5 * level, EMA 0.99999, MixUp + CutMix,
    label smoothing 0.1, stochastic depth 0.1, the variant's dropout, float32, train at the train
    px and evaluate at the test px with the centre crop."""
    variant = variant.lower()
    if variant not in NF_REGNET_VARIANTS:
        raise ValueError(f"NF-RegNet ImageNet recipes exist for {list(NF_REGNET_VARIANTS)}, not {variant!r}")
    level = int(variant[1:])
    config = _imagenet_base(f"nf_regnet_{variant}", batch_size=1024, epochs=360)
    config.model.stochastic_depth = 0.1
    config.optimizer.lr = 0.4
    config.optimizer.end_lr = 0.001
    config.optimizer.weight_decay = round(5e-5 + 1e-5 * level, 10)
    config.data.eval_crop = "center_crop"
    return config


def nfnet_imagenet(variant: str) -> ml_collections.ConfigDict:
    """NFNet-F{0..7} (paper App. A): batch 4096, 360 epochs, lr 0.1 * batch / 256, 5-epoch warmup,
    cosine to 0, SGD Nesterov 0.9, weight decay 2e-5, AGC 0.01 (not on the classifier), bf16
    compute with float32 master weights, EMA 0.99999, label smoothing 0.1, stochastic depth 0.25,
    the variant's dropout, MixUp + CutMix then RandAugment (4 layers; magnitude 5 for F0, 10 for
    F1-F2, 15 for F3 up), eval by resize to (px + 32)^2 then centre crop."""
    variant = variant.lower()
    if variant not in NFNET_VARIANTS:
        raise ValueError(f"NFNet ImageNet recipes exist for {list(NFNET_VARIANTS)}, not {variant!r}")
    config = _imagenet_base(f"nfnet_{variant}", batch_size=4096, epochs=360)
    config.model.stochastic_depth = 0.25
    config.model.dtype = "bfloat16"
    config.optimizer.lr = 0.1
    config.optimizer.scale_lr_by_batch = True  # 0.1 * 4096 / 256 = 1.6
    config.optimizer.end_lr = 0.0
    config.optimizer.weight_decay = 2e-5
    config.optimizer.agc_clip = 0.01
    config.data.randaugment_layers = NFNET_RANDAUGMENT_LAYERS
    config.data.randaugment_magnitude = NFNET_RANDAUGMENT_MAGNITUDE[variant]
    config.data.eval_crop = "resize_crop"
    return config


def resnet_imagenet(model_name: str, *, regularized: bool = True) -> ml_collections.ConfigDict:
    """ResNet-50-style recipe of the NF-ResNet paper (Table 1, paper App. A): batch 1024, 90
    epochs, SGD Nesterov 0.9, 5-epoch linear warmup to 0.4 then cosine to 0, weight decay 5e-5
    (not on gains, biases or skip gains), label smoothing 0.1, Inception crop + flip, no
    MixUp/CutMix; the regularized version adds stochastic depth 0.1 and dropout 0.25."""
    if model_name not in MODELS:
        raise ValueError(f"Unknown model {model_name!r}")
    config = _imagenet_base(model_name, batch_size=1024, epochs=90)
    config.model.stochastic_depth = 0.1 if regularized else 0.0
    config.model.dropout = 0.25 if regularized else 0.0
    config.data.mixup_alpha = 0.0
    config.data.cutmix = False
    config.data.workers = 16
    return config


SMALL_BATCH_LR = {8: 0.025, 4: 0.01}  # paper Table 2


def resnet_small_batch(model_name: str, batch_size: int) -> ml_collections.ConfigDict:
    """Paper Table 2: ResNet-50 for 15 epochs at batch 8 (lr 0.025) or 4 (lr 0.01), no stochastic
    depth or dropout; the NF-ResNet is unaffected by the batch size while BN collapses."""
    if batch_size not in SMALL_BATCH_LR:
        raise ValueError(f"Small-batch recipes exist for batch sizes {sorted(SMALL_BATCH_LR)}, not {batch_size}")
    config = resnet_imagenet(model_name, regularized=False)
    config.batch_size = batch_size
    config.total_steps = epochs_to_steps(15, batch_size)
    config.optimizer.lr = SMALL_BATCH_LR[batch_size]
    config.optimizer.warmup_steps = epochs_to_steps(1, batch_size)  # 1 of the 15 epochs (the paper does not say)
    config.log_every_steps = 1000
    config.checkpoint_every_steps = 20_000
    config.eval_every_steps = epochs_to_steps(1, batch_size)
    config.data.workers = 2
    return config
