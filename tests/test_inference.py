"""Self-describing model workdirs (nf.inference): the model card, save_model / load_model on real
orbax directories (written by save_model and by the trainer), and a finished run that is resumed."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import flags
from flax import nnx

from nf.inference import CARD_FILE, ModelCard, ModelCardError, Preprocessing, load_model, save_model

REPO = Path(__file__).resolve().parents[1]
TINY = {"name": "nf_resnet26", "depths": [1, 2], "widths": [8, 16], "strides": [1, 2], "stem_width": 8}
RUN = {  # a tiny classifier on digits, 16 px, 2 steps (as tests/test_transfer.py)
    "model.depths": (1, 2),
    "model.widths": (8, 16),
    "model.strides": (1, 2),
    "model.stem_width": 8,
    "total_steps": 2,
    "batch_size": 8,
    "log_every_steps": 1,
    "eval_every_steps": 100,
    "checkpoint_every_steps": 100,
    "spp_after_training": False,
    "data.prepare": "",
    "data.image_size": 16,
}


@pytest.fixture(autouse=True)
def _absl_flags_parsed():
    if not flags.FLAGS.is_parsed():  # grain reads absl flags
        flags.FLAGS.mark_as_parsed()


def quickstart_config(digits_root: Path, **overrides):
    spec = importlib.util.spec_from_file_location("nf_quickstart_for_inference", REPO / "configs" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    root = {"data.root": str(digits_root)}
    data = {**root, "data.train": str(digits_root / "train"), "data.eval": str(digits_root / "test")}
    for key, value in {**RUN, **data, **overrides}.items():
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


@pytest.fixture(scope="module")
def trained_run(digits_root, tmp_path_factory) -> Path:
    """A real trainer workdir (checkpoint at step 2 with opt_state, the card)."""
    from nf.train.trainer import train_and_evaluate

    workdir = tmp_path_factory.mktemp("inference") / "run"
    train_and_evaluate(quickstart_config(digits_root), str(workdir))
    return workdir


def tiny_card(num_classes: int = 3, **changes) -> ModelCard:
    base = dict(
        model=dict(TINY),
        num_classes=num_classes,
        preprocessing=Preprocessing.timm(16, 0.9),
        class_names=[f"c{i}" for i in range(num_classes)],
        source={"kind": "test"},
    )
    return ModelCard(**{**base, **changes})


def perturbed(model: nnx.Module, seed: int = 1) -> nnx.Module:
    """Every parameter moved off its init (gains 1, biases 0 would hide a swapped leaf)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    leaves = [x + 0.05 * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves), rest)


