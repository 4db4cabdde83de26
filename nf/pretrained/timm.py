"""timm's NF checkpoints (safetensors, PyTorch layout) -> nf models, without torch.

timm's `dm_nfnet_f0` ... `f6` (DeepMind's weights) become nf's `nfnet_f0` ... `f6`; its own
`nfnet_l0`, `eca_nfnet_l*`, `nf_regnet_b1` and `nf_resnet50` become `timm_<name>`. The
conversion is one table per family: timm module names (per block, and for the stem, final conv
and head) to nf module paths, plus one table of how each kind of tensor changes layout
(OIHW -> HWIO kernels, (out, in) -> (in, out) linear weights, (O, 1, 1, 1) gains -> (O,)).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import numpy as np
from flax import nnx

from nf.data.preprocessing import Preprocessing
from nf.models import NFNet, NFRegNet, ResNetV2
from nf.pretrained.catalog import TIMM_CHECKPOINTS
from nf.pretrained.convert import ParamFiller, block_slot, build
from nf.pretrained.safetensors import read_safetensors

# kind of timm module -> {timm parameter: (nf variable, layout)}
KINDS: dict[str, dict[str, tuple[str, str]]] = {
    "ws_conv": {"weight": ("kernel", "oihw"), "gain": ("gain", "flat"), "bias": ("bias", "flat")},
    "linear": {"weight": ("kernel", "linear"), "bias": ("bias", "flat")},
    "eca": {"weight": ("kernel", "flat")},
    "scalar": {"": ("", "scalar")},  # the module is the parameter (skipinit_gain)
}
_CONVS = {"downsample.conv": ("shortcut",), "conv1": ("conv_in",), "conv2": ("spatial", 0), "conv3": ("conv_out",)}
_HEAD = {"head.fc": (("head",), "linear")}

# family -> {"network": timm module -> (nf path, kind), "block": the same inside a block}
FAMILIES: dict[type[nnx.Module], dict[str, dict[str, tuple[tuple, str]]]] = {
    NFNet: {
        "network": {
            **{f"stem.conv{i + 1}": (("stem", "convs", i), "ws_conv") for i in range(4)},
            "final_conv": (("final", "conv"), "ws_conv"),
            **_HEAD,
        },
        "block": {
            **{k: (v, "ws_conv") for k, v in _CONVS.items()},
            "conv2b": (("spatial", 1), "ws_conv"),
            "attn_last.fc1": (("se", "fc1"), "linear"),  # SE on the block output
            "attn_last.fc2": (("se", "fc2"), "linear"),
            "attn_last.conv": (("se",), "eca"),  # ECA on the block output
            "skipinit_gain": (("skip_gain",), "scalar"),
        },
    },
    NFRegNet: {
        "network": {"stem.conv": (("stem",), "ws_conv"), "final_conv": (("final", "conv"), "ws_conv"), **_HEAD},
        "block": {
            **{k: (v, "ws_conv") for k, v in _CONVS.items()},
            "attn.fc1": (("se", "fc1"), "linear"),  # SE between the grouped conv and conv3
            "attn.fc2": (("se", "fc2"), "linear"),
            "skipinit_gain": (("skip_gain",), "scalar"),
        },
    },
    ResNetV2: {
        "network": {"stem.conv": (("stem", "conv"), "ws_conv"), **_HEAD},
        "block": {**{k: (v, "ws_conv") for k, v in _CONVS.items()}, "skipinit_gain": (("skip_gain",), "scalar")},
    },
}
HEAD = ("head",)
# Options the nf model needs to reproduce timm's forward pass for a file of this timm model:
# timm's dm_ ports of DeepMind's weights standardize with timm's formula (eps 1e-5 added to the
# variance, not DeepMind's floor on fan_in * var) and use PyTorch's erf GELU (DeepMind: tanh).
# Either difference alone moves the tiny fixture's logits by 2-3e-4 (GELU) and 1.6e-3 (WS eps)
# of their maximum (a random full-size F0: 3e-2 for the eps); with both modelled, 5e-7.
FILE_OPTIONS: dict[str, dict[str, Any]] = {
    f"dm_nfnet_f{i}": dict(ws_formula="timm", activation="gelu_exact") for i in range(7)
}

_BLOCK = re.compile(r"stages\.(\d+)\.(\d+)\.(.+)")


def model_name(name: str) -> str:
    """timm's model name (optionally with its pretrained tag, 'eca_nfnet_l0.ra2_in1k') -> nf's."""
    base = name.split(".")[0]
    if base not in TIMM_CHECKPOINTS:
        raise ValueError(
            f"Unknown timm NF checkpoint {name!r}; released: {sorted(TIMM_CHECKPOINTS)} (nf-import --list)"
        )
    return TIMM_CHECKPOINTS[base]["nf_name"]


def model_options(name: str) -> dict[str, Any]:
    """The nf model options a timm file of `name` is imported with (beyond the registry's)."""
    model_name(name)
    return dict(FILE_OPTIONS.get(name.split(".")[0], {}))


# timm's crop modes as nf's eval crops (nf.data.transforms.EvalTransform).
CROP_MODES = {"center": "resize_short_crop", "squash": "resize_crop"}


def preprocessing(name: str) -> Preprocessing:
    """timm's eval preprocessing of `name`'s published top-1: bicubic resize to
    floor(test_size / crop_pct) ('center': the short side; 'squash': both sides), centre crop
    test_size, then (x / 255 - mean) / std."""
    entry = catalog_entry(name)
    p = Preprocessing.timm(entry["test_size"], entry["crop_pct"], entry["interpolation"], entry["mean"], entry["std"])
    return dataclasses.replace(p, crop=CROP_MODES[entry["crop_mode"]])


def catalog_entry(name: str) -> dict[str, Any]:
    """The catalog's entry of timm model `name`: parameters, sizes, preprocessing, published top-1."""
    model_name(name)
    return dict(TIMM_CHECKPOINTS[name.split(".")[0]])


def _to_nf(value: np.ndarray, layout: str) -> np.ndarray:
    if layout == "oihw":  # PyTorch conv (out, in, kh, kw) -> HWIO
        return value.transpose(2, 3, 1, 0) if value.ndim == 4 else value
    if layout == "linear":  # (out, in) or a 1x1 conv's (out, in, 1, 1) -> (in, out)
        return value.reshape(value.shape[0], -1).T if value.ndim in (2, 4) else value
    if layout == "scalar":
        return value.reshape(()) if value.size == 1 else value
    return value.reshape(-1)  # gains (O, 1, 1, 1), biases, the ECA kernel (1, 1, k)


def _locate(name: str, table: dict[str, dict[str, tuple[tuple, str]]]) -> tuple[tuple[int, int] | None, tuple, str]:
    """`((stage, block) or None, nf path, layout)` of a timm tensor name; KeyError if unknown."""
    match = _BLOCK.fullmatch(name)
    where, modules, suffix = (
        (None, table["network"], name)
        if match is None
        else (
            (int(match.group(1)), int(match.group(2))),
            table["block"],
            match.group(3),
        )
    )
    if suffix in modules and modules[suffix][1] == "scalar":
        module, param = suffix, ""
    else:
        module, _, param = suffix.rpartition(".")
    inner, kind = modules[module]
    variable, layout = KINDS[kind][param]
    return where, (*inner, variable) if variable else tuple(inner), layout


def _expected(model: nnx.Module, table: dict[str, dict[str, tuple[tuple, str]]]) -> dict[tuple, str]:
    """Every nf parameter (path, stacked index) -> the timm tensor name that must fill it."""
    inverse = {
        scope: {
            (*inner, variable) if variable else tuple(inner): f"{module}.{param}" if param else module
            for module, (inner, kind) in modules.items()
            for param, (variable, _) in KINDS[kind].items()
        }
        for scope, modules in table.items()
    }
    names = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        path = tuple(path)
        if path[0] == "stages":
            stage, part, inner = path[1], path[2], path[3:]
            blocks = range(1, variable.shape[0] + 1) if part == "rest" else [0]
            for b in blocks:
                names[(block_slot(stage, b).path + inner, block_slot(stage, b).index)] = (
                    f"stages.{stage}.{b}.{inverse['block'].get(inner, '?')}"
                )
        else:
            names[(path, None)] = inverse["network"].get(path, "?")
    return names


def convert(tensors: dict[str, np.ndarray], model: nnx.Module, source: str, *, new_head: bool) -> nnx.Module:
    """Fill `model` from timm's state dict `tensors`; `new_head` keeps the model's fresh classifier."""
    table = FAMILIES[type(model)]
    expected = set(_expected(model, table).values())
    missing = sorted(n for n in expected if n not in tensors and not (new_head and n.startswith("head.")))
    if missing:
        more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
        raise ValueError(
            f"{source}: missing tensor(s) {', '.join(repr(m) for m in missing[:5])}{more}: the file is incomplete "
            "or holds another architecture than the model name says"
        )
    filler = ParamFiller(model, source, skip=[HEAD] if new_head else [])
    for name, value in tensors.items():
        try:
            where, path, layout = _locate(name, table)
        except (KeyError, ValueError):
            raise ValueError(
                f"{source}: unexpected tensor {name!r} (not part of nf's {type(model).__name__} of this name): "
                "the file holds another architecture than the model name says"
            ) from None
        value = _to_nf(value, layout)
        if where is None:
            filler.set(path, value, name)
        else:
            filler.set_block(*where, path, value, name)
    return filler.finish()


def load(path: str | os.PathLike, name: str, num_classes: int | None = None, **overrides: Any) -> nnx.Module:
    """nf's model with the parameters of timm's safetensors file `path` of model `name`.

    `num_classes=None` keeps the file's classifier, another count starts a fresh one (for
    fine-tuning). `overrides` go to the model (e.g. other widths and depths for a reduced file)."""
    source = os.fspath(path)
    nf_name = model_name(name)
    tensors = read_safetensors(path)
    head = tensors.get("head.fc.weight")
    if head is None or head.ndim != 2:
        raise ValueError(f"{source}: no classifier 'head.fc.weight' of rank 2; not a timm NF model checkpoint")
    file_classes = int(head.shape[0])
    classes = file_classes if num_classes is None else int(num_classes)
    new_head = classes != file_classes
    options = {**model_options(name), **overrides}
    model = build(nf_name, abstract=not new_head, num_classes=classes, **options)
    return convert(tensors, model, source, new_head=new_head)
