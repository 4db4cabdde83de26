"""Segmentation and depth inputs on real files in the real formats: VOC folders with palette PNG
masks, the NYU labeled HDF5 .mat (transposed layout), RGB + 16-bit depth PNG pairs, digit scenes."""

from __future__ import annotations

import colorsys
import io
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
from absl import flags
from conftest import depth_pipeline, segmentation_pipeline
from PIL import Image

from nf import data
from nf.data import depth as depth_lib
from nf.data import scenes
from nf.data import transforms as T
from nf.data.sources import DataSourceError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _absl_flags_parsed():
    if not flags.FLAGS.is_parsed():  # grain's spawned workers read absl flags (jax 0.10.2)
        flags.FLAGS.mark_as_parsed()


def _palette_png(label: np.ndarray, path: Path) -> None:
    """A palette ("P") PNG written with PIL directly, independent of nf's writer."""
    img = Image.new("P", (label.shape[1], label.shape[0]))
    img.putdata(label.ravel().tolist())
    img.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    img.save(path)


def _depth_png(mm: np.ndarray, path: Path) -> None:
    img = Image.fromarray(mm.astype(np.uint16))
    assert img.mode == "I;16"
    img.save(path)


def _batches(it, n):
    return [next(it) for _ in range(n)]


def _assert_equal(a, b):
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ------------------------------------------------------------------------------------------------
# Pascal VOC


