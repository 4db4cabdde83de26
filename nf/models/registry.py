"""Model registry: `create_model('nf_resnet50', **overrides)`.

Each registered name is plain data: the model class, its fixed arguments and its train / test
image sizes. Overrides are the class's keyword arguments; anything else fails with the list.
A model description `{"name": ..., **overrides}` (a config's `model`, a model card's "model")
builds through `create_model_from_dict`, the one way the tasks and the model card build models.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jax.numpy as jnp
from flax import nnx

from nf.models.nf_regnet import NF_REGNET_VARIANTS, NFRegNet
from nf.models.nfnet import NFNET_PLUS_WIDTHS, NFNET_VARIANTS, NFNet
from nf.models.resnet import ResNetV2

RESNET_DEPTHS: dict[int, tuple[int, ...]] = {
    26: (2, 2, 2, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
    288: (24, 24, 24, 24),
    600: (50, 50, 50, 50),
}

# The paper's comparison models as option sets of ResNetV2 (paper §3-4, Table 1).
_BASELINE = dict(ws=False, alpha=1.0, scale_inputs=False, skipinit=False)
RESNET_FAMILIES: dict[str, dict[str, Any]] = {
    "nf": {},  # Scaled WS, gamma, alpha=0.2, beta scaling, SkipInit gain
    "nf_se": dict(se_ratio=0.25),  # SE with the x2
    "nf_se_nox2": dict(se_ratio=0.25, se_gain=1.0),  # Fig. 9: attenuates the signal
    "nf_nows": dict(ws=False, act_gain=1.0),  # He-init Gaussian weights, no WS (Fig. 2)
    "nf_hegain": dict(act_gain=math.sqrt(2.0)),  # He's sqrt(2) in place of gamma (Fig. 8)
    "bn": dict(_BASELINE, norm="bn_act", act_gain=1.0),  # BN-ReLU-Conv
    "bn_relu_first": dict(_BASELINE, norm="act_bn", act_gain=1.0),  # ReLU-BN-Conv
    "plain": dict(_BASELINE, act_gain=1.0),  # unnormalized ResNetV2, He init
    "skipinit": dict(_BASELINE, act_gain=1.0, skipinit=True),  # zero-init scalar gain per branch
    "fixup": dict(_BASELINE, block="fixup"),
}


# timm's own NF variants (timm/models/nfnet.py), registered as `timm_<name>`: the families above
# with timm's options. Every timm model puts gamma in the WS convs, pads symmetrically, uses its
# WS formula (eps 1e-5 added to the variance), rounds widths to multiples of 8 and has no
# SkipInit gain. (timm's `dm_nfnet_f*` are nf's `nfnet_f*`.)
_TIMM = dict(channel_divisor=8, padding="SYMMETRIC", ws_formula="timm", gamma_in_conv=True, skipinit=False)
_TIMM_NFNET_L = dict(_TIMM, activation="silu", bottleneck_ratio=0.25, group_width=64)
TIMM_VARIANTS: dict[str, tuple[type[nnx.Module], dict[str, Any], int, int]] = {
    # name: (class, args, train px, test px)
    "nfnet_l0": (
        NFNet,
        dict(_TIMM_NFNET_L, depths=(1, 2, 6, 3), final_conv_mult=1.5, se_ratio=0.25, se_divisor=8),
        224,
        288,
    ),
    "eca_nfnet_l0": (NFNet, dict(_TIMM_NFNET_L, depths=(1, 2, 6, 3), final_conv_mult=1.5, attention="eca"), 224, 288),
    "eca_nfnet_l1": (NFNet, dict(_TIMM_NFNET_L, depths=(2, 4, 12, 6), final_conv_mult=2, attention="eca"), 256, 320),
    "eca_nfnet_l2": (NFNet, dict(_TIMM_NFNET_L, depths=(3, 6, 18, 9), final_conv_mult=2, attention="eca"), 320, 384),
    "nf_regnet_b1": (
        NFRegNet,
        dict(_TIMM, widths=(48, 104, 208, 440), depths=(2, 4, 7, 7), se_divisor=8),
        256,
        288,
    ),
    "nf_resnet50": (ResNetV2, dict(_TIMM, depths=(3, 4, 6, 3), pool_shortcut=True), 256, 288),
}


@dataclass(frozen=True)
class ModelSpec:
    cls: type[nnx.Module]
    args: dict[str, Any] = field(default_factory=dict)
    train_size: int = 224
    test_size: int = 224


def _table() -> dict[str, ModelSpec]:
    table = {
        f"{family}_resnet{depth}": ModelSpec(ResNetV2, {"depths": depths, **options})
        for family, options in RESNET_FAMILIES.items()
        for depth, depths in RESNET_DEPTHS.items()
    }
    for variant, v in NF_REGNET_VARIANTS.items():
        args = {"widths": v["widths"], "depths": v["depths"], "dropout": v["dropout"]}
        table[f"nf_regnet_{variant}"] = ModelSpec(NFRegNet, args, v["train_size"], v["test_size"])
    for variant, v in NFNET_VARIANTS.items():
        args = {"depths": v["depths"], "dropout": v["dropout"]}
        table[f"nfnet_{variant}"] = ModelSpec(NFNet, args, v["train_size"], v["test_size"])
        table[f"nfnet_{variant}_plus"] = ModelSpec(
            NFNet, {**args, "widths": NFNET_PLUS_WIDTHS}, v["train_size"], v["test_size"]
        )
    for variant, (cls, args, train_size, test_size) in TIMM_VARIANTS.items():
        table[f"timm_{variant}"] = ModelSpec(cls, args, train_size, test_size)
    return table


MODELS: dict[str, ModelSpec] = _table()
DEFAULT_IMAGE_SIZE: dict[str, int] = {name: spec.train_size for name, spec in MODELS.items()}
TEST_IMAGE_SIZE: dict[str, int] = {name: spec.test_size for name, spec in MODELS.items()}


def _check_name(name: str) -> ModelSpec:
    if name not in MODELS:
        close = difflib.get_close_matches(name, list(MODELS), n=5)
        hint = f" Did you mean one of {close}?" if close else ""
        raise ValueError(f"Unknown model {name!r}.{hint} Registered models: {sorted(MODELS)}")
    return MODELS[name]


def model_options(name: str) -> list[str]:
    """Valid override names for a registered model."""
    params = inspect.signature(_check_name(name).cls.__init__).parameters
    return sorted(p for p in params if p not in ("self", "rngs"))


def create_model(name: str, *, seed: int = 0, rngs: nnx.Rngs | None = None, **overrides: Any) -> nnx.Module:
    """Build a registered model; unknown names or options fail with the valid choices."""
    spec = _check_name(name)
    unknown = sorted(set(overrides) - set(model_options(name)))
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} for model {name!r}; valid options: {model_options(name)}")
    args = {**spec.args, **overrides}
    for key in ("depths", "widths", "strides"):
        if key in args:
            args[key] = tuple(args[key])
    return spec.cls(**args, rngs=rngs or nnx.Rngs(seed))


def model_kwargs(model: Mapping[str, Any], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """A model description (`config.model`, a model card's "model") minus its name (and `exclude`)
    as `create_model` overrides; `dtype: ""` = float32."""
    overrides = {k: v for k, v in model.items() if k not in ("name", *exclude)}
    if overrides.get("dtype"):
        overrides["dtype"] = jnp.dtype(overrides["dtype"])
    else:
        overrides.pop("dtype", None)
    return overrides


def create_model_from_dict(
    model: Mapping[str, Any], *, seed: int = 0, exclude: tuple[str, ...] = (), **extra: Any
) -> nnx.Module:
    """The model a description `{"name": ..., **overrides}` names (`exclude`: its keys that are not
    model options), with `extra` options (e.g. `num_classes`) added."""
    return create_model(model["name"], seed=seed, **model_kwargs(model, exclude), **extra)


def list_models() -> list[str]:
    return sorted(MODELS)
