"""The fast input path keeps the augmentation distribution: the Inception crop's area/aspect
statistics and the flip rate (analytic), the train images against the former PIL path,
RandAugment against an all-PIL reference of the same draws, MixUp/CutMix against the former
float implementation (kept here verbatim) and the batch normalization bit for bit."""

from __future__ import annotations

import io
import math

import cv2
import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from nf.data import decode
from nf.data import randaugment as R
from nf.data import transforms as T


def _photo(width: int, height: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (5, 7, 3), np.uint8)
    base = np.asarray(Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC), np.float32)
    y0, x0 = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
    base[y0 : y0 + height // 3, x0 : x0 + width // 3] = rng.integers(0, 256, 3)  # an object with edges
    base += rng.normal(0, 10, (height, width, 1))
    return np.clip(base, 0, 255).astype(np.uint8)


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _laplacian_energy(image: np.ndarray) -> float:
    g = image.astype(np.float64).mean(-1)
    return float(np.std(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]))


def test_inception_crop_statistics_are_analytic():
    # 1000x1000: every draw with area <= 3/4 fits at any aspect in [3/4, 4/3], so among accepted
    # boxes the area is uniform on [0.08, 0.75] and the log aspect uniform on [log 3/4, log 4/3].
    rng = np.random.default_rng(0)
    boxes = np.array([T.inception_crop_box(1000, 1000, rng) for _ in range(20000)], np.float64)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    area, log_aspect = w * h / 1e6, np.log(w / h)
    low = area <= 0.74
    counts, _ = np.histogram(area[low], bins=10, range=(0.08, 0.74))
    expected = low.sum() / 10
    assert np.sum((counts - expected) ** 2 / expected) < 27.9  # chi-square, 9 dof, p = 0.001
    counts, _ = np.histogram(log_aspect[area <= 0.5], bins=8, range=(math.log(3 / 4), math.log(4 / 3)))
    expected = counts.sum() / 8
    assert np.sum((counts - expected) ** 2 / expected) < 24.3  # 7 dof, p = 0.001
    # E[area | accepted]: a box fits iff area <= m = exp(-|log aspect|), so with L = log(4/3)
    # E = E[(m^2 - 0.08^2) / 2] / E[m - 0.08], E[m] = (1 - e^-L) / L, E[m^2] = (1 - e^-2L) / 2L.
    big_l = math.log(4 / 3)
    m1, m2 = (1 - math.exp(-big_l)) / big_l, (1 - math.exp(-2 * big_l)) / (2 * big_l)
    assert abs(np.mean(area) - (m2 - 0.08**2) / 2 / (m1 - 0.08)) < 0.005


def test_train_images_match_the_pil_path_in_box_flip_and_sharpness():
    transform = T.TrainTransform(96)
    psnrs, sharp_new, sharp_old, flips = [], [], [], 0
    for i in range(12):
        encoded = _jpeg(_photo(320, 240, seed=i))
        record = {"image": encoded, "label": 0, "path": f"{i}.jpg"}
        decoded = Image.open(io.BytesIO(encoded)).convert("RGB")
        for seed in range(16):  # 192 draws: the sharpness ratio's sampling error is ~1.5 %, not ~5 %
            new = transform.random_map(record, np.random.default_rng(seed))["image"]
            # The former transform: same draws (box, then flip), PIL bicubic resize of the box.
            rng = np.random.default_rng(seed)
            box = T.inception_crop_box(320, 240, rng, fallback_fraction=96 / 128)
            old = np.asarray(decoded.resize((96, 96), Image.Resampling.BICUBIC, box=box))
            if rng.random() < 0.5:
                old, flips = old[:, ::-1], flips + 1
            mse = np.mean((new.astype(np.float64) - old) ** 2)
            psnrs.append(10 * math.log10(255**2 / max(mse, 1e-9)))
            sharp_new.append(_laplacian_energy(new))
            sharp_old.append(_laplacian_energy(old))
    assert np.median(psnrs) > 36 and min(psnrs) > 30
    assert 0.93 < np.mean(sharp_new) / np.mean(sharp_old) < 1.07  # no extra blur, no aliasing
    assert 0 < flips < 192


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(255**2 / max(np.mean((a.astype(np.float64) - b) ** 2), 1e-9))


