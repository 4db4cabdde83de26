"""The eval preprocessing of a model's weights: the crop, resampling and normalization with which
its published (or trained) accuracy was measured. The model card stores it (nf.data.card) and
the eval pipeline is built from it (`nf.data.ClassificationEval`), so both read one definition.

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
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nf.data.transforms import CROP_PADDING, EVAL_CROPS, INTERPOLATIONS, MEAN_RGB, STDDEV_RGB

KINDS = ("timm", "deepmind", "nf")
DEFAULT_CROP = {"timm": "resize_short_crop", "deepmind": "center_crop", "nf": "center_crop"}


class ModelCardError(ValueError):
    """A model card (or its preprocessing entry) is missing or malformed; the message names the file and key."""


def card_error(where: str, message: str) -> ModelCardError:
    return ModelCardError(f"{where}: {message}")


def check_keys(data: Any, where: str, required: Sequence[str], optional: Sequence[str]) -> None:
    if not isinstance(data, Mapping):
        raise card_error(where, f"expected a JSON object, got {type(data).__name__}")
    missing = [k for k in required if k not in data]
    unknown = sorted(set(data) - set(required) - set(optional))
    if missing:
        raise card_error(where, f"missing key(s) {missing}; required: {list(required)}")
    if unknown:
        raise card_error(where, f"unknown key(s) {unknown}; valid: {list(required) + list(optional)}")


def _rgb(value: Any, where: str, name: str) -> tuple[float, float, float]:
    if (
        not isinstance(value, Sequence)
        or isinstance(value, str)
        or len(value) != 3
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    ):
        raise card_error(where, f"'{name}' must be 3 finite numbers (R, G, B), got {value!r}")
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
            raise card_error(where, f"'kind'={self.kind!r} is not one of {list(KINDS)}")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size <= 0:
            raise card_error(where, f"'image_size' must be a positive integer, got {self.image_size!r}")
        if not isinstance(self.crop_pct, int | float) or not 0 < self.crop_pct <= 1:
            raise card_error(where, f"'crop_pct' must be in (0, 1], got {self.crop_pct!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise card_error(where, f"'interpolation'={self.interpolation!r} is not one of {list(INTERPOLATIONS)}")
        mean, std = _rgb(self.mean, where, "mean"), _rgb(self.std, where, "std")
        if min(std) <= 0:
            raise card_error(where, f"'std' must be positive, got {list(std)}")
        if max(abs(v) for v in (*mean, *std)) <= 1.0:
            raise card_error(
                where,
                f"'mean' {list(mean)} and 'std' {list(std)} look like the 0-1 scale; the card uses 0-255 "
                "pixel values (multiply by 255)",
            )
        crop = self.crop or DEFAULT_CROP[self.kind]
        if crop not in EVAL_CROPS:
            raise card_error(where, f"'crop'={crop!r} is not one of {list(EVAL_CROPS)}")
        if self.crop_padding is not None and (isinstance(self.crop_padding, bool) or self.crop_padding < 0):
            raise card_error(where, f"'crop_padding' must be a non-negative integer or null, got {self.crop_padding!r}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        object.__setattr__(self, "crop", crop)
        object.__setattr__(self, "crop_pct", float(self.crop_pct))

    @classmethod
    def deepmind(cls, image_size: int) -> Preprocessing:
        """DeepMind's eval: centre crop of px/(px+32) of the short side, bicubic resize, ImageNet mean/std."""
        return cls("deepmind", image_size, image_size / (image_size + CROP_PADDING), crop_padding=CROP_PADDING)

    @classmethod
    def nf(cls, image_size: int, crop: str = "center_crop", crop_padding: int = CROP_PADDING) -> Preprocessing:
        """The trainer's eval: `crop` of px/(px+crop_padding), bicubic, ImageNet mean/std."""
        pad = int(crop_padding)
        return cls("nf", int(image_size), image_size / (image_size + pad), crop=crop, crop_padding=pad)

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
        check_keys(data, where, names[:3], names[3:])
        try:
            return cls(**data)
        except ModelCardError as e:
            raise ModelCardError(f"{where}: {str(e).split(': ', 1)[1]}") from None


def nf_preprocessing(data_config: Mapping[str, Any]) -> Preprocessing:
    """The trainer's own eval preprocessing for `config.data` (nf.tasks.Classification.build_data)."""
    px = int(data_config.get("eval_image_size") or data_config["image_size"])  # test px; defaults to the train px
    return Preprocessing.nf(
        px, data_config.get("eval_crop", "center_crop"), data_config.get("crop_padding", CROP_PADDING)
    )
