"""RandAugment (Cubuk et al. 2020) on uint8 RGB images, numpy + PIL, as in the NFNet recipe.

    ra = RandAugment(num_layers=4, magnitude=10)
    out = ra(image_uint8_hwc, np.random.default_rng(...))       # one image
    out = ra.augment_batch(images_uint8_bhwc, key=(seed, shard, step))  # per-example streams

Each of the `num_layers` layers picks one of the 16 operations below uniformly at random and
always applies it (no per-op probability, as in the reference `distort_image_with_randaugment`
that the NFNets were trained with; timm instead applies each op with p=0.5). All operations take
the same `magnitude` M.

Magnitude scale: the TF / EfficientNet / NFNet (and timm) 10-scale, `MAX_LEVEL = 10`: M = 10 is
the canonical strongest setting of each op; M > 10 extrapolates linearly exactly as the reference
code does (the NFNets use M = 5, 10 and 15); M is checked to lie in [0, 30]. This is *not* the
30-scale of the original AutoAugment search space (PARAMETER_MAX = 30). The mapping, with
`m = M / 10`:

    op            parameter                                  M=5      M=10     M=15
    AutoContrast  (none) per channel: min -> 0, max -> 255
    Equalize      (none) per channel histogram equalization (PIL ImageOps.equalize)
    Invert        (none) 255 - x
    Rotate        +-30*m degrees (random sign), about the centre   15 deg   30 deg   45 deg
    Posterize     keep int(4*m) high bits (clamped to 0..8)         2        4        6
    Solarize      x >= int(256*m) -> 255 - x                       128      256 (no-op) 384 (no-op)
    SolarizeAdd   x < 128 -> min(x + int(110*m), 255)               55       110      165
    Color         PIL ImageEnhance factor 1.8*m + 0.1              1.0      1.9      2.8
    Contrast      (same factor)                                    1.0      1.9      2.8
    Brightness    (same factor)                                    1.0      1.9      2.8
    Sharpness     (same factor)                                    1.0      1.9      2.8
    ShearX/Y      +-0.3*m shear coefficient (random sign)          0.15     0.3      0.45
    TranslateX/Y  +-100*m pixels (random sign, absolute pixels)     50       100      150
    Cutout        square of side 2*int(40*m) px, uniform centre     40       80       120

The reference quirks are kept on purpose, since they define what "magnitude 5/10/15" meant for the
published NFNets: Posterize and Solarize get *weaker* as M grows, and the four enhance ops have no
random sign, so at M = 5 their factor is exactly 1 (identity). Translate and Cutout sizes are in
absolute pixels (the reference's translate_const=100, cutout_const=40, designed for ~224 px
images); pass other constants to the constructor for other resolutions.

Geometry: output pixel (x, y) (column, row; index coordinates) takes the input pixel nearest to
A(x, y); uncovered pixels get the grey `FILL` = 128 (as do Cutout pixels). Rotate turns the
content counter-clockwise by a positive angle about ((W-1)/2, (H-1)/2) (so 90 deg equals
`np.rot90` on square images); ShearX(s) samples row y at x + s*y (row y's content moves left by
s*y px); TranslateX(t) moves the content right by t px (output[:, x] = input[:, x - t]); the Y
variants are the transposed operations.

Intentional deviation from the TF reference: Contrast blends with the *mean* grey level (PIL
semantics; the TF port blends with `num_pixels / 256` clipped, a known bug).

Everything is a plain function of (image, numpy Generator), so objects pickle (grain workers) and
results are deterministic per seed.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import cv2
import numpy as np
from PIL import Image, ImageEnhance

from nf.data import decode

MAX_LEVEL = 10.0
MAX_MAGNITUDE = 30.0
FILL = 128
TRANSLATE_CONST = 100.0  # px at M = 10 (reference RandAugment hparams)
CUTOUT_CONST = 40.0  # half side in px at M = 10
_MAX_REMAP_SIDE = 32767  # `affine` remaps images up to this side (int16 maps), PIL beyond
_STREAM = 0x52414E44  # "RAND": keeps these per-example streams apart from the MixUp/CutMix stream

# The reference order (the op index drawn by each layer refers to it).
OPS: tuple[str, ...] = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
    "Cutout",
    "SolarizeAdd",
)
SIGNED_OPS = frozenset({"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"})


# ------------------------------------------------------------------------------------------------
# Operations on one uint8 (H, W, 3) image.


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"RandAugment expects uint8 (H, W, 3) RGB images, got {image.dtype} {image.shape}")
    return image


def _lut(image: np.ndarray, table: np.ndarray) -> np.ndarray:
    """`table[image]` for a (256,) table (all channels) or a (256, 3) one (per channel), clipped to uint8."""
    table = np.clip(table, 0, 255).astype(np.uint8)
    return decode.lookup(image, table if table.ndim == 1 else table[None])


def _histograms(image: np.ndarray) -> np.ndarray:
    """(256, 3) int64 per-channel histograms (OpenCV's counting: one pass per channel, exact)."""
    image = np.ascontiguousarray(image)
    hists = [cv2.calcHist([image], [c], None, [256], [0, 256]).reshape(256) for c in range(3)]
    return np.stack(hists, axis=1).astype(np.int64)


def auto_contrast(image: np.ndarray) -> np.ndarray:
    """Per channel: stretch [min, max] to [0, 255] (truncating); flat channels unchanged.

    PIL's `ImageOps.autocontrast` (cutoff 0) table, `int(x * scale + offset)` in float64, applied
    in one lookup pass."""
    present = _histograms(image) > 0
    lo, hi = np.argmax(present, axis=0).astype(np.float64), 255.0 - np.argmax(present[::-1], axis=0)
    x = np.arange(256, dtype=np.float64)[:, None]
    scale = 255.0 / np.where(hi > lo, hi - lo, 1.0)
    table = np.trunc(x * scale + (-lo * scale))
    return _lut(image, np.where(hi > lo, table, x))


def equalize(image: np.ndarray) -> np.ndarray:
    """Per channel histogram equalization: PIL's `ImageOps.equalize` table in integer arithmetic,
    `(step // 2 + pixels below x) // step` with `step = (pixels - pixels at the top value) // 255`."""
    hist = _histograms(image)
    x = np.arange(256)[:, None]
    top = hist[255 - np.argmax(hist[::-1] > 0, axis=0), np.arange(3)]  # count of the largest value
    step = (hist.sum(axis=0) - top) // 255
    below = np.cumsum(hist, axis=0) - hist
    safe = np.maximum(step, 1)
    table = (safe // 2 + below) // safe
    flat = ((hist > 0).sum(axis=0) <= 1) | (step == 0)
    return _lut(image, np.where(flat, x, table))


def invert(image: np.ndarray) -> np.ndarray:
    return 255 - image


def posterize(image: np.ndarray, bits: int) -> np.ndarray:
    """Keep the `bits` most significant bits of every value (0 bits: black, 8: unchanged)."""
    bits = min(max(int(bits), 0), 8)
    return image & np.uint8((0xFF << (8 - bits)) & 0xFF)


def solarize(image: np.ndarray, threshold: int) -> np.ndarray:
    """Values >= threshold become 255 - x (threshold >= 256: unchanged)."""
    x = np.arange(256)
    return _lut(image, np.where(x < threshold, x, 255 - x))


def solarize_add(image: np.ndarray, addition: int, threshold: int = 128) -> np.ndarray:
    """Values < threshold get `addition` added (clipped to 0..255); the rest are unchanged."""
    x = np.arange(256)
    return _lut(image, np.where(x < threshold, np.clip(x + int(addition), 0, 255), x))


def _enhance(kind, image: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1.0:  # PIL blends with alpha 1: the image itself (the four ops at M = 5)
        return image
    return np.asarray(kind(Image.fromarray(image)).enhance(factor))


def color(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the greyscale image (0: grey, 1: unchanged, > 1: more saturated)."""
    return _enhance(ImageEnhance.Color, image, factor)


def contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend with the mean grey level (0: flat grey, 1: unchanged)."""
    return _enhance(ImageEnhance.Contrast, image, factor)


def brightness(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend with black, i.e. x * factor clipped to 0..255 (truncated)."""
    return _enhance(ImageEnhance.Brightness, image, factor)


def sharpness(image: np.ndarray, factor: float) -> np.ndarray:
    """Blend with PIL's SMOOTH-filtered image (borders kept); factor > 1 sharpens."""
    return _enhance(ImageEnhance.Sharpness, image, factor)


def affine(image: np.ndarray, matrix: Sequence[float], fill: int = FILL) -> np.ndarray:
    """Output pixel (x, y) = input pixel nearest to (a x + b y + c, d x + e y + f), else `fill`.

    `matrix` = (a, b, c, d, e, f) in index coordinates (x = column, y = row, origin top-left);
    "nearest" is floor(. + 0.5). The sampling is PIL's (`Image.transform`, NEAREST), whose point
    for output pixel (x, y) is the matrix applied to the pixel centre (x + 0.5, y + 0.5), floored:
    the offsets below convert between the two conventions; it is applied by `cv2.remap` with the
    maps PIL computes (`_nearest_maps`, cached per transform and image size).
    """
    a, b, c, d, e, f = (float(v) for v in matrix)
    h, w = image.shape[:2]
    data = (a, b, c + 0.5 * (1 - a - b), d, e, f + 0.5 * (1 - d - e))
    if max(h, w) > _MAX_REMAP_SIDE:
        out = Image.fromarray(image).transform(
            (w, h), Image.Transform.AFFINE, data, resample=Image.Resampling.NEAREST, fillcolor=(fill,) * 3
        )
        return np.asarray(out)
    border = (fill,) * 3
    maps = _nearest_maps(data, w, h)
    return cv2.remap(image, maps, None, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=border)


@functools.lru_cache(maxsize=64)  # at a fixed magnitude, 10 transforms (5 ops x 2 signs) per shape
def _nearest_maps(data: tuple[float, ...], width: int, height: int) -> np.ndarray:
    """`cv2.remap` maps (int16 (H, W, 2) of x, y; -1 outside) of PIL's NEAREST affine `data`.

    PIL transforms an image of pixel indices (mode "I": 32-bit pixels like RGB's, so the same
    sampling code), so the remap takes exactly the pixels PIL's transform of the image would, at
    about half the per-call cost (no PIL image round trip)."""
    index = Image.fromarray(np.arange(width * height, dtype=np.int32).reshape(height, width), "I")
    taken = np.asarray(
        index.transform((width, height), Image.Transform.AFFINE, data, resample=Image.Resampling.NEAREST, fillcolor=-1)
    )
    inside = taken >= 0
    maps = np.stack([np.where(inside, taken % width, -1), np.where(inside, taken // width, -1)], axis=-1)
    return maps.astype(np.int16)


def rotate(image: np.ndarray, degrees: float, fill: int = FILL) -> np.ndarray:
    """Rotate the content counter-clockwise by `degrees` about the image centre (nearest)."""
    t = math.radians(degrees)
    cos, sin = math.cos(t), math.sin(t)
    h, w = image.shape[:2]
    cx, cy = (w - 1) / 2, (h - 1) / 2
    # input = centre + R (output - centre), R = [[cos, -sin], [sin, cos]] (y points down)
    return affine(image, (cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy), fill)


def shear_x(image: np.ndarray, level: float, fill: int = FILL) -> np.ndarray:
    """Row y samples the input at x + level * y."""
    return affine(image, (1.0, level, 0.0, 0.0, 1.0, 0.0), fill)


def shear_y(image: np.ndarray, level: float, fill: int = FILL) -> np.ndarray:
    """Column x samples the input at y + level * x."""
    return affine(image, (1.0, 0.0, 0.0, level, 1.0, 0.0), fill)


def translate_x(image: np.ndarray, pixels: float, fill: int = FILL) -> np.ndarray:
    """Move the content right by `pixels` (left when negative)."""
    return affine(image, (1.0, 0.0, -pixels, 0.0, 1.0, 0.0), fill)


def translate_y(image: np.ndarray, pixels: float, fill: int = FILL) -> np.ndarray:
    """Move the content down by `pixels` (up when negative)."""
    return affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, -pixels), fill)


def cutout_box(height: int, width: int, pad: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): a (2 pad)^2 square around a uniform centre, clipped to the image."""
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    return max(cy - pad, 0), min(cy + pad, height), max(cx - pad, 0), min(cx + pad, width)


def cutout(image: np.ndarray, pad: int, rng: np.random.Generator, fill: int = FILL) -> np.ndarray:
    y0, y1, x0, x1 = cutout_box(*image.shape[:2], int(pad), rng)
    out = image.copy()
    out[y0:y1, x0:x1] = fill
    return out


# ------------------------------------------------------------------------------------------------
# Magnitude -> parameter (see the module docstring) and the policy.


def op_parameter(
    name: str,
    magnitude: float,
    *,
    translate_const: float = TRANSLATE_CONST,
    cutout_const: float = CUTOUT_CONST,
) -> float | int | None:
    """The unsigned parameter of operation `name` at `magnitude` (None: parameter-free op)."""
    m = float(magnitude) / MAX_LEVEL
    if name in ("AutoContrast", "Equalize", "Invert"):
        return None
    if name == "Rotate":
        return 30.0 * m
    if name == "Posterize":
        return min(max(int(4 * m), 0), 8)
    if name == "Solarize":
        return int(256 * m)
    if name == "SolarizeAdd":
        return int(110 * m)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return 1.8 * m + 0.1
    if name in ("ShearX", "ShearY"):
        return 0.3 * m
    if name in ("TranslateX", "TranslateY"):
        return float(translate_const) * m
    if name == "Cutout":
        return int(float(cutout_const) * m)
    raise ValueError(f"unknown RandAugment op {name!r}; valid: {list(OPS)}")


def apply_op(name: str, image: np.ndarray, param, rng: np.random.Generator | None = None) -> np.ndarray:
    """Apply one operation with an explicit (signed) parameter; `rng` is needed for Cutout only."""
    image = _check_image(image)
    if name == "AutoContrast":
        return auto_contrast(image)
    if name == "Equalize":
        return equalize(image)
    if name == "Invert":
        return invert(image)
    if name == "Rotate":
        return rotate(image, param)
    if name == "Posterize":
        return posterize(image, param)
    if name == "Solarize":
        return solarize(image, param)
    if name == "SolarizeAdd":
        return solarize_add(image, param)
    if name == "Color":
        return color(image, param)
    if name == "Contrast":
        return contrast(image, param)
    if name == "Brightness":
        return brightness(image, param)
    if name == "Sharpness":
        return sharpness(image, param)
    if name == "ShearX":
        return shear_x(image, param)
    if name == "ShearY":
        return shear_y(image, param)
    if name == "TranslateX":
        return translate_x(image, param)
    if name == "TranslateY":
        return translate_y(image, param)
    if name == "Cutout":
        if rng is None:
            raise ValueError("Cutout needs an rng for its position")
        return cutout(image, param, rng)
    raise ValueError(f"unknown RandAugment op {name!r}; valid: {list(OPS)}")


def example_rng(seed: int, shard_index: int, step: int, example: int) -> np.random.Generator:
    """The Generator for example `example` of batch `step` of process `shard_index`."""
    return np.random.default_rng([int(seed), int(shard_index), int(step), int(example), _STREAM])


class RandAugment:
    """`num_layers` uniformly drawn operations at a shared `magnitude` (module docstring).

    Args:
      num_layers: operations per image (N); 0 returns images unchanged.
      magnitude: M on the 10-scale, 0 <= M <= 30 (NFNets: 5 for F0, 10 for F1-F2, 15 for F3+).
      translate_const, cutout_const: Translate distance and Cutout half side, in px, at M = 10.
      ops: the operation names to draw from (default: all 16, `OPS`).
    """

    def __init__(
        self,
        num_layers: int,
        magnitude: float,
        *,
        translate_const: float = TRANSLATE_CONST,
        cutout_const: float = CUTOUT_CONST,
        ops: Sequence[str] = OPS,
    ):
        if isinstance(num_layers, bool) or not isinstance(num_layers, int | np.integer) or num_layers < 0:
            raise ValueError(f"randaugment num_layers must be an integer >= 0, got {num_layers!r}")
        if not 0 <= float(magnitude) <= MAX_MAGNITUDE:
            raise ValueError(
                f"randaugment magnitude must be in [0, {MAX_MAGNITUDE:g}] (10-scale: 10 = the canonical maximum), "
                f"got {magnitude!r}"
            )
        unknown = [op for op in ops if op not in OPS]
        if unknown or not ops:
            raise ValueError(f"unknown or no RandAugment ops {unknown}; valid: {list(OPS)}")
        self.num_layers, self.magnitude = int(num_layers), float(magnitude)
        self.ops = tuple(ops)
        self.params = {
            op: op_parameter(op, self.magnitude, translate_const=translate_const, cutout_const=cutout_const)
            for op in self.ops
        }

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Augment one uint8 (H, W, 3) image; the draws come from `rng` in a fixed order."""
        image = _check_image(image)
        for _ in range(self.num_layers):
            name = self.ops[int(rng.integers(len(self.ops)))]
            param = self.params[name]
            if name in SIGNED_OPS and rng.random() < 0.5:
                param = -param
            image = apply_op(name, image, param, rng)
        return np.ascontiguousarray(image)

    def augment_batch(self, images: np.ndarray, key: Sequence[int], mask: np.ndarray | None = None) -> np.ndarray:
        """Augment each image k of a uint8 (B, H, W, 3) batch with `default_rng([*key, k, ...])`.

        `key` is (seed, shard_index, step) in the pipeline, so the result depends only on the
        batch's identity, never on worker counts or on the other examples. Rows with mask False
        are left unchanged. Returns a new array.
        """
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"augment_batch expects uint8 (B, H, W, 3), got {images.dtype} {images.shape}")
        out = np.empty_like(images)  # every row is written below: no copy of the batch first
        for k in range(images.shape[0]):
            out[k] = self(images[k], example_rng(*key, k)) if mask is None or mask[k] else images[k]
        return out

    def __repr__(self) -> str:
        return f"RandAugment(num_layers={self.num_layers}, magnitude={self.magnitude:g})"