def keypath(path) -> str:
    """A tree path with every key as a string (orbax stores list indices as strings)."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def plain_orbax(workdir: Path, step: int) -> dict:
    """The saved state as {item: {path: array}}, read with plain orbax (no nf code)."""
    import orbax.checkpoint as ocp

    path = workdir / "checkpoints" / str(step) / "state"
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        meta = getattr(meta, "item_metadata", meta)
        tree = ckptr.restore(path, jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta))
    return {
        item: {keypath(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(sub)[0]}
        for item, sub in tree.items()
    }


def param_map(model: nnx.Module) -> dict:
    pure = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {keypath(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(pure)[0]}


# ------------------------------------------------------------------------------------------ card


def test_card_round_trips_through_json_and_the_file(tmp_path):
    card = tiny_card()
    assert ModelCard.from_json(card.to_json()) == card
    path = card.save(tmp_path)
    assert Path(path) == tmp_path / CARD_FILE
    assert ModelCard.load(tmp_path) == card
    data = json.loads(Path(path).read_text())
    assert data["preprocessing"]["mean"] == pytest.approx([123.675, 116.28, 103.53])  # timm's 0-1 values x 255
    assert data["preprocessing"]["crop"] == "resize_short_crop"  # the default of kind "timm"


def test_deepmind_preprocessing_follows_the_image_size():
    p = Preprocessing.deepmind(256)
    assert (p.crop, p.crop_pct, p.interpolation) == ("center_crop", 256 / 288, "bicubic")
    assert p.at_size(192).crop_pct == 192 / 224  # px / (px + 32) at any size
    t = Preprocessing.timm(224, 0.95)
    assert t.at_size(320).crop_pct == 0.95  # timm keeps its crop_pct


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d.pop("num_classes"), r"missing key\(s\) \['num_classes'\]"),
        (lambda d: d.update(labels=[]), r"unknown key\(s\) \['labels'\]"),
        (lambda d: d.update(class_names=["a", "b"]), "lists 2 names for num_classes=3"),
        (lambda d: d.update(num_classes=0), "num_classes: must be a positive integer"),
        (lambda d: d.update(model={"depths": [1]}), "model: must be an object with a 'name'"),
        (lambda d: d["preprocessing"].update(kind="tf"), r"'kind'='tf' is not one of \['timm', 'deepmind', 'nf'\]"),
        (lambda d: d["preprocessing"].pop("crop_pct"), r"preprocessing: missing key\(s\) \['crop_pct'\]"),
        (lambda d: d["preprocessing"].update(crop_pct=1.5), r"'crop_pct' must be in \(0, 1\]"),
        (lambda d: d["preprocessing"].update(interpolation="cubic"), "'interpolation'='cubic' is not one of"),
        (lambda d: d["preprocessing"].update(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]), "0-1 scale"),
        (lambda d: d["preprocessing"].update(std=[1.0, 2.0]), "'std' must be 3 finite numbers"),
    ],
)
def test_card_validation_names_the_file_and_key(tmp_path, edit, message):
    data = tiny_card().to_dict()
    edit(data)
    (tmp_path / CARD_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelCardError, match=message) as err:
        ModelCard.load(tmp_path)
    assert str(tmp_path / CARD_FILE) in str(err.value)


def test_a_workdir_without_a_card_asks_for_the_config(tmp_path):
    with pytest.raises(ModelCardError, match="Pass --config"):
        ModelCard.load(tmp_path)
    (tmp_path / CARD_FILE).write_text("{not json")
    with pytest.raises(ModelCardError, match=f"{tmp_path / CARD_FILE}: not valid JSON"):
        ModelCard.load(tmp_path)


# ------------------------------------------------------------------------- save_model / load_model


def test_save_model_then_load_model_gives_the_same_logits(tmp_path):
    card = tiny_card()
    model = perturbed(card.build_model(seed=5))
    state_dir = save_model(model, tmp_path / "m", card)
    assert Path(state_dir) == tmp_path / "m" / "checkpoints" / "0" / "state"
    saved = plain_orbax(tmp_path / "m", 0)  # the trainer's layout, read without nf
    want = param_map(model)
    assert saved["params"].keys() == want.keys() == saved["ema"].keys()
    for k, v in want.items():
        np.testing.assert_array_equal(saved["params"][k], v)
        np.testing.assert_array_equal(saved["ema"][k], v)

    x = np.random.default_rng(0).normal(size=(3, 16, 16, 3)).astype(np.float32)
    for weights in ("ema", "raw"):
        loaded, loaded_card = load_model(tmp_path / "m", weights=weights)
        assert loaded_card == card
        np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))

    with pytest.raises(FileExistsError, match="already holds checkpoints"):
        save_model(model, tmp_path / "m", card)
    with pytest.raises(ValueError, match="does not match its card"):
        save_model(model, tmp_path / "other", tiny_card(num_classes=4))
    with pytest.raises(FileNotFoundError, match=r"saved steps in .*: \[0\]"):
        load_model(tmp_path / "m", step=7)


def test_load_model_names_the_differing_parameters(tmp_path):
    card = tiny_card()
    save_model(card.build_model(), tmp_path, card)
    wrong = tiny_card(model={**TINY, "widths": [8, 24]})
    wrong.save(tmp_path)  # a card that does not match the checkpoint
    with pytest.raises(ValueError, match=r"shape differs .*\['stages'\]\['1'\]") as err:
        load_model(tmp_path)
    assert "(ema)" in str(err.value)


# ---------------------------------------------------------------------------------- the trainer


def test_the_trainer_writes_the_card_of_its_classifier(trained_run, digits_root):
    card = ModelCard.load(trained_run)
    assert card.num_classes == 10 and card.class_names == [str(d) for d in range(10)]
    assert card.model["name"] == "nf_resnet26" and card.model["widths"] == [8, 16]
    p = card.preprocessing
    assert (p.kind, p.image_size, p.crop, p.crop_padding, p.crop_pct) == ("nf", 16, "center_crop", 0, 1.0)


@pytest.mark.parametrize("weights,item", [("ema", "ema"), ("raw", "params")])
def test_load_model_reads_a_trainer_checkpoint(trained_run, weights, item):
    saved = plain_orbax(trained_run, 2)
    assert "opt_state" in saved  # the trainer's state: load_model reads only the chosen weights
    model, _ = load_model(trained_run, weights=weights)
    got = param_map(model)
    assert got.keys() == saved[item].keys()
    for k, v in got.items():
        np.testing.assert_array_equal(v, saved[item][k])


def test_a_workdir_without_card_loads_with_its_config(trained_run, digits_root, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(trained_run / "checkpoints", bare / "checkpoints")
    with pytest.raises(ModelCardError, match="Pass --config"):
        load_model(bare)
    model, card = load_model(bare, config=quickstart_config(digits_root))
    assert card == ModelCard.load(trained_run)
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(load_model(trained_run)[0](x)))


def test_resuming_a_finished_run_evaluates_it(trained_run, digits_root, tmp_path):
    from nf.train.trainer import train_and_evaluate

    workdir = tmp_path / "finished"
    shutil.copytree(trained_run, workdir)
    before = (workdir / "metrics.jsonl").read_text()
    last = [json.loads(line) for line in before.splitlines() if json.loads(line)["split"] == "eval"][-1]
    summary = train_and_evaluate(quickstart_config(digits_root), str(workdir))
    assert summary["step"] == 2
    for key in ("top1", "top5", "ema_top1", "ema_top5"):
        assert summary[key] == pytest.approx(last[key], abs=1e-12)  # same weights, same eval set
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]
