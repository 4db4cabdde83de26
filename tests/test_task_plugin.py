"""A task is one plug-in: a toy task defined in this file (odd or even digit from one logit, a
weighted logistic loss, its own data builder on the embedded digit_parity set and its own config
key) is registered with `nf.tasks.register_task` and trained through nf-train's code path
(`train_and_evaluate`). Its eval metrics, finalized by the trainer from summed statistics, are
recomputed in numpy from the saved EMA weights; a second run resumes from the checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from absl import flags
from flax import nnx

from nf import data as nf_data
from nf.models import create_model
from nf.tasks import TASKS, Classification, Task, TrainData, register_task
from nf.tasks.base import example_mask, model_overrides
from nf.tasks.data import loader_settings, prepare, resolve
from nf.train.config_schema import ConfigKeyError, validate

ODD = 1  # class index of `odd/` (nf.data.prepare_digit_parity: folders even/, odd/)


class DigitParity(Task):
    """Odd or even digit from one logit; the logistic loss weighs odd digits by `toy.odd_weight`."""

    name = "toy_digit_parity"
    config_keys: ClassVar[dict[str, float | None]] = {"toy.odd_weight": 0}

    @classmethod
    def build_data(cls, config: ml_collections.ConfigDict, workdir: str) -> TrainData:
        cfg = config.data
        prepare(cfg, workdir)  # data.prepare = "digit_parity"
        train = nf_data.open_source(resolve(cfg.train, workdir))
        if list(train.classes) != ["even", "odd"]:
            raise ValueError(f"{cfg.train}: expected the folders even/ and odd/, found {train.classes}")
        test = nf_data.open_source(resolve(cfg.eval, workdir), classes=train.classes)
        augment = nf_data.ClassificationTrain(cfg.image_size, hflip=False)
        evaluate = nf_data.ClassificationEval(nf_data.Preprocessing.nf(cfg.image_size))
        return TrainData(
            train.num_classes,
            len(train),
            lambda: nf_data.make_pipeline(train, augment, loader_settings(config, train=True)),
            lambda: nf_data.make_pipeline(test, evaluate, loader_settings(config, train=False)),
            list(train.classes),
        )

    def build_model(self) -> nnx.Module:
        model = self.config.model
        return create_model(model.name, seed=self.config.seed, num_classes=1, **model_overrides(self.config))

    @staticmethod
    def _per_example(outputs, batch):
        logit, odd = outputs[:, 0].astype(jnp.float32), (batch["label"] == ODD).astype(jnp.float32)
        return optax.sigmoid_binary_cross_entropy(logit, odd), ((logit > 0) == (odd > 0)).astype(jnp.float32), odd

    def loss(self, outputs, batch):
        bce, correct, odd = self._per_example(outputs, batch)
        weight = jnp.where(odd > 0, self.config.toy.odd_weight, 1.0)
        return jnp.mean(weight * bce), {"accuracy": jnp.mean(correct)}

    def eval_sums(self, outputs, batch):
        bce, correct, _ = self._per_example(outputs, batch)
        mask = example_mask(batch, outputs.shape[0])
        return {"correct": jnp.sum(correct * mask), "bce": jnp.sum(bce * mask), "count": jnp.sum(mask)}

    def finalize(self, totals):
        count = max(float(totals["count"]), 1.0)
        return {"accuracy": float(totals["correct"]) / count, "bce": float(totals["bce"]) / count}


@pytest.fixture
def parity_task():
    register_task(DigitParity)
    yield DigitParity
    del TASKS[DigitParity.name]


@pytest.fixture(autouse=True)
def _absl_flags_parsed():
    if not flags.FLAGS.is_parsed():  # grain reads absl flags
        flags.FLAGS.mark_as_parsed()


def parity_config(tiny_config, root: Path, **overrides) -> ml_collections.ConfigDict:
    """The tiny trainer config (conftest) with the toy task on digit_parity prepared at `root`."""
    config = tiny_config(
        {
            "task": DigitParity.name,
            "data.prepare": "digit_parity",
            "data.root": str(root),
            "data.train": str(root / "train"),
            "data.eval": str(root / "test"),
            "total_steps": 6,  # eval at 6, checkpoints at 4 and 6
            "model.depths": (1,),  # one block: the smallest compile
            **overrides,
        }
    )
    config.toy = ml_collections.ConfigDict({"odd_weight": 2.0})
    return config


@nnx.jit
def logits_of(model: nnx.Module, images: jax.Array) -> jax.Array:
    """The model's one logit per image (B,), float32."""
    return model(images, train=False)[:, 0].astype(jnp.float32)


def np_bce(z: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-example logistic loss of logits `z` (-log sigmoid(z) for odd digits, -log(1 - sigmoid(z))
    for even ones) and the odd mask."""
    odd = labels == ODD
    return np.logaddexp(0.0, z) - z * odd, odd


def numpy_eval(task: Task, workdir: Path, data: TrainData) -> tuple[dict[str, float], int]:
    """Accuracy and mean logistic loss of the latest checkpoint's EMA weights over the eval set
    (masked padding dropped), computed in numpy from the model's logits; and the example count."""
    from nf.inference.checkpoint import restore_trees
    from nf.train.transfer import find_checkpoint

    model = task.build_model()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = lambda s: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), s)
    target = {"ema": abstract(nnx.to_pure_dict(params)), "model_state": abstract(nnx.to_pure_dict(rest))}
    saved = restore_trees(find_checkpoint(str(workdir)), target)
    nnx.replace_by_pure_dict(params, saved["ema"])
    nnx.replace_by_pure_dict(rest, saved["model_state"])
    model = nnx.merge(graphdef, params, rest)
    logits, labels = [], []
    for batch in data.eval_batches():
        keep = batch["mask"].astype(bool)
        logits.append(np.asarray(logits_of(model, jnp.asarray(batch["image"])))[keep].astype(np.float64))
        labels.append(batch["label"][keep])
    z = np.concatenate(logits)
    bce, odd = np_bce(z, np.concatenate(labels))
    return {"accuracy": float(np.mean((z > 0) == odd)), "bce": float(np.mean(bce))}, len(z)


