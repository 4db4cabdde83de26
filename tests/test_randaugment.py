"""RandAugment: each operation's effect at a known magnitude, determinism, pipeline integration."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from absl import flags
from conftest import classification_pipeline
from PIL import Image, ImageEnhance

from nf import data
from nf.data import randaugment as R
from nf.data import transforms as T
from nf.data.classification import _FinalizeBatch


@pytest.fixture(autouse=True)
def _absl_flags_parsed():
    if not flags.FLAGS.is_parsed():  # grain's spawned workers read absl flags
        flags.FLAGS.mark_as_parsed()


def _random_image(h=24, w=24, seed=0, lo=0, hi=256) -> np.ndarray:
    return np.random.default_rng(seed).integers(lo, hi, (h, w, 3), dtype=np.uint8)


def _op(name, image, magnitude, sign=1, rng=None):
    param = R.op_parameter(name, magnitude)
    return R.apply_op(name, image, param if param is None else sign * param, rng)


# ------------------------------------------------------------------------------------------------
# the magnitude -> parameter table of the module docstring


def test_parameter_table():
    expected = {
        5: dict(Rotate=15, Posterize=2, Solarize=128, SolarizeAdd=55, Color=1.0, ShearX=0.15, TranslateX=50, Cutout=20),
        10: dict(
            Rotate=30, Posterize=4, Solarize=256, SolarizeAdd=110, Color=1.9, ShearX=0.3, TranslateX=100, Cutout=40
        ),
        15: dict(
            Rotate=45, Posterize=6, Solarize=384, SolarizeAdd=165, Color=2.8, ShearX=0.45, TranslateX=150, Cutout=60
        ),
    }
    for m, table in expected.items():
        for name, value in table.items():
            assert R.op_parameter(name, m) == pytest.approx(value), (name, m)
    for name in ("Contrast", "Brightness", "Sharpness"):
        assert R.op_parameter(name, 10) == R.op_parameter("Color", 10)
    assert R.op_parameter("ShearY", 10) == R.op_parameter("ShearX", 10)
    assert R.op_parameter("Posterize", 30) == 8  # clamped
    assert all(R.op_parameter(n, 10) is None for n in ("AutoContrast", "Equalize", "Invert"))
    assert len(R.OPS) == len(set(R.OPS)) == 16


# ------------------------------------------------------------------------------------------------
# colour operations


def test_invert_posterize_solarize_solarize_add():
    x = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, -1)
    np.testing.assert_array_equal(_op("Invert", x, 10), 255 - x)
    np.testing.assert_array_equal(_op("Posterize", x, 5), x & 0b11000000)  # 2 bits
    np.testing.assert_array_equal(_op("Posterize", x, 10), x & 0b11110000)  # 4 bits
    assert set(np.unique(_op("Posterize", x, 5))) == {0, 64, 128, 192}
    sol = _op("Solarize", x, 5)  # threshold 128
    np.testing.assert_array_equal(sol[x < 128], x[x < 128])
    np.testing.assert_array_equal(sol[x >= 128], 255 - x[x >= 128])
    np.testing.assert_array_equal(_op("Solarize", x, 10), x)  # threshold 256: no-op (reference quirk)
    add = _op("SolarizeAdd", x, 5)  # +55 below 128, clipped
    xi = x.astype(int)
    np.testing.assert_array_equal(add[x < 128], np.minimum(xi[x < 128] + 55, 255))
    np.testing.assert_array_equal(add[x >= 128], x[x >= 128])
    np.testing.assert_array_equal(_op("SolarizeAdd", x, 20)[x == 100], 255)  # 100 + 220 clipped


@pytest.mark.parametrize("name", ["Color", "Contrast", "Brightness", "Sharpness"])
def test_enhance_ops_match_pil_factor(name):
    img = _random_image(20, 20, seed=1, lo=30, hi=220)
    kind = getattr(ImageEnhance, name)
    for m, factor in ((10, 1.9), (15, 2.8), (3, 0.64)):
        expected = np.asarray(kind(Image.fromarray(img)).enhance(factor))
        np.testing.assert_array_equal(_op(name, img, m), expected)
    np.testing.assert_array_equal(_op(name, img, 5), img)  # factor 1.0 at M = 5 (reference quirk)


def test_enhance_factor_math():
    img = _random_image(20, 20, seed=2, lo=20, hi=200)
    x = img.astype(np.float64)
    f = 1.9  # M = 10
    np.testing.assert_allclose(_op("Brightness", img, 10), np.clip(x * f, 0, 255), atol=1)
    grey = np.asarray(Image.fromarray(img).convert("L"), np.float64)[..., None]
    np.testing.assert_allclose(_op("Color", img, 10), np.clip(grey + f * (x - grey), 0, 255), atol=1)
    mean = np.round(grey.mean())
    np.testing.assert_allclose(_op("Contrast", img, 10), np.clip(mean + f * (x - mean), 0, 255), atol=1)
    assert _op("Contrast", img, 10).std() > img.std() * 1.5
    assert _op("Color", img, 1).std(axis=-1).mean() < img.std(axis=-1).mean() * 0.5  # factor 0.28: greyer


def test_auto_contrast_and_equalize():
    img = _random_image(32, 32, seed=3)
    img[..., 0] = np.clip(img[..., 0], 60, 140)
    img[..., 1] = np.clip(img[..., 1] // 4, 10, 50)
    img[..., 2] = 77  # flat channel: unchanged
    out = _op("AutoContrast", img, 10)
    assert out[..., 0].min() == 0 and out[..., 0].max() == 255
    assert out[..., 1].min() == 0 and out[..., 1].max() == 255
    np.testing.assert_array_equal(out[..., 2], 77)
    lo, hi = 60, 140
    np.testing.assert_array_equal(out[..., 0], ((img[..., 0].astype(float) - lo) * 255 / (hi - lo)).astype(np.uint8))
    # Equalize: a narrow, skewed histogram becomes close to uniform over 0..255.
    rng = np.random.default_rng(4)
    narrow = (100 + 40 * rng.beta(2, 5, (64, 64, 3))).astype(np.uint8)

    def cdf_gap(a):
        values = np.sort(a[..., 0].ravel())
        return np.abs(np.arange(values.size) / values.size - values / 255.0).max()

    eq = _op("Equalize", narrow, 10)
    assert eq.max() >= 250 and eq.min() <= 5
    assert cdf_gap(eq) < 0.1 < 0.3 < cdf_gap(narrow)  # ~40 levels: steps of one level's mass


# ------------------------------------------------------------------------------------------------
# geometric operations and Cutout


def test_rotate_geometry():
    img = _random_image(9, 9, seed=5)
    np.testing.assert_array_equal(R.rotate(img, 90), np.rot90(img, 1))  # counter-clockwise
    np.testing.assert_array_equal(R.rotate(img, -90), np.rot90(img, -1))
    np.testing.assert_array_equal(R.rotate(img, 180), img[::-1, ::-1])
    # A bright 3x3 blob 10 px right of the centre of a 31 px image turns 30 deg (M = 10) about it.
    blob = np.zeros((31, 31, 3), np.uint8)
    blob[14:17, 24:27] = 255
    for sign in (1, -1):
        out = _op("Rotate", blob, 10, sign)
        ys, xs = np.nonzero(out[..., 0] == 255)
        t = np.deg2rad(30 * sign)
        assert abs(ys.mean() - (15 - 10 * np.sin(t))) < 0.5 and abs(xs.mean() - (15 + 10 * np.cos(t))) < 0.5
    # Uncovered corners are filled with grey 128.
    corners = R.rotate(np.zeros((31, 31, 3), np.uint8), 45)
    assert (corners[0, 0] == 128).all() and (corners[15, 15] == 0).all()


def test_translate_moves_a_pattern_by_the_expected_pixels():
    img = np.zeros((32, 32, 3), np.uint8)
    img[:, 5] = 255  # a vertical line at x = 5
    img[20, :] = 200  # a horizontal line at y = 20
    assert R.op_parameter("TranslateX", 1) == 10  # 100 px at M = 10
    right = _op("TranslateX", img, 1)
    np.testing.assert_array_equal(right[:, 10:], img[:, :22])
    assert (right[:, :10] == 128).all()
    left = _op("TranslateX", img, 1, sign=-1)
    np.testing.assert_array_equal(left[:, :22], img[:, 10:])
    assert (left[:, 22:] == 128).all()
    down = _op("TranslateY", img, 0.5)  # 5 px
    np.testing.assert_array_equal(down[5:], img[:27])
    assert (down[:5] == 128).all()
    assert (_op("TranslateX", img, 10) == 128).all()  # 100 px absolute: everything leaves a 32 px image


def test_shear_moves_pixels_per_row():
    img = np.zeros((32, 32, 3), np.uint8)
    img[:, 20] = 255
    level = 0.5
    out = R.shear_x(img, level)
    for y in range(32):  # row y samples x + level*y (nearest): the line sits where that rounds to 20
        x_expected = [x for x in range(32) if np.floor(x + level * y + 0.5) == 20]
        np.testing.assert_array_equal(np.nonzero(out[y, :, 0] == 255)[0], x_expected)
    assert (out[31, 25:] == 128).all()  # sampled beyond the right edge
    np.testing.assert_array_equal(R.shear_y(img.transpose(1, 0, 2), level), out.transpose(1, 0, 2))
    s = R.op_parameter("ShearX", 10)
    assert s == pytest.approx(0.3)
    np.testing.assert_array_equal(_op("ShearX", img, 10, sign=-1), R.shear_x(img, -0.3))


def test_cutout_fills_a_square_of_the_expected_size():
    img = np.zeros((64, 64, 3), np.uint8)
    pad = R.op_parameter("Cutout", 1)  # int(40 * 0.1) = 4 -> an 8 x 8 square
    assert pad == 4
    interior = 0
    for seed in range(20):
        out = _op("Cutout", img, 1, rng=np.random.default_rng(seed))
        y0, y1, x0, x1 = R.cutout_box(64, 64, pad, np.random.default_rng(seed))
        filled = out[..., 0] == 128
        assert filled.sum() == (y1 - y0) * (x1 - x0) and filled[y0:y1, x0:x1].all()
        if y0 > 0 and y1 < 64 and x0 > 0 and x1 < 64:  # not clipped by an edge
            assert (y1 - y0, x1 - x0) == (8, 8)
            interior += 1
        else:
            assert 4 <= y1 - y0 <= 8 and 4 <= x1 - x0 <= 8
    assert interior >= 10
    with pytest.raises(ValueError, match="rng"):
        _op("Cutout", img, 1)


# ------------------------------------------------------------------------------------------------
# the policy: determinism, independence, validation


def test_randaugment_deterministic_per_seed_and_picklable():
    batch = np.stack([_random_image(16, 16, seed=s) for s in range(6)])
    ra = R.RandAugment(2, 9)
    a = ra.augment_batch(batch, (0, 0, 3))
    np.testing.assert_array_equal(a, ra.augment_batch(batch, (0, 0, 3)))
    np.testing.assert_array_equal(a, pickle.loads(pickle.dumps(ra)).augment_batch(batch, (0, 0, 3)))
    for key in ((1, 0, 3), (0, 1, 3), (0, 0, 4)):
        assert not np.array_equal(a, ra.augment_batch(batch, key))
    # Each example has its own stream: independent of the rest of the batch.
    np.testing.assert_array_equal(ra.augment_batch(batch[:2], (0, 0, 3)), a[:2])
    mask = np.array([True, False] * 3)
    masked = ra.augment_batch(batch, (0, 0, 3), mask)
    np.testing.assert_array_equal(masked[~mask], batch[~mask])
    np.testing.assert_array_equal(masked[mask], a[mask])
    assert a.dtype == np.uint8 and a.shape == batch.shape
    np.testing.assert_array_equal(R.RandAugment(0, 9).augment_batch(batch, (0, 0, 0)), batch)
    # Every op is reachable and gets used.
    rng = np.random.default_rng(0)
    names = {R.OPS[int(rng.integers(16))] for _ in range(400)}
    assert names == set(R.OPS)


def test_randaugment_validation():
    with pytest.raises(ValueError, match="magnitude"):
        R.RandAugment(2, 31)
    with pytest.raises(ValueError, match="num_layers"):
        R.RandAugment(-1, 5)
    with pytest.raises(ValueError, match="unknown"):
        R.RandAugment(2, 5, ops=("Rotate", "Blur"))
    with pytest.raises(ValueError, match="uint8"):
        R.RandAugment(1, 5)(np.zeros((4, 4, 3), np.float32), np.random.default_rng(0))
    with pytest.raises(ValueError, match="magnitude"):
        data.ClassificationTrain(8, randaugment_layers=2, randaugment_magnitude=-1)


# ------------------------------------------------------------------------------------------------
# the batch stage: mix on 0..255 floats, then RandAugment on uint8, then normalize


def _raw_batch(n=6, px=12):
    images = np.stack([_random_image(px, px, seed=10 + i) for i in range(n)])
    return {
        "image": images,
        "label": np.arange(n, dtype=np.int32) % 3,
        "mask": np.ones(n, bool),
        "_corrupt": np.zeros(n, np.int32),
    }


def test_finalize_order_mix_then_randaugment_then_normalize():
    batch = _raw_batch()
    # Mixing before normalizing equals the former normalize-then-mix (both are affine).
    mix = _FinalizeBatch(3, seed=7, shard_index=1, mixup_alpha=0.2, cutmix=True)
    out = mix.map_with_index(5, dict(batch))
    rng = np.random.default_rng([7, 1, 5])
    targets = T.one_hot(batch["label"], 3)
    old_images, old_targets = T.mix_batch(T.normalize(batch["image"]), targets, rng, mixup_alpha=0.2, cutmix=True)
    np.testing.assert_allclose(out["image"], old_images, atol=1e-5)
    np.testing.assert_array_equal(out["label_onehot"], old_targets)
    # With RandAugment: mixture -> rounded uint8 -> per-example RandAugment -> normalize.
    ra = R.RandAugment(3, 10)
    fin = _FinalizeBatch(3, seed=7, shard_index=1, mixup_alpha=0.2, cutmix=True, randaugment=ra)
    got = fin.map_with_index(5, dict(batch))
    mixed, mixed_t = T.mix_batch(
        batch["image"].astype(np.float32), targets, np.random.default_rng([7, 1, 5]), mixup_alpha=0.2, cutmix=True
    )
    expected = T.normalize(ra.augment_batch(np.clip(np.rint(mixed), 0, 255).astype(np.uint8), (7, 1, 5)))
    np.testing.assert_array_equal(got["image"], expected)
    np.testing.assert_array_equal(got["label_onehot"], mixed_t)  # RandAugment leaves the targets alone
    # Without mixing or RandAugment the uint8 batch is normalized as before; blank slots are 0.
    batch["mask"][-1] = False
    plain = _FinalizeBatch(3, seed=7, shard_index=1, mixup_alpha=0.0, cutmix=False).map_with_index(0, dict(batch))
    np.testing.assert_array_equal(plain["image"][:-1], T.normalize(batch["image"][:-1]))
    assert (plain["image"][-1] == 0).all()
    ra_only = _FinalizeBatch(3, 7, 1, 0.0, False, ra).map_with_index(0, dict(batch))
    assert (ra_only["image"][-1] == 0).all()


def test_device_normalized_batches_equal_host_normalized_ones():
    """keep_uint8 (ClassificationTrain's default) hands the uint8 batch to the step, whose
    `model_images` normalizes it on the device: the same model input as the host's `normalize`.
    A float mixture (MixUp/CutMix without RandAugment) is still normalized on the host."""
    import jax.numpy as jnp

    from nf.tasks.base import model_images

    batch, ra = _raw_batch(), R.RandAugment(2, 9)
    for mix, aug in ((0.0, None), (0.2, ra), (0.0, ra)):
        host = _FinalizeBatch(3, 7, 1, mix, mix > 0, aug).map_with_index(4, dict(batch))
        device = _FinalizeBatch(3, 7, 1, mix, mix > 0, aug, keep_uint8=True).map_with_index(4, dict(batch))
        assert device["image"].dtype == np.uint8 and host["image"].dtype == np.float32
        np.testing.assert_array_equal(T.normalize(device["image"]), host["image"])
        on_device = np.asarray(model_images({"image": jnp.asarray(device["image"])}))
        np.testing.assert_allclose(on_device, host["image"], rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(device["label_onehot"], host["label_onehot"])
    mixture = _FinalizeBatch(3, 7, 1, 0.2, True, None, keep_uint8=True).map_with_index(4, dict(batch))
    assert mixture["image"].dtype == np.float32  # not rounded: normalized on the host as before
    floats = mixture["image"]
    assert model_images({"image": floats}) is floats  # float batches pass through untouched
    with pytest.raises(ValueError, match="device_normalize=False"):
        data.ClassificationTrain(8, mean=(0.0, 0.0, 0.0))
    assert (
        data.ClassificationTrain(8, mean=(0.0, 0.0, 0.0), device_normalize=False)
        .batch_map(_Classes(), data.LoaderSettings(batch_size=2, seed=0))
        .map_with_index(0, dict(batch))["image"]
        .dtype
        == np.float32
    )


class _Classes:
    num_classes = 3


# ------------------------------------------------------------------------------------------------
# pipeline integration on a tiny generated image folder

_FOLDER: dict[str, Path] = {}


def _folder_source_cached():
    if "root" not in _FOLDER:
        import tempfile

        root = Path(tempfile.mkdtemp(prefix="nf_ra_")) / "train"
        rng = np.random.default_rng(0)
        for c in range(3):
            (root / f"class_{c}").mkdir(parents=True)
            for i in range(8):
                img = np.full((14, 14, 3), 40 * c, np.uint8)
                img[3:11, 4 + c : 8 + c] = rng.integers(150, 255, 3, dtype=np.uint8)  # a digit-like bar
                Image.fromarray(img).save(root / f"class_{c}" / f"{i}.png")
        _FOLDER["root"] = root
    return data.ImageFolderSource(_FOLDER["root"])


def _batches(n=2, **kw):
    kw = {
        "train": True,
        "batch_size": 8,
        "image_size": 12,
        "seed": 3,
        "mixup_alpha": 0.2,
        "cutmix": True,
        "randaugment_layers": 2,
        "randaugment_magnitude": 9,
        **kw,
    }
    it = classification_pipeline(_folder_source_cached(), **kw)
    try:
        return [next(it) for _ in range(n)]
    finally:
        it.close()


def _assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_pipeline_randaugment_deterministic_and_worker_independent():
    a = _batches()
    _assert_same(a, _batches())
    assert a[0]["image"].shape == (8, 12, 12, 3) and a[0]["image"].dtype == np.uint8  # normalized on the device
    off = _batches(randaugment_layers=0)
    for x, y in zip(a, off, strict=True):  # same examples and mixing, other pixels
        np.testing.assert_array_equal(x["label"], y["label"])
        np.testing.assert_array_equal(x["label_onehot"], y["label_onehot"])
        assert not np.array_equal(x["image"], y["image"])
    assert not np.array_equal(a[0]["image"], _batches(seed=4)[0]["image"])
    _assert_same(a, _batches(worker_count=2))
