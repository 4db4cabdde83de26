"""Per-example image transforms (numpy + PIL, picklable) and batch-level MixUp/CutMix.

paper App. A. Train: decode -> Inception crop (area 0.08-1, aspect 3/4-4/3, 10 attempts, else
the eval centre crop) -> horizontal flip -> resize to px (OpenCV: an anti-aliasing Gaussian +
bicubic when shrinking, bicubic otherwise; `nf.data.decode`) -> normalize. Eval: either
"center_crop" (NF-RegNet: square centre crop of px/(px+32) of the short side, then resize),
"resize_crop" (NFNet: resize to (px+32)x(px+32), then centre crop px) or "resize_short_crop"
(timm: resize the short side to floor(px/crop_pct) keeping the aspect, then centre crop px).

A per-example transform maps a source record {"image": bytes, "label", "path"} to

    {"image": uint8 (px, px, 3) RGB,  # the pipeline normalizes whole batches (`normalize`)
     "label": int32 (),
     "mask": bool ()       # False for padding / a skipped corrupt image
     "_corrupt": int32 (),  # 1 when this record's file could not be decoded (on_corrupt="skip")
     "_converted": int32 ()} # 0, or 1 + the index in CONVERSIONS of how the file became 8-bit RGB

Corrupt or unreadable files never pass silently: `on_corrupt="error"` raises `CorruptImageError`
naming the file; `on_corrupt="skip"` logs a warning naming the file and returns a zero image with
mask False and `_corrupt` 1, which the pipeline counts and replaces (train) or masks out (eval).

Every image becomes 8-bit RGB (`to_rgb`), and nothing is lost silently: grayscale, palette and CMYK
are converted; 16-bit (and 32-bit integer) grayscale is scaled to 8 bits (x * 255 / 65535, rounded),
not clipped at 255; an image with transparency is composited on `ALPHA_BACKGROUND` (white: the
image as it shows on a white page). The first 16-bit and the first transparent image of each
process are named in a warning; the data iterator counts every conversion for the run summary.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np
from absl import logging
from PIL import Image, UnidentifiedImageError

from nf.data import decode

MEAN_RGB = np.array([0.485, 0.456, 0.406], np.float32) * 255.0
STDDEV_RGB = np.array([0.229, 0.224, 0.225], np.float32) * 255.0
CROP_PADDING = 32
INCEPTION_CROP_AREA = (0.08, 1.0)  # Inception crop (paper App. A): fraction of the image area ...
INCEPTION_CROP_ASPECT = (3 / 4, 4 / 3)  # ... and width/height ratio (log-uniform) ...
INCEPTION_CROP_ATTEMPTS = 10  # ... tries before the centre-crop fallback
EVAL_CROPS = ("center_crop", "resize_crop", "resize_short_crop")
INTERPOLATIONS = {  # PIL's resampling filters by the names timm's configs use
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
ON_CORRUPT = ("error", "skip")
ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white
CONVERSIONS = ("grayscale", "palette", "cmyk", "16-bit", "alpha", "other")  # `_converted` = 1 + index
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_last_conversion = threading.local()  # what `to_rgb` did to the image of the example being built
_warned: set[str] = set()

Box = tuple[int, int, int, int]  # (left, top, right, bottom), PIL convention


class CorruptImageError(ValueError):
    """An image file could not be read or decoded; the message names the file."""


def check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {list(choices)}")


def _corrupt(path: str, e: Exception) -> CorruptImageError:
    if isinstance(e, UnidentifiedImageError):  # its message only names an anonymous BytesIO
        return CorruptImageError(f"cannot decode image file {path}: not a known image format, or a damaged header")
    return CorruptImageError(f"cannot decode image file {path}: {type(e).__name__}: {e}")


def open_image(data: bytes, path: str = "<bytes>", read_error: str | None = None) -> Image.Image:
    """Opens encoded bytes lazily (header only); raises `CorruptImageError` naming `path`."""
    if read_error:
        raise CorruptImageError(f"cannot read image file {path}: {read_error}")
    if not data:
        raise CorruptImageError(f"image file {path} is empty")
    try:
        return Image.open(io.BytesIO(data))
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise _corrupt(path, e) from e


def _warn_once(kind: str, message: str, path: str) -> None:
    if kind not in _warned:
        _warned.add(kind)
        logging.warning("%s: %s (warned once; every such image is counted in the run summary)", path, message)


def _converted(img: Image.Image, path: str) -> tuple[Image.Image, str | None]:
    mode = img.mode
    if mode == "RGB":
        return img, None
    if mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(img).astype(np.float64)
        _warn_once("16-bit", f"{mode} image scaled from 16 to 8 bits (x * 255 / 65535)", path)
        eight = np.clip(np.rint(wide * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
        return Image.fromarray(eight, "L").convert("RGB"), "16-bit"
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        alpha = rgba.getchannel("A")
        if alpha.getextrema()[0] == 255:  # fully opaque: nothing to composite
            return rgba.convert("RGB"), ("grayscale" if mode in ("LA", "La") else None)
        _warn_once("alpha", f"{mode} image with transparency composited on RGB {ALPHA_BACKGROUND}", path)
        out = Image.new("RGB", rgba.size, ALPHA_BACKGROUND)
        out.paste(rgba.convert("RGB"), mask=alpha)
        return out, "alpha"
    kind = {"L": "grayscale", "1": "grayscale", "P": "palette", "CMYK": "cmyk"}.get(mode, "other")
    return img.convert("RGB"), kind


def _to_rgb(img: Image.Image, path: str) -> Image.Image:
    """8-bit RGB (see the module docstring); records the conversion for the example's `_converted`."""
    try:
        img.load()
        img, kind = _converted(img, path)
    except Exception as e:
        raise _corrupt(path, e) from e
    _last_conversion.code = 0 if kind is None else 1 + CONVERSIONS.index(kind)
    return img