def test_a_registered_toy_task_trains_through_nf_train(parity_task, tiny_config, tmp_path):
    from nf.train.trainer import train_and_evaluate

    root = tmp_path / "parity"
    workdir = tmp_path / "run"
    config = parity_config(tiny_config, root)
    summary = train_and_evaluate(config, str(workdir))

    assert summary["step"] == config.total_steps
    assert not (workdir / "nf_model.json").exists()  # the toy task has no model card
    assert (workdir / "checkpoints" / str(config.total_steps)).is_dir()
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if m["split"] == "train"]
    assert [m["step"] for m in train] == list(range(1, config.total_steps + 1))
    assert all({"loss", "accuracy", "grad_norm"} <= set(m) for m in train)
    data = DigitParity.build_data(config, str(workdir))
    task = DigitParity(config, data.num_classes)
    # Step 1 trains on the toy's loss: the initial model's weighted logistic loss on the first batch.
    train_iter = data.train_iter()
    batch = next(train_iter)
    train_iter.close()
    assert batch["image"].dtype == np.uint8  # raw pixels: the step normalizes them (model_images)
    images = jnp.asarray(nf_data.normalize(batch["image"]))  # the host's normalization, independently
    z = np.asarray(logits_of(task.build_model(), images)).astype(np.float64)
    bce, odd = np_bce(z, batch["label"])
    weight = np.where(odd, config.toy.odd_weight, 1.0)
    assert train[0]["loss"] == pytest.approx(np.mean(weight * bce), rel=1e-5)
    assert train[0]["accuracy"] == pytest.approx(np.mean((z > 0) == odd), abs=1e-7)
    expected, count = numpy_eval(task, workdir, data)
    assert count == len(nf_data.open_source(str(root / "test")))  # every eval example once
    assert summary["ema_accuracy"] == pytest.approx(expected["accuracy"], abs=1e-12)
    assert summary["ema_bce"] == pytest.approx(expected["bce"], rel=1e-5)

    # A finished run restarted: restores the checkpoint of the plug-in task and evaluates it again.
    again = train_and_evaluate(config, str(workdir))
    assert again["step"] == config.total_steps
    assert again["ema_accuracy"] == summary["ema_accuracy"]
    assert again["ema_bce"] == pytest.approx(summary["ema_bce"], rel=1e-6)


def test_a_task_declares_its_config_keys(parity_task, tiny_config, tmp_path):
    config = parity_config(tiny_config, tmp_path / "parity")
    validate(config)  # toy.odd_weight is the toy task's key
    config.toy.odd_wieght = 1.0
    with pytest.raises(ConfigKeyError, match=r'unknown config key "toy\.odd_wieght"; did you mean "toy\.odd_weight"'):
        validate(config)
    del config.toy["odd_wieght"]
    config.toy.odd_weight = -1.0
    with pytest.raises(ConfigKeyError, match=r"config\.toy\.odd_weight=-1\.0 is out of range: it must be >= 0"):
        validate(config)
    config.task = "classification"  # another task does not read toy.*
    config.toy.odd_weight = 1.0
    with pytest.raises(ConfigKeyError, match=r'unknown config key "toy\.odd_weight"'):
        validate(config)


def test_unregistered_or_duplicate_tasks_are_refused(tiny_config):
    config = tiny_config({"task": "toy_digit_parity"})
    with pytest.raises(ConfigKeyError, match=r"config\.task='toy_digit_parity' is unknown; valid: \['classification'"):
        validate(config)

    class Another(Classification):
        pass  # inherits the name "classification"

    with pytest.raises(ValueError, match=r"task 'classification' is already registered \(nf\.tasks\.classification"):
        register_task(Another)
    assert TASKS["classification"] is Classification
    with pytest.raises(TypeError, match=r"subclass of nf\.tasks\.Task"):
        register_task(dict)


def test_tasks_do_not_import_the_trainer():
    """Layering: nf.tasks sits below nf.train (the trainer asks the tasks, never the reverse)."""
    import ast

    import nf.tasks

    offenders = []
    for path in Path(nf.tasks.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("nf.train")]
    assert offenders == []


def test_only_classifier_tasks_have_model_cards(parity_task, tiny_config, tmp_path):
    """nf-eval / nf-predict with --config build a card only for a classification task (by type)."""
    from nf.inference import ModelCardError, read_card

    config = parity_config(tiny_config, tmp_path / "parity")
    with pytest.raises(ModelCardError, match=r"config\.task='toy_digit_parity': only classifiers have model cards"):
        read_card(tmp_path, config)
    card = read_card(tmp_path, tiny_config())  # the digits classifier of conftest's tiny config
    assert (card.num_classes, card.class_names) == (10, [str(d) for d in range(10)])
