"""TFDS input (`data.train = "tfds:NAME:SPLIT"`): a small dataset prepared on disk in TFDS's real
ArrayRecord format (a `GeneratorBasedBuilder` fed in-memory JPEG bytes, no download), read back
record by record against the encoded images, through the grain pipeline with a resume, and by
the trainer for two steps."""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from nf import data as nf_data  # noqa: E402
from nf.data.sources import DataSourceError  # noqa: E402

CLASSES = ["cat", "dog", "emu"]
SPLITS = {"train": 10, "validation": 5}


def jpeg(split: str, i: int) -> bytes:
    """A random 10x13 RGB JPEG, different for every (split, i)."""
    from PIL import Image

    rng = np.random.default_rng([len(split), i])
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (13, 10, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def label_of(i: int) -> int:
    return (7 * i + 1) % len(CLASSES)


class NfTestAnimals(tfds.core.GeneratorBasedBuilder):
    """Image + class label + file name, as ImageNet's TFDS dataset holds them."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(names=CLASSES),
                "file_name": tfds.features.Text(),
            }
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(split, n) for split, n in SPLITS.items()}

    def _generate_examples(self, split, n):
        for i in range(n):
            yield f"{split}{i}", {"image": jpeg(split, i), "label": label_of(i), "file_name": f"{split}_{i}.jpg"}


def prepare(data_dir: Path, file_format: str = "array_record") -> Path:
    NfTestAnimals(data_dir=str(data_dir), file_format=file_format).download_and_prepare()
    return data_dir


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory) -> Path:
    return prepare(tmp_path_factory.mktemp("tfds"))


def expected(path: str) -> tuple[bytes, int]:
    """The encoded image and label a record's path names (`... (train_3.jpg)`)."""
    name = path.rsplit("(", 1)[1].rstrip(")")
    split, i = name.removesuffix(".jpg").split("_")
    return jpeg(split, int(i)), label_of(int(i))


@pytest.mark.parametrize("split", sorted(SPLITS))
def test_records_are_the_encoded_images_with_their_labels(tfds_dir, split):
    source = nf_data.open_source(f"tfds:nf_test_animals:{split}", tfds_data_dir=str(tfds_dir))
    assert isinstance(source, nf_data.TfdsImageSource)
    assert len(source) == SPLITS[split] and source.classes == CLASSES and source.num_classes == 3
    names = set()
    for i in range(len(source)):
        record = source[i]
        want_image, want_label = expected(record["path"])
        assert record["image"] == want_image  # the bytes as written, not re-encoded or decoded
        assert record["label"] == want_label
        assert record["path"].startswith(f"tfds:nf_test_animals:{split}[{i}] (")
        names.add(record["path"])
    assert len(names) == SPLITS[split]  # every example once
    clone = pickle.loads(pickle.dumps(source))  # as grain sends it to worker processes
    assert [clone[i] for i in range(len(source))] == [source[i] for i in range(len(source))]


def test_slices_and_errors_name_what_to_do(tfds_dir, tmp_path):
    part = nf_data.open_source("tfds:nf_test_animals:train[:4]", tfds_data_dir=str(tfds_dir))
    full = nf_data.open_source("tfds:nf_test_animals:train", tfds_data_dir=str(tfds_dir))
    assert len(part) == 4
    for i in range(4):
        assert (part[i]["image"], part[i]["label"]) == (full[i]["image"], full[i]["label"])
    with pytest.raises(DataSourceError, match=r"has no split 'test'; it has \['train', 'validation'\]"):
        nf_data.open_source("tfds:nf_test_animals:test", tfds_data_dir=str(tfds_dir))
    with pytest.raises(DataSourceError, match="'tfds:NAME:SPLIT'"):
        nf_data.open_source("tfds:nf_test_animals", tfds_data_dir=str(tfds_dir))
    with pytest.raises(DataSourceError, match="tfds build"):
        nf_data.open_source("tfds:nf_test_animals:train", tfds_data_dir=str(tmp_path / "empty"))
    tfrecord = prepare(tmp_path / "tfrecord", file_format="tfrecord")
    with pytest.raises(DataSourceError, match=r"stored as tfrecord.*convert_format"):
        nf_data.open_source("tfds:nf_test_animals:train", tfds_data_dir=str(tfrecord))


def test_pipeline_over_tfds_resumes_exactly(tfds_dir):
    source = nf_data.open_source("tfds:nf_test_animals:train", tfds_data_dir=str(tfds_dir))

    def pipeline():
        return nf_data.make_pipeline(source, nf_data.ClassificationTrain(8), nf_data.LoaderSettings(4, seed=3))

    it = pipeline()
    seen = [next(it) for _ in range(3)]
    state = it.get_state()
    after = [next(it) for _ in range(3)]  # crosses the epoch boundary (10 examples, batch 4)
    assert all(set(b["label"].tolist()) <= set(range(len(CLASSES))) for b in seen)
    resumed = pipeline()
    resumed.set_state(json.loads(json.dumps(state)))  # through JSON, as checkpoints hold it
    for want in after:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])


