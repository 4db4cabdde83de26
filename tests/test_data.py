"""Input pipeline on real files: image folders, ArrayRecord shards, grain workers, orbax state."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags
from conftest import classification_pipeline, console_script
from PIL import Image

from nf import data
from nf.data import transforms as T
from nf.data.sources import DataSourceError

REPO = Path(__file__).resolve().parents[1]


def _next(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


class IndexSource:
    """In-memory source: example i is a tiny image whose label is i (so batches name examples)."""

    def __init__(self, n: int):
        rng = np.random.default_rng(0)
        self.images = [_png(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)) for _ in range(n)]
        self.num_classes = n

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i], "label": int(i), "path": f"mem/{i}"}


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory) -> Path:
    return data.prepare_digits(tmp_path_factory.mktemp("data") / "digits")


@pytest.fixture(scope="module")
def digits_train(digits_dir):
    return data.ImageFolderSource(digits_dir / "train")


@pytest.fixture(autouse=True)
def _absl_flags_parsed():
    # grain's spawned workers read absl flags (jax 0.10.2); programs get this from app.run.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def _train(source, **kw):
    kw = {"train": True, "batch_size": 16, "image_size": 16, "seed": 0, **kw}
    return classification_pipeline(source, **kw)


# ------------------------------------------------------------------------------------------------
# digits + sources


def test_prepare_digits_split_and_idempotent(digits_dir):
    train = data.ImageFolderSource(digits_dir / "train")
    test = data.ImageFolderSource(digits_dir / "test")
    assert (len(train), len(test)) == (1497, 300)
    assert train.classes == test.classes == [str(c) for c in range(10)]
    assert np.bincount(test.labels).tolist() == [30] * 10
    train_ids = {Path(train.relpath(i)).name for i in range(len(train))}
    test_ids = {Path(test.relpath(i)).name for i in range(len(test))}
    assert not train_ids & test_ids and len(train_ids | test_ids) == 1797
    img = Image.open(io.BytesIO(train[0]["image"]))
    assert img.size == (8, 8) and img.mode == "L"
    marker = digits_dir / ".complete"
    stamp = marker.stat().st_mtime_ns
    assert data.prepare_digits(digits_dir) == digits_dir
    assert marker.stat().st_mtime_ns == stamp  # second call did nothing
    assert json.loads(marker.read_text())["split"]["train"] == 1497


def test_prepare_digits_never_overwrites_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not written by prepare_digits"):
        data.prepare_digits(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_prepare_digits_from_racing_processes_writes_one_identical_folder(digits_dir, tmp_path):
    """Trainer processes that start together (one per host, or concurrent runs) all prepare the
    same folder: each succeeds, the folder is byte-identical to a lone run's (markers aside:
    they hold no time), and no temporary folder is left."""
    out = tmp_path / "digits"
    code = f"from nf import data; data.prepare_digits({str(out)!r})"
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    assert _tree(out) == _tree(digits_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]


def test_missing_and_empty_directories(tmp_path):
    with pytest.raises(DataSourceError, match=r"does not exist.*one sub-folder per class") as e:
        data.ImageFolderSource(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="has no class sub-folders") as e:
        data.ImageFolderSource(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(e.value)
    for c in ("a", "b"):
        (tmp_path / "noimg" / c).mkdir(parents=True)
    (tmp_path / "noimg" / "a" / "notes.txt").write_text("x")
    with pytest.raises(DataSourceError, match="2 class sub-folders but no image files") as e:
        data.ImageFolderSource(tmp_path / "noimg")
    assert str(tmp_path / "noimg") in str(e.value)
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "x.jpg")
    with pytest.raises(DataSourceError, match="move them into class sub-folders"):
        data.ImageFolderSource(tmp_path / "flat")
    with pytest.raises(DataSourceError, match=r"does not exist.*nf-make-arrayrecord"):
        data.ArrayRecordImageSource(tmp_path / "nope")
    with pytest.raises(DataSourceError, match=r"metadata\.json"):
        data.ArrayRecordImageSource(tmp_path / "empty")


@pytest.fixture(scope="module")
def digits_arrayrecord(digits_dir, tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("ar") / "train"
    subprocess.run(
        [
            *console_script("nf-make-arrayrecord"),
            f"--src={digits_dir / 'train'}",
            f"--dst={dst}",
            "--num_shards=3",
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    return dst


def test_arrayrecord_roundtrip_equals_folder(digits_arrayrecord, digits_train):
    dst = digits_arrayrecord
    assert len(list(dst.glob("images.array_record-*-of-00003"))) == 3
    ar = data.open_source(dst)
    assert isinstance(ar, data.ArrayRecordImageSource)
    assert len(ar) == len(digits_train) and ar.classes == digits_train.classes
    for i in range(len(ar)):
        a, f = ar[i], digits_train[i]
        assert a["image"] == f["image"] and a["label"] == f["label"]
        assert a["path"].endswith(digits_train.relpath(i))
    kw = {"batch_size": 32, "image_size": 16, "seed": 3, "mixup_alpha": 0.2, "cutmix": True}
    _assert_batches_equal(_next(_train(ar, **kw), 3), _next(_train(digits_train, **kw), 3))
    record = {"image": b"xyz", "label": 7, "path": "c/ü.png"}
    assert data.decode_record(data.encode_record(**record)) == record


# ------------------------------------------------------------------------------------------------
# determinism, sharding, workers, checkpoints


def test_same_seed_same_batches_other_seed_differs(digits_train):
    a, b, c = (_next(_train(digits_train, seed=s), 3) for s in (0, 0, 1))
    _assert_batches_equal(a, b)
    assert not np.array_equal(a[0]["label"], c[0]["label"])
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    batch = a[0]
    # Training batches are raw uint8 pixels; the step normalizes them on the device.
    assert batch["image"].shape == (16, 16, 16, 3) and batch["image"].dtype == np.uint8
    assert batch["label"].dtype == np.int32 and batch["mask"].all()
    np.testing.assert_array_equal(batch["label_onehot"].argmax(1), batch["label"])
    # Successive epochs are shuffled differently but each covers the set.
    src = IndexSource(24)
    it = _train(src, batch_size=8, num_epochs=2, hflip=False)
    epochs = [np.concatenate([next(it)["label"] for _ in range(3)]) for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(24))
    assert not np.array_equal(epochs[0], epochs[1])
    with pytest.raises(StopIteration):
        next(it)


def test_shards_disjoint_and_covering():
    n, count = 50, 3
    src = IndexSource(n)
    per_shard = []
    for i in range(count):
        it = _train(src, batch_size=4, num_epochs=1, shard_index=i, shard_count=count, drop_remainder=False)
        per_shard.append(np.concatenate([b["label"] for b in it]))
    sizes = [len(s) for s in per_shard]
    assert sizes == [n // count] * count  # equal shares, so every process runs the same steps
    union = np.concatenate(per_shard)
    assert len(set(union.tolist())) == len(union)  # disjoint
    assert set(union.tolist()) <= set(range(n))
    # Infinite training: each epoch's n examples are spread over the processes without overlap.
    labels = [
        np.concatenate([b["label"] for b in _next(_train(src, batch_size=5, shard_index=i, shard_count=2), 5)])
        for i in range(2)
    ]
    first_epoch = np.concatenate([lab[:25] for lab in labels])
    assert sorted(first_epoch.tolist()) == list(range(n))


def test_eval_covers_each_example_exactly_once_with_mask():
    n, count, bs = 23, 3, 4
    src = IndexSource(n)
    seen, num_batches = [], set()
    for i in range(count):
        it = classification_pipeline(src, train=False, batch_size=bs, image_size=8, shard_index=i, shard_count=count)
        batches = list(it)
        num_batches.add(len(batches))
        assert len(it) == len(batches)
        for b in batches:
            assert b["image"].shape == (bs, 8, 8, 3)
            seen.extend(b["label"][b["mask"]].tolist())
            assert (b["label_onehot"][~b["mask"]] == 0).all() and (b["image"][~b["mask"]] == 0).all()
            np.testing.assert_array_equal(b["label_onehot"].sum(1), b["mask"])
    assert num_batches == {2}  # ceil(ceil(23/3)/4): the same on every process
    assert sorted(seen) == list(range(n))
    # Eval order is deterministic and unshuffled.
    it = classification_pipeline(src, train=False, batch_size=bs, image_size=8)
    assert next(it)["label"].tolist() == [0, 1, 2, 3]


def test_workers_give_the_same_batches(digits_train):
    kw = {"batch_size": 32, "image_size": 16, "seed": 5, "cutmix": True, "mixup_alpha": 0.2}
    expected = _next(_train(digits_train, **kw), 5)
    it = _train(digits_train, worker_count=2, **kw)
    try:
        _assert_batches_equal(_next(it, 5), expected)
    finally:
        it.close()


def test_checkpoint_restore_with_grain_orbax_handler(digits_arrayrecord, tmp_path):
    # ArrayRecord source in grain workers; restored into an in-process pipeline.
    source = data.ArrayRecordImageSource(digits_arrayrecord)
    kw = {"batch_size": 32, "image_size": 16, "seed": 7}
    it = _train(source, worker_count=2, **kw)
    mngr = ocp.CheckpointManager(tmp_path / "ckpt")
    try:
        _next(it, 3)
        mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
        expected = _next(it, 3)
    finally:
        it.close()
    saved = json.loads(next((tmp_path / "ckpt" / "3" / "data").glob("process_0-of-1.json")).read_text())
    assert saved["next_batch"] == 3
    # Restore into a fresh pipeline with a different worker count: same next batches.
    it2 = _train(source, worker_count=0, **kw)
    restored = mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(it2)))
    _assert_batches_equal(_next(restored["data"], 3), expected)
    mngr.close()
    # A checkpoint from another pipeline is refused instead of silently changing the data.
    other = _train(source, batch_size=16, image_size=16, seed=7)
    with pytest.raises(ValueError, match="batch_size: checkpoint 32 vs now 16"):
        other.set_state(saved)


# ------------------------------------------------------------------------------------------------
# transforms


def test_inception_crop_box_ranges_and_fallback():
    rng = np.random.default_rng(0)
    boxes = [T.inception_crop_box(200, 120, rng) for _ in range(500)]
    for left, top, right, bottom in boxes:
        w, h = right - left, bottom - top
        assert 0 <= left < right <= 200 and 0 <= top < bottom <= 120
        if (w, h) != (120, 120) or (left, top) != (40, 0):  # not the fallback
            assert 0.075 <= w * h / (200 * 120) <= 1.0
            assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    areas = [(x1 - x0) * (y1 - y0) / (200 * 120) for x0, y0, x1, y1 in boxes]
    assert min(areas) < 0.2 and max(areas) > 0.7  # the whole area range is used
    # A 1000x10 strip admits no box with aspect <= 4/3 and area >= 8%: centre crop fallback.
    fallback = T.inception_crop_box(1000, 10, rng, fallback_fraction=0.5)
    assert fallback == T.center_crop_box(1000, 10, 0.5) == (498, 3, 503, 8)
    assert T.center_crop_box(100, 60, 32 / 64) == (35, 15, 65, 45)


def test_train_transform_crop_and_flip_on_structured_image():
    # Red = 4 * column, green = 4 * row: every output pixel says where it came from.
    x, y = np.meshgrid(np.arange(64), np.arange(64))
    img = np.stack([x * 4, y * 4, np.full_like(x, 128)], -1).astype(np.uint8)
    record = {"image": _png(img), "label": 3, "path": "grid.png"}
    full = T.TrainTransform(32, area_range=(1, 1), aspect_range=(1, 1))
    outs = [full.random_map(record, np.random.default_rng(s)) for s in range(12)]
    resized = np.asarray(Image.fromarray(img).resize((32, 32), Image.Resampling.BICUBIC))
    flipped = [not np.array_equal(o["image"], resized) for o in outs]
    for o, f in zip(outs, flipped, strict=True):
        assert o["image"].shape == (32, 32, 3) and o["image"].dtype == np.uint8 and o["label"] == 3 and o["mask"]
        np.testing.assert_array_equal(o["image"], resized[:, ::-1] if f else resized)
        red = o["image"][:, :, 0].astype(float)
        assert (red[:, 0].mean() > red[:, -1].mean()) == f  # flip reverses the column gradient
    assert 0 < sum(flipped) < len(flipped)
    # Inception crops: the red/green ranges inside the output match a sub-window of the image.
    crop = T.TrainTransform(24, hflip=False)
    for s in range(20):
        o = crop.random_map(record, np.random.default_rng(s))["image"].astype(float)
        box = T.inception_crop_box(64, 64, np.random.default_rng(s), fallback_fraction=24 / 56)
        assert o.shape == (24, 24, 3)
        assert abs(o[:, :, 0].mean() / 4 - ((box[0] + box[2]) / 2 - 0.5)) < 2.0  # centre column
        assert abs(o[:, :, 1].mean() / 4 - ((box[1] + box[3]) / 2 - 0.5)) < 2.0  # centre row


def test_fast_jpeg_decode_matches_full_decode():
    x, y = np.meshgrid(np.arange(640), np.arange(480))
    img = np.stack([x * 255 // 640, y * 255 // 480, (x + y) * 255 // 1120], -1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    record = {"image": buf.getvalue(), "label": 0, "path": "g.jpg"}
    for fast, full in [
        (T.TrainTransform(32, fast_jpeg=True), T.TrainTransform(32, fast_jpeg=False)),
        (T.EvalTransform(32, eval_crop="resize_crop"), T.EvalTransform(32, eval_crop="resize_crop", fast_jpeg=False)),
    ]:
        for s in range(3):
            if isinstance(fast, T.TrainTransform):
                a = fast.random_map(record, np.random.default_rng(s))["image"]
                b = full.random_map(record, np.random.default_rng(s))["image"]
            else:
                a, b = fast.map(record)["image"], full.map(record)["image"]
            assert np.abs(a.astype(float) - b.astype(float)).mean() < 1.0  # of 255 levels


def test_eval_transforms_and_grayscale():
    gray = np.tile(np.arange(0, 250, 2, dtype=np.uint8)[None, :], (80, 1))  # 80 x 125, 'L'
    record = {"image": _png(gray), "label": 1, "path": "g.png"}
    for crop in ("center_crop", "resize_crop"):
        out = T.EvalTransform(32, eval_crop=crop).map(record)["image"]
        assert out.shape == (32, 32, 3) and (out[..., 0] == out[..., 1]).all()  # gray -> RGB
    center = T.EvalTransform(32, eval_crop="center_crop").map(record)["image"]
    # Square crop of 32/64 of the short side (40 px) around the centre column 62.
    assert abs(center[..., 0].mean() / 2 - 62) < 2
    with pytest.raises(ValueError, match="eval_crop"):
        T.EvalTransform(32, eval_crop="nope")


def test_mixup_cutmix_label_mass_matches_mixed_area():
    n, h, c = 8, 16, 8
    images = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, h, h, 3)).copy()
    targets = T.one_hot(np.arange(n), c)
    mixed, mixed_t = T.mix_batch(images, targets, np.random.default_rng(0), mixup_alpha=0.2, cutmix=True)
    np.testing.assert_allclose(mixed_t.sum(1), 1.0, rtol=1e-6)
    assert (images == np.arange(n)[:, None, None, None]).all()  # inputs untouched
    for k in range(n // 2):  # MixUp half: pixel = r*k + (1-r)*partner, label weight r on class k
        partner = n // 2 - 1 - k
        r = mixed_t[k, k] if partner != k else 1.0
        np.testing.assert_allclose(mixed[k], r * k + (1 - r) * partner, rtol=1e-5, atol=1e-5)
    for k in range(n // 2, n):  # CutMix half: the partner's pixel fraction is its label weight
        partner = n - 1 - (k - n // 2)
        frac = (mixed[k] == partner).mean()
        np.testing.assert_allclose(mixed_t[k, partner], frac, atol=1e-6)
        np.testing.assert_allclose(mixed_t[k, k], 1 - frac, atol=1e-6)
    # In the pipeline: per-step randomness from (seed, step), labels stay the primary class.
    src = IndexSource(40)
    b = next(_train(src, batch_size=16, mixup_alpha=0.2, cutmix=True))
    np.testing.assert_allclose(b["label_onehot"].sum(1), 1.0, rtol=1e-6)
    # Each row mixes its own example (whose class `label` still names) with its partner in the
    # reversed half-batch (MixUp first half, CutMix second): all its mass is on those two classes.
    labels, onehot = b["label"], b["label_onehot"]
    assert len(set(labels.tolist())) == 16  # examples i of IndexSource have class i: all distinct
    partner = np.concatenate([np.arange(8)[::-1], 8 + np.arange(8)[::-1]])
    pair_mass = onehot[np.arange(16), labels] + onehot[np.arange(16), labels[partner]]
    np.testing.assert_allclose(pair_mass, 1.0, rtol=1e-6)
    assert (onehot[np.arange(16), labels] > 0).all()  # the named class is in its own mixture
    assert (onehot > 0).sum() > 16  # something was mixed


# ------------------------------------------------------------------------------------------------
# corrupt files


@pytest.fixture
def corrupt_folder(tmp_path) -> Path:
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(5):
            arr = rng.integers(0, 255, (20 + i, 30, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.jpg" if i % 2 else root / c / f"{i}.png")
    (root / "dog" / "broken.jpg").write_bytes(b"this is not a jpeg")
    good = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, format="JPEG")
    (root / "cat" / "truncated.jpg").write_bytes(good.getvalue()[:300])
    return root


def test_corrupt_images_skip_warns_and_counts(corrupt_folder, caplog):
    src = data.ImageFolderSource(corrupt_folder)
    assert len(src) == 12
    caplog.set_level(logging.WARNING)
    it = _train(src, batch_size=4, num_epochs=1, on_corrupt="skip")
    batches = list(it)
    assert len(batches) == 3 and all(b["mask"].all() for b in batches)  # replaced, shape kept
    assert it.num_skipped == 2
    assert "broken.jpg" in caplog.text and "truncated.jpg" in caplog.text
    assert it.get_state()["num_skipped"] == 2
    caplog.clear()
    ev = classification_pipeline(src, train=False, batch_size=5, image_size=16, on_corrupt="skip")
    masks = np.concatenate([b["mask"] for b in ev])
    assert masks.sum() == 10 and len(masks) == 15 and ev.num_skipped == 2
    assert "broken.jpg" in caplog.text


def test_corrupt_images_error_names_the_file(corrupt_folder):
    src = data.ImageFolderSource(corrupt_folder)
    ev = classification_pipeline(src, train=False, batch_size=4, image_size=16, on_corrupt="error")
    with pytest.raises(data.CorruptImageError, match=r"truncated\.jpg.*on_corrupt='skip'"):
        list(ev)
    with pytest.raises(ValueError, match="on_corrupt"):
        classification_pipeline(src, train=False, batch_size=4, image_size=16, on_corrupt="ignore")
