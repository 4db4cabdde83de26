"""The trainer's config keys, and the check every run makes before it touches the workdir.

The command line cannot add keys (`--config` is locked), but a config *file* can hold any key; a
misspelled one (`optimizer.lrr`) would silently leave the default in place. `validate` fails on a
key outside `KEYS`, naming the nearest valid one, and range-checks every interval and size.
`model.*` keys are the model's constructor options: the model registry checks them.
A new trainer key goes into `KEYS` (tests/test_config_schema.py loads every shipped config); a
task's own keys go into its `Task.config_keys` (nf.tasks), valid when `config.task` selects it.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from nf.layers.conv_ops import CONV_IMPLS
from nf.tasks import task_class

# Dotted key -> the smallest valid value (None: any value of the right kind).
KEYS: dict[str, float | None] = {
    "seed": None,
    "task": None,
    "batch_size": 1,
    "total_steps": 1,
    "log_every_steps": 1,
    "eval_every_steps": 1,
    "checkpoint_every_steps": 1,
    "keep_checkpoints": 1,
    "max_bad_steps": 1,
    "profile_steps": 0,
    "spp_after_training": None,
    "fsdp_min_size": 0,
    "conv_impl": None,  # the convs' kernels: "auto" (by backend), "lax" or "cpu" (nf.layers.conv_ops)
    "init_from": None,
    "init_from_params": None,
    "freeze_backbone": None,  # fine-tuning: the backbone gets no updates
    "backbone_lr_mult": 0,  # fine-tuning: the backbone's learning rate relative to the head's
    "mesh.data": None,  # -1 = all remaining devices
    "mesh.fsdp": None,
    "head.width": 1,
    "head.dilation": 1,
    "head.init_depth": None,
    "head.skip_stride": None,
    "data.prepare": None,
    "data.root": None,
    "data.path": None,
    "data.train": None,
    "data.eval": None,
    "data.tfds_data_dir": None,  # where "tfds:NAME:SPLIT" datasets are prepared (nf.data.tfds_source)
    "data.train_split": None,
    "data.eval_split": None,
    "data.mask_dir": None,
    "data.num_classes": 1,
    "data.image_size": 1,
    "data.eval_image_size": 0,  # 0 = image_size
    "data.crop_size": 1,
    "data.eval_crop_size": 1,
    "data.resize_to": 1,
    "data.scale_range": None,
    "data.color": None,
    "data.crop_area_range": None,
    "data.crop_padding": 0,
    "data.eval_crop": None,
    "data.hflip": None,
    "data.antialias": None,
    "data.workers": 0,
    "data.prefetch": 0,
    "data.mixup_alpha": 0,
    "data.cutmix": None,
    "data.randaugment_layers": 0,
    "data.randaugment_magnitude": 0,
    "data.on_corrupt": None,
    "optimizer.lr": 0,
    "optimizer.scale_lr_by_batch": None,
    "optimizer.schedule": None,
    "optimizer.warmup_steps": 0,
    "optimizer.end_lr": 0,
    "optimizer.boundaries": None,
    "optimizer.decay_factor": 0,
    "optimizer.momentum": 0,
    "optimizer.nesterov": None,
    "optimizer.weight_decay": 0,
    "optimizer.label_smoothing": 0,
    "optimizer.agc_clip": 0,  # 0 = off
    "optimizer.ema_decay": 0,
    "optimizer.accum_steps": 1,
}
FREE_SECTIONS = ("model",)  # checked by the model registry


class ConfigKeyError(ValueError):
    """A config holds an unknown key or a value out of range; the message names the key."""


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if name in FREE_SECTIONS:
            continue
        if isinstance(value, Mapping) or (hasattr(value, "items") and not isinstance(value, (str, bytes))):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def valid_keys(config: Mapping[str, Any]) -> dict[str, float | None]:
    """`KEYS` plus the `config_keys` of the task `config.task` selects."""
    try:
        task = task_class(config)
    except ValueError as e:
        raise ConfigKeyError(f"Invalid config: {e}. Fix the config file or --config flag.") from None
    return {**KEYS, **task.config_keys}


def validate(config: Mapping[str, Any]) -> None:
    """Raise `ConfigKeyError` for an unknown task, unknown keys (naming the nearest valid key) and
    intervals and sizes below their minimum (naming the key)."""
    keys = valid_keys(config)
    flat = _flatten(config)
    problems = []
    for key in sorted(set(flat) - set(keys)):
        near = difflib.get_close_matches(key, list(keys), n=1, cutoff=0.6)
        hint = f'; did you mean "{near[0]}"?' if near else f"; valid keys: {', '.join(sorted(keys))}"
        problems.append(f'unknown config key "{key}"{hint}')
    for key, value in flat.items():
        low = keys.get(key)
        if low is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if value < low:
            problems.append(f"config.{key}={value!r} is out of range: it must be >= {low:g}")
    if flat.get("conv_impl", "auto") not in CONV_IMPLS:
        problems.append(f"config.conv_impl={flat['conv_impl']!r} is unknown; valid: {', '.join(CONV_IMPLS)}")
    if problems:
        raise ConfigKeyError("Invalid config: " + "; ".join(problems) + ". Fix the config file or --config flag.")