@pytest.mark.slow  # a compile of the tiny model: ~90 s on a loaded 2-core machine
def test_trainer_trains_on_a_tfds_dataset(tfds_dir, digits_root, tmp_path):
    from absl import flags
    from conftest import CLASSIFIER_RUN, quickstart_config

    from nf.data.card import ModelCard
    from nf.train.trainer import train_and_evaluate

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    config = quickstart_config(
        digits_root,
        {
            **CLASSIFIER_RUN,
            "data.train": "tfds:nf_test_animals:train",
            "data.eval": "tfds:nf_test_animals:validation",
            "data.tfds_data_dir": str(tfds_dir),
            "data.crop_padding": 0,
            "batch_size": 4,
        },
    )
    summary = train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["step"] == 2 and 0 <= summary["ema_top1"] <= 1
    card = ModelCard.load(tmp_path / "run")
    assert card.num_classes == 3 and card.class_names == CLASSES  # from the dataset's metadata


def test_nf_eval_reads_a_tfds_split_from_its_tfds_data_dir(tfds_dir, tmp_path):
    """`nf-eval --data=tfds:NAME:SPLIT --tfds_data_dir=DIR` on a saved 3-class model: top-1, top-5
    and loss are those of the model's logits on the split's JPEGs preprocessed independently (PIL +
    numpy); without the flag TFDS's default data dir is searched, and the error says so."""
    from test_inference import logits_of, perturbed, reference_inputs, tiny_card

    from nf.cli import evaluate as nf_eval
    from nf.inference import save_model

    card = tiny_card(len(CLASSES), class_names=CLASSES)
    model = perturbed(card.build_model(seed=1), seed=4)
    workdir = tmp_path / "model"
    save_model(model, workdir, card)
    out = tmp_path / "report.json"
    spec = "tfds:nf_test_animals:validation"
    assert nf_eval.main([f"--workdir={workdir}", f"--data={spec}", f"--tfds_data_dir={tfds_dir}", f"--out={out}"]) == 0
    report = json.loads(out.read_text())

    paths = []
    for i in range(SPLITS["validation"]):
        paths.append(tmp_path / f"validation_{i}.jpg")
        paths[-1].write_bytes(jpeg("validation", i))
    labels = np.array([label_of(i) for i in range(SPLITS["validation"])])
    logits = logits_of(model, reference_inputs(paths, card.preprocessing)).astype(np.float64)
    order = np.argsort(-logits, axis=1)
    top = logits.max(1, keepdims=True)
    log_probs = logits - top - np.log(np.sum(np.exp(logits - top), 1, keepdims=True))
    result = report["results"]["ema"]
    assert report["data"] == spec and report["num_images"] == SPLITS["validation"]
    assert result["top1"] == pytest.approx(np.mean(order[:, 0] == labels), abs=1e-9)
    assert result["top5"] == pytest.approx(1.0, abs=1e-9)  # 3 classes: always within the top 5
    assert result["loss"] == pytest.approx(-np.mean(log_probs[np.arange(len(labels)), labels]), rel=1e-4)

    with pytest.raises(DataSourceError, match=r"'nf_test_animals' in the default TFDS data dir .*tfds build"):
        nf_eval.main([f"--workdir={workdir}", f"--data={spec}", f"--out={out}"])