def test_shrinks_below_two_are_antialiased_like_pil_and_plain_bicubic_is_not():
    # The train path's resize after the DCT reduction: both axes shrink by 1..2 (blur + bicubic).
    # PIL's anti-aliased bicubic is the reference; the plain bicubic of the tf.data reference
    # pipeline (no anti-aliasing) must fail the same sharpness bound, so the bound can fail.
    size, psnrs, sharp = 96, [], {"new": [], "pil": [], "plain": []}
    for seed in range(6):
        image = _photo(320, 240, seed)
        for scale_x, scale_y in ((1.1, 1.2), (1.3, 1.3), (1.5, 1.15), (1.25, 1.7), (1.9, 1.9), (1.6, 1.45)):
            width, height = round(size * scale_x), round(size * scale_y)
            left, top = 7 * seed, 11 * seed
            box = (left, top, left + width, top + height)
            new = decode.crop_resize(image, box, size)
            pil = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC, box=box))
            crop = image[top : top + height, left : left + width]
            plain = cv2.resize(crop, (size, size), interpolation=cv2.INTER_CUBIC)
            psnrs.append(_psnr(new, pil))
            for name, out in (("new", new), ("pil", pil), ("plain", plain)):
                sharp[name].append(_laplacian_energy(out))
    assert np.median(psnrs) > 42 and min(psnrs) > 39  # plain bicubic: ~35 and ~31
    assert 0.93 < np.mean(sharp["new"]) / np.mean(sharp["pil"]) < 1.07
    assert np.mean(sharp["plain"]) / np.mean(sharp["pil"]) > 1.15  # aliasing: the bound above catches it


def test_antialias_off_is_the_plain_bicubic_of_the_same_draws():
    # data.antialias=False: tf.data's filter (plain bicubic of the whole-pixel box), same box and
    # flip. (fast_jpeg off: a crop of twice the output or more is otherwise decoded DCT-reduced.)
    on, off = T.TrainTransform(64, fast_jpeg=False), T.TrainTransform(64, antialias=False, fast_jpeg=False)
    image = _photo(320, 240, seed=3)
    record = {"image": _jpeg(image), "label": 0, "path": "a.jpg"}
    decoded = np.asarray(Image.open(io.BytesIO(record["image"])).convert("RGB"))
    sharper = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        left, top, right, bottom = (int(v) for v in T.inception_crop_box(320, 240, rng, fallback_fraction=64 / 96))
        plain = cv2.resize(decoded[top:bottom, left:right], (64, 64), interpolation=cv2.INTER_CUBIC)
        if rng.random() < 0.5:
            plain = plain[:, ::-1]
        got = off.random_map(record, np.random.default_rng(seed))["image"]
        np.testing.assert_array_equal(got, plain)
        smooth = on.random_map(record, np.random.default_rng(seed))["image"]
        sharper += _laplacian_energy(got) > _laplacian_energy(smooth)
    assert sharper >= 18  # every crop here shrinks: without the low-pass the output aliases


def test_antialias_blur_leaves_an_axis_that_is_not_shrunk_alone():
    rng = np.random.default_rng(0)
    columns = np.repeat(rng.integers(0, 256, (1, 50, 3), np.uint8), 40, axis=0)  # varies along x only
    np.testing.assert_array_equal(decode.antialias_blur(columns, 1.0, 1.6), columns)  # y blur: no-op
    rows = np.ascontiguousarray(columns.transpose(1, 0, 2))  # varies along y only
    np.testing.assert_array_equal(decode.antialias_blur(rows, 1.6, 1.0), rows)
    blurred = decode.antialias_blur(columns, 1.6, 1.0).astype(np.float64)
    assert blurred[:, 1:].std() < columns[:, 1:].std()  # along x it low-passes


def test_flip_rate_is_one_half():
    ramp = np.tile(np.arange(0, 240, 4, dtype=np.uint8)[None, :, None], (40, 1, 3))  # brighter to the right
    record = {"image": _jpeg(ramp), "label": 0, "path": "ramp.jpg"}
    transform = T.TrainTransform(16, area_range=(1, 1), aspect_range=(1.5, 1.5))
    outs = [transform.random_map(record, np.random.default_rng(s))["image"] for s in range(400)]
    flipped = sum(int(o[:, 0].mean() > o[:, -1].mean()) for o in outs)
    assert 200 - 3.3 * 10 < flipped < 200 + 3.3 * 10  # Binomial(400, 1/2): sd 10