def decode_image(data: bytes, path: str = "<bytes>", read_error: str | None = None) -> np.ndarray:
    """Decodes encoded bytes to a uint8 RGB array (H, W, 3); raises `CorruptImageError` naming `path`."""
    return np.asarray(_to_rgb(open_image(data, path, read_error), path))


def normalize(image: np.ndarray, mean: Sequence[float] = MEAN_RGB, std: Sequence[float] = STDDEV_RGB) -> np.ndarray:
    """uint8/float RGB -> float32 `(x - mean) / std`, by default the ImageNet statistics (x in 0..255)."""
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    image = np.asarray(image)
    if image.dtype == np.uint8 and image.ndim >= 2 and image.shape[-1] == 3 and mean.size == std.size == 3:
        return decode.lookup(image, decode.normalize_table(mean, std))  # bit-identical, one pass
    return ((np.asarray(image, np.float32) - mean) / std).astype(np.float32)


def denormalize(image: np.ndarray) -> np.ndarray:
    """Inverse of `normalize` (float32 in 0..255), for viewing batches."""
    return np.asarray(image, np.float32) * STDDEV_RGB + MEAN_RGB


def center_crop_box(width: int, height: int, fraction: float) -> Box:
    """Square centre crop whose side is `fraction` of the short side (reference rounding)."""
    side = max(1, int(fraction * min(width, height)))
    top = (height - side + 1) // 2
    left = (width - side + 1) // 2
    return left, top, left + side, top + side


def inception_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    *,
    area_range: tuple[float, float] = INCEPTION_CROP_AREA,
    aspect_range: tuple[float, float] = INCEPTION_CROP_ASPECT,
    attempts: int = INCEPTION_CROP_ATTEMPTS,
    fallback_fraction: float = 1.0,
) -> Box:
    """Inception-style random crop box (Szegedy et al. 2015; paper App. A).

    Up to `attempts` times: area ~ U(area_range) * image area, aspect ratio (w/h) log-uniform in
    `aspect_range`; accept the first box that fits and place it uniformly. If none fits, fall back
    to `center_crop_box(width, height, fallback_fraction)`.
    """
    area = width * height
    log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    for _ in range(attempts):
        target_area = rng.uniform(*area_range) * area
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    return center_crop_box(width, height, fallback_fraction)


