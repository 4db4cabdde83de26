"""Published NF weights in nf: DeepMind's NFNet files and timm's safetensors checkpoints.

`import_weights(path, source="deepmind" | "timm", name=NAME)` returns the nf model holding the
file's parameters; `model(x, train=False)` on NHWC float32 images gives the source's logits.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from flax import nnx

from nf.data.preprocessing import Preprocessing

SOURCES = ("deepmind", "timm")


def _loader(source: str):
    if source not in SOURCES:
        raise ValueError(f"Unknown weights source {source!r}; valid: {SOURCES}")
    return importlib.import_module(f"nf.pretrained.{source}")


def import_weights(
    path: str | os.PathLike, source: str, name: str, num_classes: int | None = None, **overrides: Any
) -> nnx.Module:
    """The nf model with the parameters of `path`.

    `name` is DeepMind's variant ('F0'...'F6') or timm's model name ('eca_nfnet_l0', ...);
    `num_classes=None` keeps the file's classifier, another count starts a fresh one."""
    return _loader(source).load(path, name, num_classes, **overrides)


def preprocessing(source: str, name: str) -> Preprocessing:
    """The eval preprocessing the source used for `name`'s published accuracy."""
    return _loader(source).preprocessing(name)


def model_name(source: str, name: str) -> str:
    """nf's registry name of a source's model."""
    return _loader(source).model_name(name)


def model_options(source: str, name: str) -> dict[str, Any]:
    """The nf model options (beyond the registry's) that reproduce the source's forward pass."""
    return _loader(source).model_options(name)


def catalog_entry(source: str, name: str) -> dict[str, Any] | None:
    """What the source publishes about `name` (e.g. its ImageNet top-1), or None."""
    return _loader(source).catalog_entry(name)