def test_batch_normalization_is_bit_identical():
    values = np.arange(256, dtype=np.uint8)
    images = np.stack([*np.meshgrid(values, values[::-1], indexing="ij"), np.roll(np.tile(values, (256, 1)), 7, 1)], -1)
    mean, std = T.MEAN_RGB, T.STDDEV_RGB
    expected = ((images.astype(np.float32) - mean) / std).astype(np.float32)
    np.testing.assert_array_equal(T.normalize(images[None]), expected[None])
    np.testing.assert_array_equal(
        T.normalize(images, (1.0, 2.0, 3.0), (0.5, 0.25, 2.0)), (images - [1, 2, 3.0]) / [0.5, 0.25, 2]
    )


# ------------------------------------------------------------------------------------------------
# RandAugment: every op against PIL, and whole policies against an all-PIL reference.


def _pil_op(name: str, image: np.ndarray, param, rng: np.random.Generator) -> np.ndarray:
    pil = Image.fromarray(image)
    if name == "AutoContrast":
        return np.asarray(ImageOps.autocontrast(pil))
    if name == "Equalize":
        return np.asarray(ImageOps.equalize(pil))
    if name == "Solarize":
        return np.asarray(ImageOps.solarize(pil, param))
    if name == "SolarizeAdd":
        return np.where(image < 128, np.minimum(image.astype(int) + param, 255), image).astype(np.uint8)
    enhance = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast}
    enhance |= {"Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}
    if name in enhance:
        return np.asarray(enhance[name](pil).enhance(param))
    return R.apply_op(name, image, param, rng)  # the geometric ops, Invert, Posterize, Cutout: unchanged


def _reference_randaugment(ra: R.RandAugment, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The documented draws: op index, sign for signed ops, Cutout's centre; applied with PIL."""
    for _ in range(ra.num_layers):
        name = ra.ops[int(rng.integers(len(ra.ops)))]
        param = ra.params[name]
        if name in R.SIGNED_OPS and rng.random() < 0.5:
            param = -param
        image = _pil_op(name, image, param, rng)
    return image


@pytest.mark.parametrize("name", ["AutoContrast", "Equalize", "Solarize", "SolarizeAdd", "Color", "Sharpness"])
def test_table_ops_equal_pil(name):
    rng = np.random.default_rng(1)
    cases = [_photo(40, 30, 1), rng.integers(90, 100, (9, 11, 3), np.uint8), np.full((5, 6, 3), 77, np.uint8)]
    cases.append((rng.integers(0, 2, (8, 8, 3)) * 255).astype(np.uint8))
    for image in cases:
        for magnitude in (5, 10, 15):
            param = R.op_parameter(name, magnitude)
            np.testing.assert_array_equal(R.apply_op(name, image, param), _pil_op(name, image, param, rng))


def test_affine_takes_the_pixels_of_pil_transform():
    # The geometric ops' remap with PIL-computed maps equals PIL's NEAREST transform, bit for bit.
    rng = np.random.default_rng(2)
    matrices = [(1.0, s, 0.0, 0.0, 1.0, 0.0) for s in (0.15, -0.3, 0.45)]  # ShearX
    matrices += [(1.0, 0.0, 0.0, s, 1.0, 0.0) for s in (0.15, -0.45)]  # ShearY
    matrices += [(1.0, 0.0, -t, 0.0, 1.0, u) for t, u in ((50.0, 0.0), (-100.0, 0.0), (0.0, 37.5), (2.5, -150.0))]
    for degrees in (15.0, -30.0, 45.0, 90.0):  # Rotate's matrix about the centre
        t = math.radians(degrees)
        matrices.append((math.cos(t), -math.sin(t), 20.0, math.sin(t), math.cos(t), -10.0))
    matrices += [tuple(rng.uniform(-1.5, 1.5, 6) * (1, 1, 40, 1, 1, 40)) for _ in range(5)]
    for height, width in ((192, 192), (37, 51), (8, 8), (1, 5)):
        image = rng.integers(0, 256, (height, width, 3), np.uint8)
        for a, b, c, d, e, f in matrices:
            data = (a, b, c + 0.5 * (1 - a - b), d, e, f + 0.5 * (1 - d - e))  # `affine`'s convention
            pil = Image.fromarray(image).transform(
                (width, height), Image.Transform.AFFINE, data, Image.Resampling.NEAREST, fillcolor=(9, 9, 9)
            )
            np.testing.assert_array_equal(R.affine(image, (a, b, c, d, e, f), fill=9), np.asarray(pil))


@pytest.mark.parametrize("magnitude", [5, 10, 15])
def test_randaugment_batches_equal_the_pil_reference(magnitude):
    ra = R.RandAugment(4, magnitude)
    batch = np.stack([_photo(48, 48, seed=s) for s in range(24)])
    got = ra.augment_batch(batch, (3, 1, 7))
    for k in range(len(batch)):
        np.testing.assert_array_equal(got[k], _reference_randaugment(ra, batch[k], R.example_rng(3, 1, 7, k)))


# ------------------------------------------------------------------------------------------------
# MixUp / CutMix: the former float implementation, verbatim.


def _former_mix_batch(images, targets, rng, *, mixup_alpha=0.0, cutmix=False):
    images = np.array(images, np.float32, copy=True)
    targets = np.array(targets, np.float32, copy=True)
    n = images.shape[0]
    if mixup_alpha > 0 and cutmix:
        split = n // 2
    elif mixup_alpha > 0:
        split = n
    elif cutmix:
        split = 0
    else:
        return images, targets
    if split > 0:
        x, y = images[:split], targets[:split]
        r = rng.beta(mixup_alpha, mixup_alpha, size=split).astype(np.float32)
        images[:split] = r[:, None, None, None] * x + (1 - r)[:, None, None, None] * x[::-1]
        targets[:split] = r[:, None] * y + (1 - r)[:, None] * y[::-1]
    if split < n:
        x, y = images[split:].copy(), targets[split:].copy()
        xp, yp = x[::-1], y[::-1]
        h, w = x.shape[1:3]
        for k in range(n - split):
            y0, y1, x0, x1 = T.cutmix_box(h, w, rng)
            images[split + k, y0:y1, x0:x1] = xp[k, y0:y1, x0:x1]
            pasted = (y1 - y0) * (x1 - x0) / (h * w)
            targets[split + k] = (1 - pasted) * y[k] + pasted * yp[k]
    return images, targets


@pytest.mark.parametrize("n, alpha, cutmix", [(32, 0.2, True), (7, 0.2, True), (6, 0.2, False), (5, 0.0, True)])
def test_mixing_equals_the_former_float_implementation(n, alpha, cutmix):
    rng = np.random.default_rng(n)
    images = rng.integers(0, 256, (n, 20, 24, 3), np.uint8)
    targets = T.one_hot(rng.integers(0, 10, n), 10)
    kw = {"mixup_alpha": alpha, "cutmix": cutmix}
    ref_images, ref_targets = _former_mix_batch(images, targets, np.random.default_rng(9), **kw)
    got_images, got_targets = T.mix_batch(images, targets, np.random.default_rng(9), **kw)
    np.testing.assert_array_equal(got_images, ref_images)
    np.testing.assert_array_equal(got_targets, ref_targets)
    u8_images, u8_targets = T.mix_batch(images, targets, np.random.default_rng(9), **kw, dtype=np.uint8)
    assert u8_images.dtype == np.uint8
    np.testing.assert_array_equal(u8_images, np.clip(np.rint(ref_images), 0, 255).astype(np.uint8))
    np.testing.assert_array_equal(u8_targets, ref_targets)


def test_mixup_ratio_is_beta_distributed():
    # Row k < n/2 of the targets holds r on its own class and 1 - r on the partner's.
    n, ratios = 64, []
    targets = np.eye(n, dtype=np.float32)
    images = np.zeros((n, 4, 4, 3), np.uint8)
    for step in range(100):
        _, mixed = T.mix_batch(
            images, targets, np.random.default_rng([5, step]), mixup_alpha=0.2, cutmix=True, dtype=np.uint8
        )
        ratios.extend(mixed[np.arange(n // 2), np.arange(n // 2)])
    ratios = np.asarray(ratios)
    assert abs(ratios.mean() - 0.5) < 0.03  # Beta(0.2, 0.2): mean 1/2
    assert abs(ratios.var() - 0.2 * 0.2 / (0.4**2 * 1.4)) < 0.015  # variance ab / ((a+b)^2 (a+b+1))