def _draft_for_box(img: Image.Image, box: Box, out_size: int) -> tuple[Image.Image, Box]:
    """JPEG only: decode at the coarsest DCT scale (1/2, 1/4, 1/8) that keeps the crop >= out_size.

    Decoding is the dominant cost for large JPEGs; this never makes the crop smaller than the
    output, so the bicubic resize still only downsamples or upsamples as it would anyway.
    """
    if img.format != "JPEG":
        return img, box
    w, h = img.size
    crop_short = min(box[2] - box[0], box[3] - box[1])
    scale = out_size / max(crop_short, 1)
    if scale >= 0.5:
        return img, box
    img.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
    nw, nh = img.size
    if (nw, nh) == (w, h):
        return img, box
    sx, sy = nw / w, nh / h
    return img, (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def _crop_resize(
    img: Image.Image, box, size: int | tuple[int, int], path: str, resample: int = Image.Resampling.BICUBIC
) -> np.ndarray:
    """`box` of `img` resized to `size` (a side, or (width, height)) as uint8 RGB."""
    size = (size, size) if isinstance(size, int) else size
    try:
        img = img if img.mode == "RGB" else _to_rgb(img, path)
        out = img.resize(size, resample=resample, box=box)
    except CorruptImageError:
        raise
    except Exception as e:
        raise _corrupt(path, e) from e
    return np.asarray(out)


def _example(image: np.ndarray, label: int, valid: bool, corrupt: bool) -> dict[str, Any]:
    return {
        "image": image,
        "label": np.int32(label),
        "mask": np.bool_(valid),
        "_corrupt": np.int32(corrupt),
    }


def blank_example(image_size: int, *, corrupt: bool = False) -> dict[str, Any]:
    """A zero image with mask False: stands for a padding slot or a skipped corrupt image."""
    return _example(np.zeros((image_size, image_size, 3), np.uint8), 0, valid=False, corrupt=corrupt)


def guarded_example(
    record: dict[str, Any],
    make: Callable[[], dict[str, Any]],
    blank: Callable[[bool], dict[str, Any]],
    on_corrupt: str,
) -> dict[str, Any]:
    """`make()` for a real record; `blank(False)` for a padding record; on `CorruptImageError`
    raise (on_corrupt="error", the message names the file) or warn and return `blank(True)`.

    Shared by every task's transforms, so padding and corrupt files behave the same everywhere.
    """
    if record.get("padding"):
        return {**blank(False), "_converted": np.int32(0)}
    _last_conversion.code = 0
    try:
        example = make()
    except CorruptImageError as e:
        if on_corrupt == "error":
            raise CorruptImageError(f"{e} (set on_corrupt='skip' to skip such files with a warning)") from e
        logging.warning("skipping corrupt image (on_corrupt='skip'): %s", e)
        return {**blank(True), "_converted": np.int32(0)}
    return {**example, "_converted": np.int32(_last_conversion.code)}


class _ImageTransform:
    def __init__(self, image_size: int, on_corrupt: str, fast_jpeg: bool):
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        check_choice("on_corrupt", on_corrupt, ON_CORRUPT)
        self.image_size = int(image_size)
        self.on_corrupt = on_corrupt
        self.fast_jpeg = fast_jpeg

    def _guard(self, fn, record: dict[str, Any], *args) -> dict[str, Any]:
        return guarded_example(
            record,
            lambda: _example(np.ascontiguousarray(fn(record, *args)), record["label"], valid=True, corrupt=False),
            lambda corrupt: blank_example(self.image_size, corrupt=corrupt),
            self.on_corrupt,
        )


class TrainTransform(_ImageTransform, grain.transforms.RandomMap):
    """Decode -> Inception crop -> random horizontal flip -> resize (uint8 RGB out).

    JPEGs are decoded by libjpeg-turbo, other files by PIL; images are resized by OpenCV
    (anti-aliased like PIL's bicubic when shrinking, bicubic otherwise; `nf.data.decode`). The
    crop box and flip draws are those of `inception_crop_box` and `rng.random() < 0.5`, in that
    order.

    Args:
      image_size: output side px.
      area_range, aspect_range, attempts: the Inception crop (paper App. A defaults). Use
        `area_range=(1, 1), aspect_range=(1, 1)` for a plain resize of square images.
      hflip: random left-right flip with p=0.5 (turn off for e.g. digits).
      on_corrupt: "error" (raise naming the file) or "skip" (warn naming the file, mark it).
      fast_jpeg: decode JPEGs at a reduced DCT scale (1/2, 1/4, 1/8) when the crop stays >= px.
      antialias: low-pass before shrinking, like PIL's bicubic (default); False: the plain bicubic
        of the tf.data reference pipelines (aliases; `nf.data.decode`).
    """

    def __init__(
        self,
        image_size: int,
        *,
        area_range: tuple[float, float] = INCEPTION_CROP_AREA,
        aspect_range: tuple[float, float] = INCEPTION_CROP_ASPECT,
        attempts: int = INCEPTION_CROP_ATTEMPTS,
        hflip: bool = True,
        on_corrupt: str = "error",
        fast_jpeg: bool = True,
        antialias: bool = True,
    ):
        super().__init__(image_size, on_corrupt, fast_jpeg)
        self.antialias = antialias
        if not (0 < area_range[0] <= area_range[1] <= 1):
            raise ValueError(f"area_range must satisfy 0 < lo <= hi <= 1, got {area_range}")
        if not (0 < aspect_range[0] <= aspect_range[1]):
            raise ValueError(f"aspect_range must satisfy 0 < lo <= hi, got {aspect_range}")
        self.area_range = tuple(area_range)
        self.aspect_range = tuple(aspect_range)
        self.attempts = attempts
        self.hflip = hflip

    def _image(self, record: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        path, data, read_error = record.get("path", "<bytes>"), record["image"], record.get("read_error")
        header = None if read_error or not data else decode.jpeg_header(data)
        img = open_image(data, path, read_error) if header is None else None
        width, height = img.size if header is None else (header.width, header.height)
        px = self.image_size
        box = inception_crop_box(
            width,
            height,
            rng,
            area_range=self.area_range,
            aspect_range=self.aspect_range,
            attempts=self.attempts,
            fallback_fraction=px / (px + CROP_PADDING),
        )
        flip = self.hflip and rng.random() < 0.5
        array = self._decode_fast(data, header, box) if header is not None else None
        if array is None:  # not a YCbCr/grayscale JPEG, or libjpeg-turbo refused it: PIL decides
            img = img or open_image(data, path, read_error)
            if self.fast_jpeg:
                img, box = _draft_for_box(img, box, px)
            array = np.asarray(_to_rgb(img, path))
        else:
            sx, sy = array.shape[1] / width, array.shape[0] / height  # 1, or a DCT reduction's
            box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        image = decode.crop_resize(array, box, px, self.antialias)
        return decode.flip_left_right(image) if flip else image

    def _decode_fast(self, data: bytes, header: decode.JpegHeader, box: Box) -> np.ndarray | None:
        reduction = decode.dct_reduction(box, self.image_size) if self.fast_jpeg else 1
        try:
            array = decode.decode_jpeg(data, header, reduction)
        except ValueError:  # damaged, or a libjpeg warning PIL tolerates: PIL decodes or names the error
            return None
        _last_conversion.code = 0 if header.conversion is None else 1 + CONVERSIONS.index(header.conversion)
        return array

    def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        return self._guard(self._image, record, rng)


class EvalTransform(_ImageTransform, grain.transforms.Map):
    """Decode -> deterministic centre crop -> resize (bicubic by default; uint8 RGB out).

    Args:
      image_size: output side px.
      eval_crop: "center_crop" (square crop of crop_pct of the short side, then resize to px;
        NF-RegNet and DeepMind's NFNet eval), "resize_crop" (resize to floor(px/crop_pct)^2, then
        centre crop px; NFNet) or "resize_short_crop" (resize the short side to
        floor(px/crop_pct) keeping the aspect, then centre crop px; timm's eval).
      crop_padding: crop_pct = px/(px+crop_padding) (32; 0 keeps the whole square image, e.g. for
        tiny digit images) unless `crop_pct` is given.
      crop_pct: the crop fraction (overrides crop_padding), e.g. a timm model's `crop_pct`.
      interpolation: a name of `INTERPOLATIONS`.
      on_corrupt, fast_jpeg: as in `TrainTransform`.
    Records with {"padding": True} (added by the eval pipeline) become blank, mask-False slots.
    """

    def __init__(
        self,
        image_size: int,
        *,
        eval_crop: str = "center_crop",
        crop_padding: int = CROP_PADDING,
        crop_pct: float | None = None,
        interpolation: str = "bicubic",
        on_corrupt: str = "error",
        fast_jpeg: bool = True,
    ):
        super().__init__(image_size, on_corrupt, fast_jpeg)
        check_choice("eval_crop", eval_crop, EVAL_CROPS)
        check_choice("interpolation", interpolation, tuple(INTERPOLATIONS))
        if crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
        if crop_pct is not None and not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        px = self.image_size
        self.eval_crop, self.interpolation = eval_crop, interpolation
        self.crop_pct = px / (px + int(crop_padding)) if crop_pct is None else float(crop_pct)

    def _image(self, record: dict[str, Any]) -> np.ndarray:
        path = record.get("path", "<bytes>")
        img = open_image(record["image"], path, record.get("read_error"))
        px, resample = self.image_size, INTERPOLATIONS[self.interpolation]
        if self.eval_crop == "center_crop":
            box = center_crop_box(*img.size, self.crop_pct)
            if self.fast_jpeg:
                img, box = _draft_for_box(img, box, px)
            return _crop_resize(img, box, px, path, resample)
        if self.eval_crop == "resize_crop":  # resize (aspect not kept) to (px/crop_pct)^2, crop the central px
            big = math.floor(px / self.crop_pct + 1e-6)  # timm's 'squash' floors; (px+32)^2 stays exact
            if self.fast_jpeg:
                img, _ = _draft_for_box(img, (0, 0, *img.size), big)
            resized = _crop_resize(img, None, big, path, resample)
            off = round((big - px) / 2.0)  # torchvision's CenterCrop offset
            return resized[off : off + px, off : off + px]
        # resize_short_crop, as torchvision's Resize(int) + CenterCrop that timm's eval uses
        short = math.floor(px / self.crop_pct)
        if self.fast_jpeg:
            img, _ = _draft_for_box(img, (0, 0, *img.size), short)
        width, height = img.size
        size = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
        resized = _crop_resize(img, None, size, path, resample)
        top, left = round((size[1] - px) / 2.0), round((size[0] - px) / 2.0)
        if top < 0 or left < 0:
            raise ValueError(f"crop_pct={self.crop_pct} > 1 leaves the {size} image smaller than {px}px")
        return resized[top : top + px, left : left + px]

    def map(self, record: dict[str, Any]) -> dict[str, Any]:
        return self._guard(self._image, record)


# ------------------------------------------------------------------------------------------------
# Batch level: one-hot labels, MixUp, CutMix.


def one_hot(labels: np.ndarray, num_classes: int, mask: np.ndarray | None = None) -> np.ndarray:
    out = np.zeros((len(labels), num_classes), np.float32)
    out[np.arange(len(labels)), labels] = 1.0
    if mask is not None:
        out *= np.asarray(mask, np.float32)[:, None]
    return out


def cutmix_box(height: int, width: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """CutMix box (y0, y1, x0, x1): side `sqrt(1-U)` of the image side, centre uniform, clipped."""
    ratio = math.sqrt(1.0 - rng.uniform())
    bh, bw = int(ratio * height), int(ratio * width)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    y0, y1 = max(cy - bh // 2, 0), min(cy + bh // 2, height)
    x0, x1 = max(cx - bw // 2, 0), min(cx + bw // 2, width)
    return y0, y1, x0, x1


def _mix_split(n: int, mixup_alpha: float, cutmix: bool) -> int:
    """Rows [0, split) get MixUp, rows [split, n) CutMix (`mix_batch`)."""
    if mixup_alpha > 0 and cutmix:
        return n // 2
    return n if mixup_alpha > 0 else 0


def _mix_into(
    images: np.ndarray, source: np.ndarray, targets: np.ndarray, rng: np.random.Generator, split: int, alpha: float
) -> None:
    """`mix_batch` of `source` written into `images` (a copy of it, float32 or uint8; uint8: MixUp
    mixtures rounded to nearest, which stay in 0..255), `targets` mixed in place."""
    n = images.shape[0]
    if split > 0:
        y = targets[:split].copy()
        r = rng.beta(alpha, alpha, size=split).astype(np.float32)
        x = source[:split]
        mixed, partner = np.empty((2, *x.shape[1:]), np.float32)  # one example at a time: in cache
        for k in range(split):
            np.multiply(x[k], r[k], out=mixed, dtype=np.float32)
            mixed += np.multiply(x[split - 1 - k], 1 - r[k], out=partner, dtype=np.float32)
            images[k] = np.rint(mixed, out=mixed) if images.dtype == np.uint8 else mixed
        targets[:split] = r[:, None] * y + (1 - r)[:, None] * y[::-1]
    if split < n:
        xp, y = source[split:][::-1], targets[split:].copy()
        yp = y[::-1]
        h, w = images.shape[1:3]
        for k in range(n - split):
            y0, y1, x0, x1 = cutmix_box(h, w, rng)
            images[split + k, y0:y1, x0:x1] = xp[k, y0:y1, x0:x1]
            pasted = (y1 - y0) * (x1 - x0) / (h * w)
            targets[split + k] = (1 - pasted) * y[k] + pasted * yp[k]


def mix_batch(
    images: np.ndarray,
    targets: np.ndarray,
    rng: np.random.Generator,
    *,
    mixup_alpha: float = 0.0,
    cutmix: bool = False,
    dtype: type = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """MixUp and/or CutMix of a batch (paper App. A), each example paired with the reversed batch.

    With both on, the first half of the batch gets MixUp and the second half CutMix (as in the
    reference pipeline); with one on, the whole batch gets it. MixUp: ratio ~ Beta(a, a) per
    example, `x = r*x + (1-r)*x_partner`. CutMix: a `cutmix_box` per example is pasted from the
    partner. Targets (one-hot or already soft, rows sum to 1) mix with the same weights, for
    CutMix the exact pasted area fraction, so each row still sums to 1.

    `dtype=np.uint8` (uint8 images, for the RandAugment that follows in the NFNet recipe) mixes
    without a float32 copy of the batch and rounds the MixUp mixtures: equal to
    `np.clip(np.rint(mix_batch(images, ...)[0]), 0, 255)` (the same draws and float32 arithmetic).

    Returns new (images of `dtype`, float32 targets); inputs are not modified.
    """
    source = np.asarray(images, dtype)
    split = _mix_split(source.shape[0], mixup_alpha, cutmix)
    images, targets = np.empty_like(source), np.array(targets, np.float32, copy=True)
    images[split:] = source[split:]  # CutMix pastes into these; MixUp writes rows [0, split) whole
    _mix_into(images, source, targets, rng, split, mixup_alpha)
    return images, targets
