"""Signal Propagation Plots (paper §3, Fig. 1-2; paper §3) of registered models at init.

    nf-spp --models=nf_resnet600,bn_resnet600 --image_size=128 --batch_size=8 --out=/tmp/spp600
    nf-spp --models=nf_resnet50 --images=/data/val_jpegs --out=/tmp/spp50 --log_scale
    nf-spp --models=nf_resnet288 --override=widths=(64,128,256,512) --out=/tmp/spp_small

Writes OUT/spp.png (the three panels: average channel squared mean, average channel variance,
residual average channel variance, per residual block, stage ends dotted) and OUT/spp.json:
`{model: {"avg_channel_squared_mean": [...], "avg_channel_variance": [...],
"residual_avg_channel_variance": [...], "stage_ends": [...]}}`, one value per residual block.

Skip gains: `--skip_gain` (default 1) sets every SkipInit gain (`nf.layers.SkipGain`, found by type)
before measuring. NF-ResNets initialise it to 0, which hides every residual branch at init; the
paper's SPPs of the alpha-scaled design use a gain of 1 (paper §3). `--skip_gain=none` keeps
each model's initial value. Models without skip gains (BN / plain baselines) are unaffected.

Inputs: N(0, 1) noise by default (the paper's setting), or `--images`: a folder of JPEG/PNG files
or a `.npy` NHWC array of pixel values in [0, 255] (float arrays with max <= 1 are taken as
[0, 1] and scaled). Images are resized (shorter side, bicubic) and centre-cropped to
`--image_size`, then normalised by the ImageNet mean/std x 255. Every model sees the same batch.

BatchNorm models run with `train=True` by default (`--train_mode=auto`) so BN uses batch
statistics, as in the paper; the model's running averages are not modified.
Non-finite statistics (a diverging model such as a deep plain ResNet) are reported by block and
the tool exits with an error instead of plotting them.
"""

from __future__ import annotations

import ast
import json
import os
import sys
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from nf.models import create_model
from nf.signal import check_finite, compute_spp, load_images, plot_spp, set_skip_gains

_MODELS = flags.DEFINE_list("models", [], "Comma-separated registered model names (required).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "Input resolution (use >= 64; paper §3).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 8, "Number of images in the batch.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the model init and of the N(0, 1) inputs.")
_OUT = flags.DEFINE_string("out", None, "Output directory for spp.png and spp.json (created if missing).")
_SKIP_GAIN = flags.DEFINE_string(
    "skip_gain",
    "1",
    "Value for every SkipGain variable (default 1: SkipInit's 0 hides the residual branches); "
    "'none' keeps each model's initial value.",
)
_IMAGES = flags.DEFINE_string("images", None, "Folder of JPEG/PNG images or a .npy NHWC array; default N(0, 1).")
_LOG_SCALE = flags.DEFINE_bool("log_scale", False, "Logarithmic y axes.")
_TRAIN_MODE = flags.DEFINE_enum(
    "train_mode",
    "auto",
    ["auto", "true", "false"],
    "Forward with train=True? 'auto': True for models containing BatchNorm (batch statistics), else False.",
)
_OVERRIDES = flags.DEFINE_multi_string(
    "override",
    [],
    "Model option KEY=VALUE passed to create_model for every model (Python literal value), "
    "e.g. --override=widths=(64,128,256,512). Repeatable.",
)


def parse_skip_gain(text: str) -> float | None:
    if text.strip().lower() in ("none", ""):
        return None
    try:
        return float(text)
    except ValueError:
        raise app.UsageError(f"--skip_gain must be a number or 'none', got {text!r}") from None


def parse_overrides(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise app.UsageError(f"--override expects KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            overrides[key.strip()] = value.strip()  # a bare string such as activation=gelu
    return overrides


def has_batchnorm(model: nnx.Module) -> bool:
    return any(isinstance(node, nnx.BatchNorm) for _, node in nnx.iter_graph(model))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _MODELS.value:
        raise app.UsageError("--models is required, e.g. --models=nf_resnet600,bn_resnet600")
    if not _OUT.value:
        raise app.UsageError("--out is required: the directory for spp.png and spp.json")
    for name, flag in (("image_size", _IMAGE_SIZE), ("batch_size", _BATCH_SIZE)):
        if flag.value <= 0:
            raise app.UsageError(f"--{name} must be positive, got {flag.value}")
    if _IMAGE_SIZE.value < 64:
        print(
            f"warning: --image_size={_IMAGE_SIZE.value} < 64 distorts the statistics (3x3 convs on tiny maps "
            "mostly see zero padding; paper §3)",
            file=sys.stderr,
        )
    skip_gain = parse_skip_gain(_SKIP_GAIN.value)
    overrides = parse_overrides(_OVERRIDES.value)

    size, batch = _IMAGE_SIZE.value, _BATCH_SIZE.value
    if _IMAGES.value:
        try:
            images = load_images(_IMAGES.value, size, batch)
        except (OSError, ValueError) as e:
            raise app.UsageError(f"--images: {e}") from None
        source = f"{len(images)} images from {_IMAGES.value}"
    else:
        images = np.asarray(jax.random.normal(jax.random.PRNGKey(_SEED.value), (batch, size, size, 3)))
        source = f"N(0, 1) inputs, batch {batch}"

    results = {}
    for name in _MODELS.value:
        start = time.perf_counter()
        try:
            model = create_model(name, seed=_SEED.value, **overrides)
        except ValueError as e:  # unknown model / option: the registry lists the valid ones
            raise app.UsageError(str(e)) from None
        created = time.perf_counter()
        gains = set_skip_gains(model, skip_gain) if skip_gain is not None else 0
        train = has_batchnorm(model) if _TRAIN_MODE.value == "auto" else _TRAIN_MODE.value == "true"
        stats = compute_spp(model, images, train=train)
        del model
        done = time.perf_counter()
        n = len(stats["avg_channel_variance"])
        gain_note = f", {gains} skip gains set to {skip_gain:g}" if gains else ""
        print(
            f"{name}: {n} residual blocks, train={train}{gain_note}; created in {created - start:.1f}s, "
            f"forward (incl. compile) {done - created:.1f}s",
            flush=True,
        )
        try:
            check_finite(stats, name)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(1)
        results[name] = stats

    os.makedirs(_OUT.value, exist_ok=True)
    json_path, png_path = os.path.join(_OUT.value, "spp.json"), os.path.join(_OUT.value, "spp.png")
    with open(json_path, "w") as f:
        json.dump(results, f, indent=1)
    plot_spp(results, png_path, log_scale=_LOG_SCALE.value)
    print(f"SPP of {', '.join(results)} on {source} at {size}px: wrote {png_path} and {json_path}")


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
