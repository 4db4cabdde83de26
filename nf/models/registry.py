"""Model registry: `create_model('nf_resnet50', **overrides)`.

Names are `<family>_resnet<depth>`; the family and depth tables are plain data.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable
from typing import Any

from flax import nnx

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

# The paper's comparison models as option sets of ResNetV2 (REFERENCE §2-3, paper Table 1).
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


def _resnet_builder(family: str, depth: int) -> Callable[..., nnx.Module]:
    def build(depths=RESNET_DEPTHS[depth], **overrides):  # any depth list may replace the table's
        return ResNetV2(tuple(depths), **{**RESNET_FAMILIES[family], **overrides})

    return build


MODELS: dict[str, Callable[..., nnx.Module]] = {
    f"{family}_resnet{depth}": _resnet_builder(family, depth) for family in RESNET_FAMILIES for depth in RESNET_DEPTHS
}

# Default image size of each registered model (model_stats, SPP defaults).
DEFAULT_IMAGE_SIZE: dict[str, int] = {name: 224 for name in MODELS}


def _options(name: str) -> list[str]:
    builder_cls = ResNetV2 if name in MODELS else None
    params = inspect.signature(builder_cls.__init__).parameters if builder_cls else {}
    return sorted(p for p in params if p not in ("self", "rngs"))


def model_options(name: str) -> list[str]:
    """Valid override names for a registered model."""
    _check_name(name)
    return _options(name)


def _check_name(name: str) -> None:
    if name not in MODELS:
        close = [m for m in MODELS if re.sub(r"\d+", "", m) == re.sub(r"\d+", "", name)]
        hint = f" Did you mean one of {close}?" if close else ""
        raise ValueError(f"Unknown model {name!r}.{hint} Registered models: {sorted(MODELS)}")


def create_model(name: str, *, seed: int = 0, rngs: nnx.Rngs | None = None, **overrides: Any) -> nnx.Module:
    """Build a registered model; unknown names or options fail with the valid choices."""
    _check_name(name)
    unknown = sorted(set(overrides) - set(_options(name)))
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} for model {name!r}; valid options: {_options(name)}")
    return MODELS[name](rngs=rngs or nnx.Rngs(seed), **overrides)


def list_models() -> list[str]:
    return sorted(MODELS)
