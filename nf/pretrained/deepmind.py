"""DeepMind's released NFNet-F0 ... F6 parameters (Haiku) -> nf's `nfnet_f0` ... `nfnet_f6`.

The conversion is one table: Haiku module names to nf module paths. Haiku's conv kernels are
HWIO and its linear weights (in, out), as nf's, so tensors are copied unchanged; the blocks
(`nf_block`, `nf_block_1`, ... numbered over the whole network) are placed by stage.
"""

from __future__ import annotations

import os
import re
from typing import Any

import numpy as np
from flax import nnx

from nf.data.preprocessing import Preprocessing
from nf.models import MODELS
from nf.pretrained.catalog import DEEPMIND_CHECKPOINTS
from nf.pretrained.convert import ParamFiller, build, stage_of
from nf.pretrained.unpickle import load_haiku_params

PREFIX = "NFNet/~/"

# Haiku module (inside a block) -> nf module path inside the block; one table for the family.
BLOCK_MODULES: dict[str, tuple] = {
    "conv0": ("conv_in",),
    "conv1": ("spatial", 0),
    "conv1b": ("spatial", 1),
    "conv2": ("conv_out",),
    "conv_shortcut": ("shortcut",),
    "squeeze_excite/~/linear": ("se", "fc1"),
    "squeeze_excite/~/linear_1": ("se", "fc2"),
}
NETWORK_MODULES: dict[str, tuple] = {
    **{f"stem_conv{i}": ("stem", "convs", i) for i in range(4)},
    "final_conv": ("final", "conv"),
    "linear": ("head",),
}
# Haiku parameter name -> nf variable name (WSConv2D: w, gain, bias; Linear: w, b).
PARAM_NAMES = {"w": "kernel", "gain": "gain", "bias": "bias", "b": "bias", "skip_gain": "skip_gain"}
HEAD = ("head",)

_BLOCK = re.compile(r"nf_block(?:_(\d+))?(?:/~/(.+))?")


def model_name(variant: str) -> str:
    """DeepMind's variant name ('F0', 'f0', 'nfnet_f0') -> nf's registry name."""
    v = variant.lower().removeprefix("nfnet_")
    name = f"nfnet_{v}"
    if name not in MODELS or v.upper() not in DEEPMIND_CHECKPOINTS:
        raise ValueError(f"Unknown DeepMind NFNet variant {variant!r}; released: {sorted(DEEPMIND_CHECKPOINTS)}")
    return name


def preprocessing(variant: str) -> Preprocessing:
    """The reference's eval preprocessing at the variant's test resolution: centre crop of
    size/(size+32) of the short side, bicubic resize to size, ImageNet mean/std."""
    return Preprocessing.deepmind(MODELS[model_name(variant)].test_size)


def model_options(variant: str) -> dict[str, Any]:
    """nf's `nfnet_fN` is DeepMind's architecture as is: no options beyond the registry's."""
    model_name(variant)
    return {}


def catalog_entry(variant: str) -> dict[str, Any]:
    """The released file's published figures."""
    model_name(variant)  # validates the name
    return dict(DEEPMIND_CHECKPOINTS[variant.upper().removeprefix("NFNET_")])


def _nf_path(module: str, depths: tuple[int, ...]) -> tuple[tuple[int, int] | None, tuple]:
    """`((stage, block) or None, nf path within the block or network)` of a Haiku module name."""
    if module in NETWORK_MODULES:
        return None, NETWORK_MODULES[module]
    match = _BLOCK.fullmatch(module)
    if match is None or (match.group(2) is not None and match.group(2) not in BLOCK_MODULES):
        raise ValueError(f"unknown module {PREFIX + module!r}")
    block = int(match.group(1) or 0)
    inner = () if match.group(2) is None else BLOCK_MODULES[match.group(2)]
    return stage_of(depths, block), inner


def convert(params: dict[str, dict[str, np.ndarray]], model: nnx.Module, source: str, *, new_head: bool) -> nnx.Module:
    """Fill `model` (an nf NFNet) from Haiku `params`; `new_head` keeps the model's fresh classifier."""
    depths = tuple(stage.depth for stage in model.stages)
    filler = ParamFiller(model, source, skip=[HEAD] if new_head else [])
    for module, tensors in params.items():
        if not module.startswith(PREFIX):
            raise ValueError(f"{source}: module {module!r} is not an NFNet module (expected the prefix {PREFIX!r})")
        try:
            where, inner = _nf_path(module.removeprefix(PREFIX), depths)
        except (ValueError, IndexError) as e:
            raise ValueError(f"{source}: {e}; the file holds another architecture than the model name says") from e
        for name, value in tensors.items():
            if name not in PARAM_NAMES:
                raise ValueError(f"{source}: unknown parameter {module}/{name}")
            path = (*inner, PARAM_NAMES[name])
            if where is None:
                filler.set(path, value, f"{module}/{name}")
            else:
                filler.set_block(*where, path, value, f"{module}/{name}")
    return filler.finish()


def load(path: str | os.PathLike, name: str, num_classes: int | None = None, **overrides: Any) -> nnx.Module:
    """nf's NFNet with DeepMind's parameters from `path` (e.g. `F0_haiku.npz`).

    `name` is the variant ('F0'...'F6'); `num_classes=None` keeps the file's classifier, another
    count starts a fresh one (for fine-tuning). `overrides` go to the model (e.g. other widths
    and depths for a reduced file)."""
    params = load_haiku_params(path)
    source = os.fspath(path)
    head = params.get(PREFIX + "linear", {}).get("w")
    if head is None:
        raise ValueError(f"{source}: no classifier {PREFIX}linear/w; not a DeepMind NFNet parameter file")
    file_classes = int(head.shape[-1])
    classes = file_classes if num_classes is None else int(num_classes)
    new_head = classes != file_classes
    model = build(model_name(name), abstract=not new_head, num_classes=classes, **overrides)
    return convert(params, model, source, new_head=new_head)