def _make_voc(root: Path, shapes, num_classes=21, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    labels = {}
    for i, (h, w) in enumerate(shapes):
        name = f"2007_{i:06d}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        label = rng.integers(0, num_classes, (h, w)).astype(np.uint8)
        label[:2] = 255  # a void border, as in VOC
        _palette_png(label, root / "SegmentationClass" / f"{name}.png")
        labels[name] = label
    (root / "ImageSets/Segmentation/train.txt").write_text("\n".join(labels) + "\n")
    return labels


def test_voc_source_reads_palette_masks_and_eval_centre_crop(tmp_path):
    labels = _make_voc(tmp_path, [(20, 30), (40, 16)])
    source = data.VOCSource(tmp_path, "train")
    assert len(source) == 2 and source.num_classes == 21
    assert Image.open(source[0]["label_path"]).mode == "P"
    it = segmentation_pipeline(source, train=False, batch_size=4, crop_size=(24, 24))
    (batch,) = list(it)
    assert batch["image"].shape == (4, 24, 24, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4, 24, 24) and batch["label"].dtype == np.int32
    assert batch["mask"].tolist() == [True, True, False, False]
    for k, (name, label) in enumerate(labels.items()):
        rgb = np.asarray(Image.open(tmp_path / "JPEGImages" / f"{name}.jpg").convert("RGB"))
        # Reference centre crop / even padding to 24x24, by explicit index arithmetic.
        h, w = label.shape
        exp_label = np.full((24, 24), 255, np.int32)
        exp_image = np.zeros((24, 24, 3), np.float32)
        for y in range(24):
            for x in range(24):
                sy = y - (24 - h) // 2 if h < 24 else y + (h - 24) // 2
                sx = x - (24 - w) // 2 if w < 24 else x + (w - 24) // 2
                if 0 <= sy < h and 0 <= sx < w:
                    exp_label[y, x] = label[sy, sx]
                    exp_image[y, x] = (rgb[sy, sx] - T.MEAN_RGB) / T.STDDEV_RGB
        np.testing.assert_array_equal(batch["label"][k], exp_label)
        np.testing.assert_allclose(batch["image"][k], exp_image, atol=1e-5)
    # A pixel's class, read back exactly: image 0 is 20x30, so crop row 0 is its row 0 (+2 pad rows).
    assert batch["label"][0, 2 + 5, 7] == labels["2007_000000"][5, 7 + 3]
    # Padding slots of the last batch: blank image, all-ignore label.
    assert (batch["label"][2:] == 255).all() and (batch["image"][2:] == 0).all()
    # Eval is deterministic.
    _assert_equal([batch], list(segmentation_pipeline(source, train=False, batch_size=4, crop_size=24)))


def test_voc_bad_inputs_name_the_files(tmp_path):
    labels = _make_voc(tmp_path, [(8, 8), (8, 8)], num_classes=5)
    (tmp_path / "JPEGImages" / "2007_000001.jpg").unlink()
    with pytest.raises(DataSourceError) as e:
        data.VOCSource(tmp_path, "train", num_classes=5)
    msg = str(e.value)
    assert "train.txt" in msg and "'2007_000001'" in msg and str(tmp_path / "JPEGImages" / "2007_000001.jpg") in msg
    with pytest.raises(DataSourceError, match="does not exist"):
        data.VOCSource(tmp_path, "val")
    # A mask value outside [0, num_classes) other than 255.
    (tmp_path / "ImageSets/Segmentation/one.txt").write_text("2007_000000\n")
    bad = labels["2007_000000"].copy()
    bad[3, 3], bad[4, 4] = 7, 30
    _palette_png(bad, tmp_path / "SegmentationClass" / "2007_000000.png")
    source = data.VOCSource(tmp_path, "one", num_classes=5)
    for train in (True, False):
        it = segmentation_pipeline(source, train=train, batch_size=1, crop_size=8)
        with pytest.raises(data.AnnotationError) as e:
            next(it)
        assert "2007_000000.png" in str(e.value) and "[7, 30]" in str(e.value)
    # An RGB-colour mask (not class indices) is refused with its mode.
    Image.new("RGB", (8, 8)).save(tmp_path / "SegmentationClass" / "2007_000000.png")
    with pytest.raises(data.AnnotationError, match=r"2007_000000\.png has PIL mode 'RGB'"):
        next(segmentation_pipeline(source, train=False, batch_size=1, crop_size=8))


# ------------------------------------------------------------------------------------------------
# segmentation transforms


def _structured_record(h=40, w=48):
    """Label = column block index (0..11, 4 px wide); image red channel = 20 * label: moving
    together is checkable pixel by pixel, a flip reverses the label order along x."""
    label = np.repeat(np.arange(w // 4, dtype=np.uint8), 4)[None].repeat(h, 0)
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = 20 * label
    image[..., 1] = np.arange(h, dtype=np.uint8)[:, None] * 5  # rows, to see vertical offsets
    return {"image": image, "label": label, "path": "mem.png", "label_path": "mem_mask.png"}


def _red(image: np.ndarray) -> np.ndarray:
    return np.rint(T.denormalize(image)[..., 0]).astype(np.int64)


def test_segmentation_train_flip_crop_pad_move_image_and_label_together():
    record = _structured_record()
    transform = data.segmentation.SegmentationTrainTransform((32, 56), 12, scale_range=(1.0, 1.0))
    flips = set()
    for seed in range(12):
        out = transform.random_map(record, np.random.default_rng(seed))
        image, label = out["image"], out["label"]
        assert image.shape == (32, 56, 3) and label.shape == (32, 56) and out["mask"]
        valid = label != 255
        # Crop 56 wider than 48: exactly 8 padded columns on the right, image 0 there.
        assert valid.all(0).sum() == 48 and (~valid[:, 48:]).all()
        assert (image[~valid] == 0).all()
        np.testing.assert_array_equal(_red(image)[valid], 20 * label[valid])
        row = label[0, :48]
        assert (np.diff(row.astype(int)) >= 0).all() or (np.diff(row.astype(int)) <= 0).all()
        flips.add(bool(row[0] > row[-1]))
    assert flips == {True, False}


def test_segmentation_scale_range_and_nearest_labels():
    record = _structured_record(40, 40)
    transform = data.segmentation.SegmentationTrainTransform(100, 12, hflip=False)
    scales = []
    for seed in range(40):
        out = transform.random_map(record, np.random.default_rng(seed))
        valid = out["label"] != 255
        rows, cols = valid.any(1).sum(), valid.any(0).sum()
        assert rows == cols  # aspect kept
        scales.append(rows / 40)
        assert set(np.unique(out["label"][valid])) <= set(range(12))  # nearest: no blended classes
        # The crop of a padded (bottom/right) image starts at 0, so the content sits top-left.
        assert valid[:rows, :cols].all()
    assert 0.5 - 1 / 80 <= min(scales) < 0.8 and 1.6 < max(scales) <= 2.0 + 1 / 80
    # scale 0.5 exactly: 20x20 content; scale 2.0 with a small crop: no padding at all.
    half = data.segmentation.SegmentationTrainTransform(32, 12, scale_range=(0.5, 0.5), hflip=False)
    out = half.random_map(record, np.random.default_rng(0))
    assert (out["label"] != 255).sum() == 400
    double = data.segmentation.SegmentationTrainTransform(32, 12, scale_range=(2.0, 2.0))
    assert (double.random_map(record, np.random.default_rng(0))["label"] != 255).all()


# ------------------------------------------------------------------------------------------------
# NYU: labeled .mat and PNG pairs


def _make_mat(path: Path, n=6, h=12, w=16, seed=0):
    """An HDF5 file with the labeled-NYU layout: images (N, 3, W, H), depths (N, W, H)."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 10.0, (n, h, w)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["images"] = rgb.transpose(0, 3, 2, 1)
        f["depths"] = depth.transpose(0, 2, 1)
        f["labels"] = np.zeros((n, w, h), np.uint16)
    return rgb, depth


def test_nyu_mat_source_transposes_to_hwc_and_splits(tmp_path):
    path = tmp_path / "nyu_depth_v2_labeled.mat"
    rgb, depth = _make_mat(path)
    with h5py.File(path, "r") as f:
        assert f["images"].shape == (6, 3, 16, 12) and f["depths"].shape == (6, 16, 12)
        raw_pixel, raw_depth = f["images"][2, 1, 9, 4], f["depths"][2, 9, 4]  # [n, c, x, y]
    source = data.NYUMatSource(path, "all")
    assert len(source) == 6
    rec = source[2]
    assert rec["image"].shape == (12, 16, 3) and rec["image"].dtype == np.uint8
    assert rec["image"][4, 9, 1] == raw_pixel and rec["depth"][4, 9] == raw_depth  # [y, x, c]
    np.testing.assert_array_equal(rec["image"], rgb[2])
    np.testing.assert_array_equal(rec["depth"], depth[2])
    # The official splits.mat (MATLAB v5, 1-based column vectors), found next to the .mat file.
    scipy.io.savemat(tmp_path / "splits.mat", {"trainNdxs": np.array([[1], [3], [4]]), "testNdxs": [[2], [6]]})
    train = data.open_nyu(path, "train")
    assert isinstance(train, data.NYUMatSource) and train.indices.tolist() == [0, 2, 3]
    np.testing.assert_array_equal(data.open_nyu(path, "test")[1]["depth"], depth[5])
    # A text split file of 1-based indices, and explicit 0-based indices.
    (tmp_path / "test.txt").write_text("5\n6\n")
    assert data.NYUMatSource(path, "test", split_file=tmp_path / "test.txt").indices.tolist() == [4, 5]
    assert data.NYUMatSource(path, indices=[1]).indices.tolist() == [1]
    (tmp_path / "zero.txt").write_text("0 1\n")
    with pytest.raises(DataSourceError, match=r"zero\.txt.*1-based"):
        data.NYUMatSource(path, "train", split_file=tmp_path / "zero.txt")
    with pytest.raises(DataSourceError, match="does not exist"):
        data.NYUMatSource(path, "train", split_file=tmp_path / "nope.mat")


def _make_pairs(root: Path, n=5, h=12, w=16, seed=0):
    rng = np.random.default_rng(seed)
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    rgbs, mms = [], []
    for i in range(n):
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mm = rng.integers(0, 10_000, (h, w)).astype(np.uint16)
        mm[0, 0] = 0  # invalid
        mm[0, 1] = 65535
        Image.fromarray(rgb).save(root / "rgb" / f"{i}.png")
        _depth_png(mm, root / "depth" / f"{i}.png")
        rgbs.append(rgb)
        mms.append(mm)
    (root / "train.txt").write_text("".join(f"rgb/{i}.png depth/{i}.png\n" for i in range(n)))
    return rgbs, mms


def test_nyu_png_pairs_read_millimetres_as_metres(tmp_path):
    rgbs, mms = _make_pairs(tmp_path / "nyu")
    source = data.open_nyu(tmp_path / "nyu", "train")  # a folder: <split>.txt
    assert isinstance(source, data.NYUPairSource) and len(source) == 5
    # CSV with a header and an absolute path is the same source.
    lines = ["rgb,depth"] + [f"rgb/{i}.png,{tmp_path / 'nyu' / 'depth' / f'{i}.png'}" for i in range(5)]
    (tmp_path / "nyu" / "list.csv").write_text("\n".join(lines))
    csv = data.open_nyu(tmp_path / "nyu" / "list.csv")
    assert len(csv) == 5 and csv[3]["depth_path"] == source[3]["depth_path"]
    it = depth_pipeline(source, train=False, batch_size=2, image_size=(12, 16), resize_to=None)
    batches = list(it)
    assert len(batches) == 3 and batches[-1]["mask"].tolist() == [True, False]
    depth = np.concatenate([b["depth"] for b in batches])[:5]
    image = np.concatenate([b["image"] for b in batches])[:5]
    assert depth.dtype == np.float32 and depth.shape == (5, 12, 16)
    np.testing.assert_array_equal(depth, np.stack(mms).astype(np.float32) / np.float32(1000))
    assert depth[2, 0, 0] == 0 and depth[2, 0, 1] == np.float32(65.535)
    np.testing.assert_allclose(image, (np.stack(rgbs) - T.MEAN_RGB) / T.STDDEV_RGB, atol=1e-5)
    assert (batches[-1]["depth"][1] == 0).all() and (batches[-1]["image"][1] == 0).all()


def test_nyu_bad_inputs_name_the_files(tmp_path):
    _make_pairs(tmp_path / "nyu", n=2)
    Image.fromarray(np.full((12, 16), 7, np.uint8)).save(tmp_path / "nyu" / "depth" / "1.png")  # 8-bit
    source = data.open_nyu(tmp_path / "nyu" / "train.txt")
    for train in (True, False):
        it = depth_pipeline(source, train=train, batch_size=2, image_size=8, resize_to=None)
        with pytest.raises(data.AnnotationError) as e:
            next(it)
        assert str(tmp_path / "nyu" / "depth" / "1.png") in str(e.value) and "mode 'L'" in str(e.value)
    (tmp_path / "nyu" / "rgb" / "1.png").unlink()
    with pytest.raises(DataSourceError) as e:
        data.open_nyu(tmp_path / "nyu" / "train.txt")
    assert "train.txt" in str(e.value) and str(tmp_path / "nyu" / "rgb" / "1.png") in str(e.value)
    (tmp_path / "x.mat").write_text("not hdf5")
    with pytest.raises(DataSourceError, match="not an HDF5"):
        data.open_nyu(tmp_path / "x.mat", "all")
    with h5py.File(tmp_path / "y.mat", "w") as f:
        f["images"] = np.zeros((2, 3, 4, 4), np.uint8)
    with pytest.raises(DataSourceError, match=r"no dataset\(s\) \['depths'\]"):
        data.open_nyu(tmp_path / "y.mat", "all")


# ------------------------------------------------------------------------------------------------
# depth transforms


def test_depth_resize_nearest_and_centre_crop_against_slicing(tmp_path):
    path = tmp_path / "nyu.mat"
    rgb, depth = _make_mat(path, n=2, h=24, w=32)
    source = data.NYUMatSource(path)
    it = depth_pipeline(source, train=False, batch_size=2, image_size=(10, 14), resize_to=(12, 16))
    batch = next(it)
    # Nearest 2x downsampling takes the centre-right/bottom pixel of each 2x2 cell; then crop 10x14 of 12x16.
    np.testing.assert_array_equal(batch["depth"], depth[:, 1::2, 1::2][:, 1:11, 1:15])
    half = np.stack([np.asarray(Image.fromarray(x).resize((16, 12), Image.Resampling.BILINEAR)) for x in rgb])
    np.testing.assert_allclose(batch["image"], T.normalize(half[:, 1:11, 1:15]), atol=1e-5)
    with pytest.raises(ValueError, match="resize_to"):
        depth_pipeline(source, train=False, batch_size=2, image_size=(10, 14), resize_to=(8, 16))


def test_depth_augmentations_change_only_the_image_except_flip(tmp_path):
    path = tmp_path / "nyu.mat"
    _make_mat(path, n=1, h=24, w=32)
    record = data.NYUMatSource(path)[0]
    kw = {"image_size": (20, 28), "resize_to": None}
    ref = depth_lib.DepthEvalTransform(**kw).map(record)
    color_only = depth_lib.DepthTrainTransform(hflip=False, **kw)
    flip_only = depth_lib.DepthTrainTransform(color=False, **kw)
    both = depth_lib.DepthTrainTransform(**kw)
    flipped = set()
    for seed in range(10):
        out = color_only.random_map(record, np.random.default_rng(seed))
        np.testing.assert_array_equal(out["depth"], ref["depth"])
        assert not np.allclose(out["image"], ref["image"])
        out = flip_only.random_map(record, np.random.default_rng(seed))
        flip = not np.array_equal(out["depth"], ref["depth"])
        flipped.add(flip)
        exp = (lambda x: x[:, ::-1]) if flip else (lambda x: x)
        np.testing.assert_array_equal(out["depth"], exp(ref["depth"]))
        np.testing.assert_array_equal(out["image"], exp(ref["image"]))
        out = both.random_map(record, np.random.default_rng(seed))
        assert np.array_equal(out["depth"], ref["depth"]) or np.array_equal(out["depth"], ref["depth"][:, ::-1])
    assert flipped == {True, False}


def test_color_jitter_against_colorsys():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (6, 7, 3)).astype(np.float32)
    hsv = depth_lib.rgb_to_hsv(image)
    ref = np.array([colorsys.rgb_to_hsv(*p) for p in image.reshape(-1, 3)]).reshape(image.shape)
    np.testing.assert_allclose(hsv, ref, atol=1e-5)
    np.testing.assert_allclose(depth_lib.hsv_to_rgb(hsv), image, atol=1e-5)
    for seed in range(20):
        out = depth_lib.color_jitter(image, np.random.default_rng(seed))
        gray, delta, sat, dhue = np.random.default_rng(seed).random(4) * [1, 0.251, 1, 0.4] - [0, 0.1255, -0.5, 0.2]
        assert -0.1255 <= delta <= 0.1255 and 0.5 <= sat <= 1.5 and -0.2 <= dhue <= 0.2
        src = image
        if gray < 0.3:
            lum = image @ np.array([0.2989, 0.587, 0.114])
            src = np.repeat(lum[..., None], 3, -1)
        expected = []
        for p in np.clip(src + delta, 0, 1).reshape(-1, 3):
            h, s, v = colorsys.rgb_to_hsv(*p)
            expected.append(colorsys.hsv_to_rgb((h + dhue) % 1.0, min(s * sat, 1.0), v))
        np.testing.assert_allclose(out, np.reshape(expected, image.shape), atol=1e-4, err_msg=f"seed {seed}")
        if gray < 0.3 and sat < 1.0:
            assert np.ptp(out, axis=-1).max() < 1e-4  # grayscale stays gray


# ------------------------------------------------------------------------------------------------
# pipelines: determinism, sharding, padding, resumption


class IndexedSegSource:
    """Example i: a 10x12 image and a mask filled with class i (so batches name their examples)."""

    def __init__(self, n: int):
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, (n, 10, 12, 3), dtype=np.uint8)
        self.num_classes = n

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        label = np.full((10, 12), i, np.uint8)
        return {"image": self.images[i], "label": label, "path": f"mem/{i}", "label_path": f"mem/{i}.png"}


def _ids(batch):
    return [int(np.max(np.where(lab == 255, -1, lab))) for lab in batch["label"]]


def test_segmentation_pipeline_seeds_shards_and_eval_padding():
    src = IndexedSegSource(30)
    kw = {"train": True, "batch_size": 4, "crop_size": 8}
    a, b, c = (_batches(segmentation_pipeline(src, seed=s, **kw), 3) for s in (0, 0, 1))
    _assert_equal(a, b)
    assert [_ids(x) for x in a] != [_ids(x) for x in c]
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    shards = []
    for i in range(3):
        it = segmentation_pipeline(src, num_epochs=1, shard_index=i, shard_count=3, **kw)
        shards.append([k for batch in it for k in _ids(batch)])
    assert [len(s) for s in shards] == [8, 8, 8]
    flat = [k for s in shards for k in s]
    assert len(set(flat)) == len(flat)  # disjoint
    seen = []
    for i in range(2):
        for batch in segmentation_pipeline(src, train=False, batch_size=4, crop_size=8, shard_index=i, shard_count=2):
            seen += [k for k, m in zip(_ids(batch), batch["mask"], strict=True) if m]
            assert (batch["label"][~batch["mask"]] == 255).all()
    assert sorted(seen) == list(range(30))


def test_iterator_state_resumes_identical_batches(tmp_path):
    path = tmp_path / "nyu.mat"
    _make_mat(path, n=20, h=12, w=16)
    source = data.open_nyu(path, "all")
    kw = {"train": True, "batch_size": 4, "image_size": (8, 12), "resize_to": None, "seed": 3}
    it = depth_pipeline(source, **kw)
    _batches(it, 2)
    state = it.get_state()
    expected = _batches(it, 4)
    resumed = depth_pipeline(source, **kw)
    resumed.set_state(state)
    _assert_equal(_batches(resumed, 4), expected)
    # A segmentation iterator's state does not restore into a depth pipeline silently.
    seg = segmentation_pipeline(IndexedSegSource(20), train=True, batch_size=4, crop_size=8, seed=3)
    with pytest.raises(ValueError, match="task: checkpoint 'depth' vs now 'segmentation'"):
        seg.set_state(state)


def test_depth_pipeline_in_worker_processes_matches_in_process(tmp_path):
    # The h5py-backed source is pickled into spawned grain workers and reopens the file there.
    path = tmp_path / "nyu.mat"
    _make_mat(path, n=16, h=12, w=16)
    source = data.open_nyu(path, "all")
    kw = {"train": True, "batch_size": 4, "image_size": (8, 12), "resize_to": None, "seed": 1}
    expected = _batches(depth_pipeline(source, **kw), 5)
    it = depth_pipeline(source, worker_count=2, **kw)
    try:
        _assert_equal(_batches(it, 5), expected)
    finally:
        it.close()


# ------------------------------------------------------------------------------------------------
# digit scenes


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scenes") / "digit_scenes"
    cmd = [sys.executable, str(REPO / "tools/prepare_digit_scenes.py"), f"--out={out}", "--num_train=12", "--num_val=4"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO)
    return out


def test_digit_scenes_files_load_with_the_loaders(scenes_dir):
    voc = data.VOCSource(scenes_dir / "voc", "train", num_classes=scenes.NUM_CLASSES)
    assert len(voc) == 12 and len(data.VOCSource(scenes_dir / "voc", "val", num_classes=11)) == 4
    assert Image.open(voc[0]["path"]).format == "JPEG" and Image.open(voc[0]["label_path"]).mode == "P"
    nyu = data.open_nyu(scenes_dir / "nyu", "train")
    assert len(nyu) == 12 and len(data.open_nyu(scenes_dir / "nyu", "test")) == 4
    assert Image.open(nyu[0]["depth_path"]).mode == "I;16"
    seg = next(segmentation_pipeline(voc, train=True, batch_size=4, crop_size=64))
    dep = next(depth_pipeline(nyu, train=True, batch_size=4, image_size=64, resize_to=None))
    assert seg["image"].shape == dep["image"].shape == (4, 64, 64, 3)
    assert set(np.unique(seg["label"])) <= {*range(11), 255}
    assert dep["depth"].min() >= 1.0 and dep["depth"].max() < 7.0


def test_digit_scenes_masks_depth_and_occlusion_consistent(scenes_dir):
    # Familiar size: digit heights grow geometrically from 0.5 m (digit 0) to 1.5 m (digit 9).
    np.testing.assert_allclose(scenes.DIGIT_HEIGHT, 0.5 * 3.0 ** (np.arange(10) / 9), atol=5e-4)  # 3 decimals
    images, labels = scenes.load_digit_images()
    pool = data.digits.split_indices(labels)[0]
    for i in range(12):
        name = f"train_{i:05d}"
        rgb = np.asarray(Image.open(scenes_dir / "nyu/rgb" / f"{name}.png"))
        mask = np.asarray(Image.open(scenes_dir / "voc/SegmentationClass" / f"{name}.png"))
        mm = np.asarray(Image.open(scenes_dir / "nyu/depth" / f"{name}.png")).astype(np.int64)
        # The files hold the scene rendered from (seed 0, train stream 0, i).
        _, label, depth, digits = scenes.render_scene(images[pool], labels[pool], np.random.default_rng([0, 0, i]))
        np.testing.assert_array_equal(mask, label)
        np.testing.assert_array_equal(mm, np.rint(depth * 1000))
        assert 1 <= len(digits) <= 4
        # Image vs mask: digits are painted in colours with a 255 channel; the background is <= 200.
        np.testing.assert_array_equal(mask > 0, rgb.max(-1) == 255)
        # Occlusion vs depth: each pixel shows the nearest plate covering it, in image, mask and depth
        # alike; the mask labels the digit's strokes on it, the depth map the whole plate.
        near_depth = np.full(mask.shape, np.inf)
        near_class = np.zeros(mask.shape, np.int64)
        for d in digits:
            # Familiar size: digit d is DIGIT_HEIGHT[d] metres tall; its image shrinks with depth.
            assert d["size"] == round(scenes.FOCAL * scenes.DIGIT_HEIGHT[d["digit"]] / d["depth"])
            assert scenes.DIGIT_DEPTH[0] <= d["depth"] <= scenes.DIGIT_DEPTH[1]
            plate, stroke = np.zeros(mask.shape, bool), np.zeros(mask.shape, bool)
            window = np.s_[d["top"] : d["top"] + d["size"], d["left"] : d["left"] + d["size"]]
            glyph = Image.fromarray(images[pool][d["glyph"]]).resize((d["size"],) * 2, Image.Resampling.BILINEAR)
            plate[window], stroke[window] = True, np.asarray(glyph) >= 128
            nearer = plate & (d["depth"] < near_depth)
            near_depth[nearer], near_class[nearer] = d["depth"], np.where(stroke, d["digit"] + 1, 0)[nearer]
        np.testing.assert_array_equal(mask, near_class)
        on = np.isfinite(near_depth)
        np.testing.assert_array_equal(mm[on], np.rint(near_depth[on] * 1000))
        assert rgb[on & (mask == 0)].max(initial=0) < scenes.PLATE_COLOR[1]  # dark plates around the digits
        # Background: a tilted plane behind every plate.
        yy, xx = np.nonzero(~on)
        design = np.stack([np.ones_like(xx), xx, yy], 1).astype(float)
        coef, *_ = np.linalg.lstsq(design, mm[~on] / 1000, rcond=None)
        assert np.abs(design @ coef - mm[~on] / 1000).max() <= 0.001
        assert mm[~on].min() > max(d["depth"] for d in digits) * 1000


def test_digit_scenes_deterministic_and_prepared_once(scenes_dir, tmp_path):
    again = scenes.prepare_digit_scenes(tmp_path / "a", num_train=12, num_val=4)
    other = scenes.prepare_digit_scenes(tmp_path / "b", num_train=12, num_val=4, seed=1)
    files = sorted(p.relative_to(scenes_dir) for p in scenes_dir.rglob("*") if p.is_file())
    assert len(files) == 1 + 16 * 4 + 4
    for rel in files:
        assert (again / rel).read_bytes() == (scenes_dir / rel).read_bytes(), rel
    rel = Path("nyu/depth/train_00000.png")
    assert (other / rel).read_bytes() != (scenes_dir / rel).read_bytes()
    marker = again / ".complete"
    stamp = marker.stat().st_mtime_ns
    assert scenes.prepare_digit_scenes(again, num_train=12, num_val=4) == again
    assert marker.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="written by prepare_digit_scenes with"):
        scenes.prepare_digit_scenes(again, num_train=20, num_val=4)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="prepare_digit_scenes"):
        scenes.prepare_digit_scenes(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_decode_helpers_accept_bytes(tmp_path):
    # The decoders used by the transforms, on encoded bytes (as the sources deliver them).
    label = np.array([[0, 3], [255, 1]], np.uint8)
    _palette_png(label, tmp_path / "m.png")
    np.testing.assert_array_equal(data.dense.decode_label_map((tmp_path / "m.png").read_bytes(), "m.png", 4), label)
    buf = io.BytesIO()
    Image.fromarray(np.array([[0, 1500]], np.uint16)).save(buf, format="PNG")
    np.testing.assert_array_equal(data.dense.decode_depth_png(buf.getvalue(), "d.png"), [[0.0, 1.5]])
