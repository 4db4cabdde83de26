"""Fast host-side image decode and crop-resize for the training transform (uint8 RGB throughout).

Measured by `tools/input_benchmark.py` (docs/input.md): PIL's bicubic resize cost as much as the
JPEG decode itself, so the train path decodes with libjpeg-turbo through `simplejpeg` (a PyPI
wheel that bundles the library; pixel-identical to PIL's decode of the same files) and crops +
resizes with OpenCV in one call:

* an axis shrinking by a factor s (both by less than 2, or one while the other is enlarged): a
  Gaussian low-pass of sigma `ANTIALIAS_SIGMA * sqrt(s^2 - 1)` along each shrinking axis, then
  `cv2.INTER_CUBIC`. PIL's anti-aliased bicubic widens its kernel by s; the Gaussian adds what the
  plain bicubic lacks, at a third of the cost of `cv2.INTER_AREA`'s area averaging for these
  non-integer factors (docs/input.md: ~42 dB PSNR against PIL's output on photographs, the same
  sharpness; the plain bicubic of the reference tf.data pipeline: ~33 dB, and it aliases);
* both axes shrinking, one by 2 or more (an elongated crop whose short side is under twice the
  output, so not DCT-reduced; or `fast_jpeg` off): `cv2.INTER_AREA` (pixel-area averaging);
* no axis shrinking: `cv2.INTER_CUBIC` (bicubic interpolation).

`antialias=False` (config `data.antialias`) resizes every whole-pixel box with the plain
`cv2.INTER_CUBIC`: the filter of the tf.data reference (`tf.image.resize(..., "bicubic")` of
DeepMind's NFNet code and of big_vision), which aliases when shrinking (~33 dB against PIL's
output instead of ~42) and saves the Gaussian's time. (A crop of twice the output or more is still
decoded DCT-reduced with `fast_jpeg`, a low-pass of its own, and resized by PIL.)

`fast_jpeg` reduced decodes (scale 1/2, 1/4 or 1/8 in the DCT domain, only when the crop stays at
least `out_size` px, so its short side then shrinks by under 2) are those of PIL's `draft`, which
libjpeg-turbo computes the same way; their fractional crop boxes are resized by PIL as before.

Baseline and progressive YCbCr and grayscale JPEGs take this path; every other file (PNG, CMYK and
YCCK JPEGs, anything libjpeg-turbo rejects in its header) is decoded by PIL via
`transforms.decode_image`, so the conversions and error messages stay those of one place. The
EXIF orientation tag is ignored by both decoders, as in ImageNet practice (the labels were made
on the stored pixels; the reference pipelines of the NFNet paper and of big_vision ignore it too).
A truncated or damaged JPEG raises `CorruptImageError` naming the file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg
from PIL import Image

cv2.setNumThreads(1)  # the pipeline parallelizes over images (threads, grain workers), not inside one

_FAST_COLORSPACES = {"YCbCr": None, "Gray": "grayscale"}  # colorspace -> the `transforms.CONVERSIONS` kind
DCT_REDUCTIONS = (8, 4, 2)  # libjpeg-turbo's SIMD reduced decodes (PIL `draft` uses the same)
# Gaussian pre-filter of a shrink by s < 2: sigma = ANTIALIAS_SIGMA * sqrt(s^2 - 1) input px (fitted
# to PIL's anti-aliased bicubic in PSNR and sharpness; `tools/input_benchmark.py --candidates` measures both).
ANTIALIAS_SIGMA = 0.55
MAX_BLUR_SHRINK = 2.0  # both axes shrinking, one by this or more: INTER_AREA

Box = tuple[float, float, float, float]  # (left, top, right, bottom) in pixels, PIL convention


@dataclass(frozen=True)
class JpegHeader:
    """What the header of a JPEG that takes the fast path says."""

    width: int
    height: int
    conversion: str | None  # None for colour (YCbCr) files, "grayscale" for single-channel ones


def jpeg_header(data: bytes) -> JpegHeader | None:
    """The header of a YCbCr or grayscale JPEG; None for any other file (decoded by PIL instead)."""
    if bytes(data[:2]) != b"\xff\xd8":  # SOI marker (bytes, or any buffer such as a memoryview)
        return None
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:  # damaged header: PIL's decode then names the file and the error
        return None
    if colorspace not in _FAST_COLORSPACES or width <= 0 or height <= 0:
        return None
    return JpegHeader(int(width), int(height), _FAST_COLORSPACES[colorspace])


def dct_reduction(box: Box, out_size: int) -> int:
    """The largest DCT-domain reduction n in `DCT_REDUCTIONS` (else 1) keeping the crop >= out_size.

    The rule of PIL's `draft` as `transforms._draft_for_box` uses it: no reduction unless the crop's
    short side is at least twice the output.
    """
    crop_short = max(min(box[2] - box[0], box[3] - box[1]), 1)
    for n in DCT_REDUCTIONS:
        if crop_short / n >= out_size:
            return n
    return 1


def decode_jpeg(data: bytes, header: JpegHeader, reduction: int = 1) -> np.ndarray:
    """uint8 RGB (H, W, 3) of a `jpeg_header`-accepted JPEG, at 1/`reduction` scale (DCT domain).

    Raises ValueError (libjpeg-turbo's message, e.g. "Premature end of JPEG file") on damaged data.
    """
    if reduction == 1:
        return simplejpeg.decode_jpeg(data, "RGB")
    return simplejpeg.decode_jpeg(
        data,
        "RGB",
        min_height=math.ceil(header.height / reduction),
        min_width=math.ceil(header.width / reduction),
    )


def crop_resize(image: np.ndarray, box: Box, size: int, antialias: bool = True) -> np.ndarray:
    """The `box` of a uint8 RGB array resized to (size, size) (module docstring; `antialias`
    False: plain bicubic, as tf.data).

    A whole-pixel box goes through OpenCV. A fractional one (a box scaled to a reduced decode,
    at least `size` px and under 2x that by `dct_reduction`) goes through PIL's bicubic
    `resize(box=...)`, which samples fractional boxes exactly, as the PIL `draft` path did.
    """
    if any(b != int(b) for b in box):
        resized = Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC, box=tuple(box))
        return np.asarray(resized)
    left, top, right, bottom = (int(b) for b in box)
    crop = image[top:bottom, left:right]
    if not antialias:
        return cv2.resize(crop, (size, size), interpolation=cv2.INTER_CUBIC)
    scale_y, scale_x = crop.shape[0] / size, crop.shape[1] / size
    if scale_x > 1 and scale_y > 1 and max(scale_x, scale_y) >= MAX_BLUR_SHRINK:
        return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)
    if scale_x > 1 or scale_y > 1:
        crop = antialias_blur(crop, scale_x, scale_y)
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_CUBIC)


def antialias_blur(image: np.ndarray, scale_x: float, scale_y: float) -> np.ndarray:
    """The Gaussian low-pass (module docstring) before a bicubic shrink by (scale_x, scale_y) < 2;
    an axis that is not shrunk is left alone."""
    sigmas = [ANTIALIAS_SIGMA * math.sqrt(max(s * s - 1.0, 0.0)) for s in (scale_x, scale_y)]
    ksize = [2 * math.ceil(2.5 * g) + 1 if g > 0 else 1 for g in sigmas]  # +-2.5 sigma
    return cv2.GaussianBlur(image, ksize, sigmaX=sigmas[0], sigmaY=sigmas[1], borderType=cv2.BORDER_REFLECT_101)


def flip_left_right(image: np.ndarray) -> np.ndarray:
    """`image[:, ::-1]` as a new contiguous array (OpenCV: ~50x faster than numpy's strided copy)."""
    return cv2.flip(image, 1)


def normalize_table(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(1, 256, 3) float32 table of `(v - mean) / std` for v = 0..255, computed as numpy does it
    elementwise, so a lookup is bit-identical to the arithmetic."""
    values = np.arange(256, dtype=np.float32)[:, None]
    return ((values - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).astype(np.float32)[None]


def lookup(images: np.ndarray, table: np.ndarray) -> np.ndarray:
    """`table[images[..., c], c]` for uint8 (..., W, 3) images and a (1, 256, 3) table of any dtype
    (a (256,) table: the same for every channel), in one OpenCV pass."""
    rows = np.ascontiguousarray(images).reshape(-1, *images.shape[-2:])
    return cv2.LUT(rows, table).reshape(images.shape)
