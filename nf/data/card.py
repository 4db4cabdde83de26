"""The model card `DIR/nf_model.json`: what a workdir's checkpoint is and how to feed it.

    {"model": {"name": "nfnet_f0", ...registry overrides, as config.model holds them},
     "num_classes": 1000,
     "class_names": ["tench", ...] or null,
     "preprocessing": {"kind": "timm" | "deepmind" | "nf", "image_size": 256, "crop_pct": 0.875,
                       "interpolation": "bicubic", "mean": [3 floats, 0-255], "std": [...],
                       "crop": "center_crop" | "resize_crop" | "resize_short_crop",
                       "crop_padding": 32 or null},
     "source": {free-form provenance: kind, name, file, sha256, ...}}

Evaluation crops (nf.data.transforms.EvalTransform does all three):
  * "resize_short_crop" (timm): resize the short side to floor(px / crop_pct), centre crop px.
  * "center_crop" (DeepMind NF-RegNet/NFNet eval, the trainer's default): square centre crop of
    crop_pct of the short side, resized to px.
  * "resize_crop" (the trainer's NFNet option): resize to round(px / crop_pct) square, centre crop px.
`crop` defaults by kind (timm: resize_short_crop, deepmind: center_crop). With `crop_padding` set
(DeepMind, the trainer), crop_pct is px / (px + crop_padding) and follows another image size.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from etils import epath
from flax import nnx

from nf.data.transforms import CROP_PADDING, EVAL_CROPS, INTERPOLATIONS, MEAN_RGB, STDDEV_RGB
from nf.models.registry import create_model_from_dict

CARD_FILE = "nf_model.json"
KINDS = ("timm", "deepmind", "nf")
DEFAULT_CROP = {"timm": "resize_short_crop", "deepmind": "center_crop", "nf": "center_crop"}


class ModelCardError(ValueError):
    """A model card is missing or malformed; the message names the file and key."""


def _fail(where: str, message: str) -> ModelCardError:
    return ModelCardError(f"{where}: {message}")


def _check_keys(data: Any, where: str, required: Sequence[str], optional: Sequence[str]) -> None:
    if not isinstance(data, Mapping):
        raise _fail(where, f"expected a JSON object, got {type(data).__name__}")
    missing = [k for k in required if k not in data]
    unknown = sorted(set(data) - set(required) - set(optional))
    if missing:
        raise _fail(where, f"missing key(s) {missing}; required: {list(required)}")
    if unknown:
        raise _fail(where, f"unknown key(s) {unknown}; valid: {list(required) + list(optional)}")


def _rgb(value: Any, where: str, name: str) -> tuple[float, float, float]:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 3
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise _fail(where, f"'{name}' must be 3 finite numbers (R, G, B), got {value!r}")
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class Preprocessing:
    """Eval preprocessing of a model's weights (module docstring); mean/std on the 0-255 scale."""

    kind: str
    image_size: int
    crop_pct: float
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = tuple(float(v) for v in MEAN_RGB)
    std: tuple[float, float, float] = tuple(float(v) for v in STDDEV_RGB)
    crop: str | None = None  # None: DEFAULT_CROP[kind]
    crop_padding: int | None = None

    def __post_init__(self):
        where = "preprocessing"
        if self.kind not in KINDS:
            raise _fail(where, f"'kind'={self.kind!r} is not one of {list(KINDS)}")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size <= 0:
            raise _fail(where, f"'image_size' must be a positive integer, got {self.image_size!r}")
        if not isinstance(self.crop_pct, int | float) or not 0 < self.crop_pct <= 1:
            raise _fail(where, f"'crop_pct' must be in (0, 1], got {self.crop_pct!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise _fail(where, f"'interpolation'={self.interpolation!r} is not one of {list(INTERPOLATIONS)}")
        mean, std = _rgb(self.mean, where, "mean"), _rgb(self.std, where, "std")
        if min(std) <= 0:
            raise _fail(where, f"'std' must be positive, got {list(std)}")
        if max(abs(v) for v in (*mean, *std)) <= 1.0:
            raise _fail(
                where,
                f"'mean' {list(mean)} and 'std' {list(std)} look like the 0-1 scale; the card uses 0-255 "
                "pixel values (multiply by 255)",
            )
        crop = self.crop or DEFAULT_CROP[self.kind]
        if crop not in EVAL_CROPS:
            raise _fail(where, f"'crop'={crop!r} is not one of {list(EVAL_CROPS)}")
        if self.crop_padding is not None and (isinstance(self.crop_padding, bool) or self.crop_padding < 0):
            raise _fail(where, f"'crop_padding' must be a non-negative integer or null, got {self.crop_padding!r}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "crop", crop)
        object.__setattr__(self, "crop_pct", float(self.crop_pct))

    @classmethod
    def deepmind(cls, image_size: int) -> Preprocessing:
        """DeepMind's eval: centre crop of px/(px+32) of the short side, bicubic resize, ImageNet mean/std."""
        return cls("deepmind", image_size, image_size / (image_size + CROP_PADDING), crop_padding=CROP_PADDING)

    @classmethod
    def timm(
        cls,
        image_size: int,
        crop_pct: float,
        interpolation: str = "bicubic",
        mean01: Sequence[float] = (0.485, 0.456, 0.406),
        std01: Sequence[float] = (0.229, 0.224, 0.225),
    ) -> Preprocessing:
        """timm's eval (its pretrained_cfg; mean/std on timm's 0-1 scale, stored x255)."""
        return cls(
            "timm",
            image_size,
            crop_pct,
            interpolation,
            tuple(v * 255.0 for v in mean01),
            tuple(v * 255.0 for v in std01),
        )

    def at_size(self, image_size: int) -> Preprocessing:
        """The same preprocessing at another px (crop_pct follows crop_padding when it is set)."""
        pct = self.crop_pct if self.crop_padding is None else image_size / (image_size + self.crop_padding)
        return dataclasses.replace(self, image_size=int(image_size), crop_pct=pct)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: Any, where: str = "preprocessing") -> Preprocessing:
        names = [f.name for f in dataclasses.fields(cls)]
        _check_keys(data, where, names[:3], names[3:])
        try:
            return cls(**data)
        except ModelCardError as e:
            raise ModelCardError(f"{where}: {str(e).split(': ', 1)[1]}") from None


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
            raise _fail("model", f"must be an object with a 'name' (a registered model), got {self.model!r}")
        n = self.num_classes
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise _fail("num_classes", f"must be a positive integer, got {n!r}")
        if self.class_names is not None:
            names = self.class_names
            if isinstance(names, str) or not isinstance(names, Sequence) or not all(isinstance(c, str) for c in names):
                raise _fail("class_names", "must be a list of strings or null")
            if len(names) != n:
                raise _fail("class_names", f"lists {len(names)} names for num_classes={n}")
            object.__setattr__(self, "class_names", list(names))
        if not isinstance(self.preprocessing, Preprocessing):
            raise _fail("preprocessing", f"must be a Preprocessing, got {type(self.preprocessing).__name__}")
        if not isinstance(self.source, Mapping):
            raise _fail("source", f"must be an object, got {self.source!r}")
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
        _check_keys(data, where, ("model", "num_classes", "preprocessing"), ("class_names", "source"))
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
            raise _fail(where, f"not valid JSON ({e})") from None
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


def nf_preprocessing(data_config: Mapping[str, Any]) -> Preprocessing:
    """The trainer's own eval preprocessing for `config.data` (nf.tasks.Classification.build_data)."""
    px = int(data_config.get("eval_image_size") or data_config["image_size"])
    pad = int(data_config.get("crop_padding", CROP_PADDING))
    return Preprocessing("nf", px, px / (px + pad), crop=data_config.get("eval_crop", "center_crop"), crop_padding=pad)


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
