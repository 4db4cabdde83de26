"""The model card `DIR/nf_model.json`: what a workdir's checkpoint is and how to feed it.

    {"model": {"name": "nfnet_f0", ...registry overrides, as config.model holds them},
     "num_classes": 1000,
     "class_names": ["tench", ...] or null,
     "preprocessing": {"kind": "timm" | "deepmind" | "nf", "image_size": 256, "crop_pct": 0.875,
                       "interpolation": "bicubic", "mean": [3 floats, 0-255], "std": [...],
                       "crop": "center_crop" | "resize_crop" | "resize_short_crop",
                       "crop_padding": 32 or null},
     "source": {free-form provenance: kind, name, file, sha256, ...}}

The preprocessing entry and its eval crops are `nf.data.preprocessing.Preprocessing`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from etils import epath
from flax import nnx

from nf.data.preprocessing import ModelCardError, Preprocessing, card_error, check_keys, nf_preprocessing
from nf.models.registry import create_model_from_dict

CARD_FILE = "nf_model.json"


@dataclass(frozen=True)
class ModelCard:
    """A classification model's architecture, classes, preprocessing and provenance."""

    model: dict[str, Any]
    num_classes: int
    preprocessing: Preprocessing
    class_names: list[str] | None = None
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.model, Mapping) or not isinstance(self.model.get("name"), str):
            raise card_error("model", f"must be an object with a 'name' (a registered model), got {self.model!r}")
        n = self.num_classes
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise card_error("num_classes", f"must be a positive integer, got {n!r}")
        if self.class_names is not None:
            names = self.class_names
            if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(c, str) for c in names):
                raise card_error("class_names", "must be a list of strings or null")
            if len(names) != n:
                raise card_error("class_names", f"lists {len(names)} names for num_classes={n}")
            object.__setattr__(self, "class_names", list(names))
        if not isinstance(self.preprocessing, Preprocessing):
            raise card_error("preprocessing", f"must be a Preprocessing, got {type(self.preprocessing).__name__}")
        if not isinstance(self.source, Mapping):
            raise card_error("source", f"must be an object, got {self.source!r}")
        object.__setattr__(self, "model", _jsonable(dict(self.model)))
        object.__setattr__(self, "source", dict(self.source))

    @property
    def name(self) -> str:
        return self.model["name"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "preprocessing": self.preprocessing.to_dict(),
            "source": self.source,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: Any, where: str = CARD_FILE) -> ModelCard:
        check_keys(data, where, ("model", "num_classes", "preprocessing"), ("class_names", "source"))
        preprocessing = Preprocessing.from_dict(data["preprocessing"], f"{where}: preprocessing")
        try:
            return cls(
                data["model"], data["num_classes"], preprocessing, data.get("class_names"), data.get("source") or {}
            )
        except ModelCardError as e:
            raise ModelCardError(f"{where}: {e}") from None

    @classmethod
    def from_json(cls, text: str, where: str = CARD_FILE) -> ModelCard:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise card_error(where, f"not valid JSON ({e})") from None
        return cls.from_dict(data, where)

    def save(self, workdir: str | os.PathLike) -> str:
        """Writes (or replaces) `workdir/nf_model.json`."""
        directory = epath.Path(workdir)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / CARD_FILE
        path.write_text(self.to_json() + "\n")
        return os.fspath(path)

    @classmethod
    def load(cls, workdir: str | os.PathLike) -> ModelCard:
        path = epath.Path(workdir) / CARD_FILE
        if not path.exists():
            raise ModelCardError(
                f"{path} does not exist: {workdir} is not a self-describing model workdir (written by nf-train, "
                "nf-import or nf.inference.save_model). Pass --config=CONFIG_FILE (the config that trained it)."
            )
        return cls.from_json(path.read_text(), os.fspath(path))

    def build_model(self, seed: int = 0) -> nnx.Module:
        """The untrained `nnx.Module` this card describes (nf.models.create_model_from_dict)."""
        return create_model_from_dict(self.model, seed=seed, num_classes=self.num_classes)


def _jsonable(value: Any) -> Any:
    """Tuples (ml_collections) as lists, so the card equals its JSON round trip."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def card_from_config(
    config: Mapping[str, Any], num_classes: int, class_names: Sequence[str] | None, source: Mapping | None = None
) -> ModelCard:
    """The card of a classifier trained by `config` (an ml_collections ConfigDict or dict)."""
    model = config["model"]
    model = model.to_dict() if hasattr(model, "to_dict") else dict(model)
    return ModelCard(
        model,
        int(num_classes),
        nf_preprocessing(config["data"]),
        list(class_names) if class_names is not None else None,
        dict(source or {"kind": "nf-train"}),
    )
