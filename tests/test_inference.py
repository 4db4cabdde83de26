"""Self-describing model workdirs (nf.inference): the model card, save_model / load_model on real
orbax directories (written by save_model and by the trainer), and a finished run that is resumed."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import flags
from conftest import CLASSIFIER_RUN, quickstart_config
from flax import nnx

from nf.inference import CARD_FILE, ModelCard, ModelCardError, Preprocessing, load_model, save_model
from nf.models import create_model

TINY = {"name": "nf_resnet26", "depths": [1, 2], "widths": [8, 16], "strides": [1, 2], "stem_width": 8}


@pytest.fixture(autouse=True)
def _absl_flags_parsed():
    if not flags.FLAGS.is_parsed():  # grain reads absl flags
        flags.FLAGS.mark_as_parsed()


def config_of_run(digits_root: Path):
    """The config that wrote the shared `classifier_run` (conftest.py)."""
    return quickstart_config(digits_root, CLASSIFIER_RUN)


def tiny_card(num_classes: int = 3, **changes) -> ModelCard:
    base = dict(
        model=dict(TINY),
        num_classes=num_classes,
        preprocessing=Preprocessing.timm(16, 0.9),
        class_names=[f"c{i}" for i in range(num_classes)],
        source={"kind": "test"},
    )
    return ModelCard(**{**base, **changes})


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, x):
    return nnx.merge(graphdef, state)(x, train=False)


def logits_of(model: nnx.Module, x: np.ndarray) -> np.ndarray:
    """`model(x, train=False)`, jitted once per architecture (eager dispatches op by op: slow)."""
    graphdef, state = nnx.split(model)
    return np.asarray(_forward(graphdef, state, x))


def perturbed(model: nnx.Module, seed: int = 1) -> nnx.Module:
    """Every parameter moved off its init (gains 1, biases 0 would hide a swapped leaf)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: x + 0.05 * rng.normal(size=x.shape).astype(x.dtype), params)
    return nnx.merge(graphdef, params, rest)


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
        np.testing.assert_array_equal(logits_of(loaded, x), logits_of(model, x))

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


def test_the_trainer_writes_the_card_of_its_classifier(classifier_run, digits_root):
    card = ModelCard.load(classifier_run)
    assert card.num_classes == 10 and card.class_names == [str(d) for d in range(10)]
    assert card.model["name"] == "nf_resnet26" and card.model["widths"] == [8, 16]
    p = card.preprocessing
    assert (p.kind, p.image_size, p.crop, p.crop_padding, p.crop_pct) == ("nf", 16, "center_crop", 0, 1.0)


@pytest.mark.parametrize("weights,item", [("ema", "ema"), ("raw", "params")])
def test_load_model_reads_a_trainer_checkpoint(classifier_run, weights, item):
    saved = plain_orbax(classifier_run, 2)
    assert "opt_state" in saved  # the trainer's state: load_model reads only the chosen weights
    model, _ = load_model(classifier_run, weights=weights)
    got = param_map(model)
    assert got.keys() == saved[item].keys()
    for k, v in got.items():
        np.testing.assert_array_equal(v, saved[item][k])


def test_a_workdir_without_card_loads_with_its_config(classifier_run, digits_root, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(classifier_run / "checkpoints", bare / "checkpoints")
    with pytest.raises(ModelCardError, match="Pass --config"):
        load_model(bare)
    model, card = load_model(bare, config=config_of_run(digits_root))
    assert card == ModelCard.load(classifier_run)
    x = np.random.default_rng(1).normal(size=(2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(logits_of(model, x), logits_of(load_model(classifier_run)[0], x))


def test_resuming_a_finished_run_evaluates_it(classifier_run, digits_root, tmp_path):
    from nf.train.trainer import train_and_evaluate

    workdir = tmp_path / "finished"
    shutil.copytree(classifier_run, workdir)
    before = (workdir / "metrics.jsonl").read_text()
    last = [json.loads(line) for line in before.splitlines() if json.loads(line)["split"] == "eval"][-1]
    summary = train_and_evaluate(config_of_run(digits_root), str(workdir))
    assert summary["step"] == 2
    for key in ("top1", "top5", "ema_top1", "ema_top5"):
        assert summary[key] == pytest.approx(last[key], abs=1e-12)  # same weights, same eval set
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["2"]


# ------------------------------------------------------------------------- nf-eval / nf-predict

NUM_CLASSES = 6


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> Path:
    """6 classes x 2 PNG images of different sizes and aspects (so the crops matter)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("folder") / "val"
    rng = np.random.default_rng(0)
    sizes = [(23, 17), (17, 29), (20, 20), (31, 18)]
    for c in range(NUM_CLASSES):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(2):
            w, h = sizes[(c + i) % len(sizes)]
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"{i}.png")
    return root


def reference_inputs(paths, p: Preprocessing) -> np.ndarray:
    """The card's preprocessing written out with PIL and numpy (torchvision's Resize(int) +
    CenterCrop for timm; DeepMind's centre crop of px/(px+32) of the short side, then resize)."""
    import math

    from PIL import Image

    out = []
    for path in paths:
        img = Image.open(path).convert("RGB")
        w, h = img.size
        px = p.image_size
        if p.crop == "resize_short_crop":
            s = math.floor(px / p.crop_pct)
            nw, nh = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
            a = np.asarray(img.resize((nw, nh), Image.Resampling.BICUBIC))
            top, left = round((nh - px) / 2.0), round((nw - px) / 2.0)
            a = a[top : top + px, left : left + px]
        else:
            side = int(p.crop_pct * min(w, h))
            top, left = (h - side + 1) // 2, (w - side + 1) // 2
            a = np.asarray(img.resize((px, px), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)))
        out.append((a.astype(np.float32) - np.float32(p.mean)) / np.float32(p.std))
    return np.stack(out).astype(np.float32)


@pytest.fixture(scope="module")
def imported_like(image_folder, tmp_path_factory) -> tuple[Path, nnx.Module]:
    """A save_model workdir (a stand-in for an imported model): 6 classes named as the folders."""
    card = tiny_card(
        NUM_CLASSES,
        class_names=[f"class_{c}" for c in range(NUM_CLASSES)],
        preprocessing=Preprocessing.timm(16, 0.875, mean01=(0.5, 0.4, 0.3), std01=(0.2, 0.3, 0.25)),
    )
    model = perturbed(card.build_model(seed=2), seed=3)
    workdir = tmp_path_factory.mktemp("imported") / "m"
    save_model(model, workdir, card)
    return workdir, model


def with_raw_weights(workdir: Path, raw: nnx.Module, dest: Path) -> Path:
    """A copy of a save_model workdir (params = EMA) whose raw parameters are `raw`'s: the
    checkpoint rewritten with plain orbax in the trainer's layout."""
    import orbax.checkpoint as ocp

    from nf.inference.checkpoint import model_trees

    shutil.copytree(workdir, dest)
    saved = plain_orbax(workdir, 0)
    tree = {"step": np.int32(0), "params": model_trees(raw)[0], "model_state": model_trees(raw)[1]}
    tree["ema"] = jax.tree_util.tree_map_with_path(lambda p, x: saved["ema"][keypath(p)], tree["params"])
    shutil.rmtree(dest / "checkpoints")
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
    handlers = {"state": ocp.StandardCheckpointHandler()}
    with ocp.CheckpointManager(str(dest / "checkpoints"), options=options, item_handlers=handlers) as manager:
        manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(tree)), force=True)
        manager.wait_until_finished()
    return dest


@pytest.mark.parametrize("kind", ["timm", "deepmind"])
def test_nf_eval_matches_an_independent_evaluation(imported_like, image_folder, tmp_path, kind):
    """`--weights=both` on a workdir whose EMA and raw weights differ: each result is that set's."""
    from nf.cli import evaluate as nf_eval

    workdir, ema_model = imported_like
    raw_model = perturbed(ema_model, seed=7)
    workdir = with_raw_weights(workdir, raw_model, tmp_path / "both")
    card = ModelCard.load(workdir)
    if kind == "deepmind":  # the same weights under DeepMind's preprocessing
        card = ModelCard(**{**card.__dict__, "preprocessing": Preprocessing.deepmind(16)})
        card.save(workdir)
    out = tmp_path / "report.json"
    args = [f"--workdir={workdir}", f"--data={image_folder}", "--batch_size=5", f"--out={out}", "--weights=both"]
    assert nf_eval.main(args) == 0
    report = json.loads(out.read_text())

    paths = sorted(image_folder.glob("*/*.png"))
    labels = np.array([int(p.parent.name.split("_")[1]) for p in paths])
    inputs = reference_inputs(paths, card.preprocessing)
    assert report["num_images"] == len(paths) == 12
    losses = {}
    for weights, model in (("ema", ema_model), ("raw", raw_model)):
        logits = logits_of(model, inputs).astype(np.float64)
        order = np.argsort(-logits, axis=1)
        want_top1 = np.mean(order[:, 0] == labels)
        want_top5 = np.mean([label in row[:5] for label, row in zip(labels, order)])
        top = logits.max(1, keepdims=True)
        log_probs = logits - top - np.log(np.sum(np.exp(logits - top), 1, keepdims=True))
        losses[weights] = want_loss = -np.mean(log_probs[np.arange(len(labels)), labels])
        r = report["results"][weights]
        assert r["top1"] == pytest.approx(want_top1, abs=1e-9)
        assert r["top5"] == pytest.approx(want_top5, abs=1e-9)
        # 1e-4: nf-eval's float32 logits from the jitted pipeline vs this float64 log-softmax of
        # the same model's logits (a different order of float32 operations in the forward pass)
        assert r["loss"] == pytest.approx(want_loss, rel=1e-4)
        assert 0 < want_top5 < 1
    assert abs(losses["ema"] - losses["raw"]) > 1e-2 * losses["ema"]  # the two sets are told apart
    assert report["images_per_sec"] > 0
    assert report["preprocessing"]["kind"] == kind


def test_nf_eval_refuses_a_folder_with_other_classes(imported_like, tmp_path):
    from PIL import Image

    from nf.cli import evaluate as nf_eval

    for name in ("cat", "dog"):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "data" / name / "a.png")
    with pytest.raises(ValueError, match=r"has 2 classes \['cat', 'dog'\]\.\.\. but the model has 6"):
        nf_eval.main([f"--workdir={imported_like[0]}", f"--data={tmp_path / 'data'}"])


def test_nf_predict_prints_the_top_classes(imported_like, image_folder, tmp_path, capsys):
    from nf.cli import predict as nf_predict

    workdir, model = imported_like
    paths = [str(p) for p in sorted(image_folder.glob("*/*.png"))[:3]]
    assert nf_predict.main([f"--workdir={workdir}", "--top_k=3", "--json", "--batch_size=2", *paths]) == 0
    rows = json.loads(capsys.readouterr().out)
    probs = np.asarray(jax.nn.softmax(logits_of(model, reference_inputs(paths, ModelCard.load(workdir).preprocessing))))
    for row, path, p in zip(rows, paths, probs):
        want = np.argsort(-p)[:3]
        assert row["image"] == path
        assert [name for name, _ in row["top"]] == [f"class_{c}" for c in want]
        np.testing.assert_allclose([q for _, q in row["top"]], p[want], rtol=1e-5)

    names = tmp_path / "names.txt"
    names.write_text("".join(f"animal number {c}\n" for c in range(NUM_CLASSES)))
    assert nf_predict.main([f"--workdir={workdir}", "--top_k=2", f"--class_names={names}", paths[0]]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == paths[0] and len(lines) == 3
    assert lines[1].split(None, 1)[1] == f"animal number {np.argsort(-probs[0])[0]}"
    names.write_text("a\nb\n")
    with pytest.raises(ValueError, match="lists 2 class names; the model has 6"):
        nf_predict.main([f"--workdir={workdir}", f"--class_names={names}", paths[0]])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=f"cannot decode image file {broken}"):
        nf_predict.main([f"--workdir={workdir}", str(broken)])


# ------------------------------------------------------------------------------------ nf-export


def test_nf_export_reloads_and_matches_the_logits_at_two_batch_sizes(imported_like, tmp_path):
    from nf.cli import export as nf_export

    workdir, model = imported_like
    out = tmp_path / "model.stablehlo"
    assert nf_export.main([f"--workdir={workdir}", f"--out={out}"]) == 0
    exported = jax.export.deserialize(bytearray(out.read_bytes()))
    info = json.loads((tmp_path / "model.stablehlo.json").read_text())
    assert info["input"] == {"shape": ["batch", 16, 16, 3], "dtype": "float32", "layout": "NHWC"}
    assert info["class_names"] == [f"class_{c}" for c in range(NUM_CLASSES)] and info["platforms"] == ["cpu"]
    assert info["preprocessing"] == ModelCard.load(workdir).preprocessing.to_dict()
    rng = np.random.default_rng(4)
    for batch in (1, 5):
        x = rng.normal(size=(batch, 16, 16, 3)).astype(np.float32)
        # float32 rounding: the exported program (WS folded) and the jitted model order sums differently
        np.testing.assert_allclose(np.asarray(exported.call(x)), logits_of(model, x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("platforms", [None, ("cpu", "cuda", "tpu")])
def test_export_of_a_grouped_conv_model(platforms):
    """NF-RegNet's 8-wide grouped convs take CPU-specific routes (nf.layers.conv_ops); a portable
    export traces lax's grouped conv instead. Both reload and agree with the model."""
    from nf.inference.export import export_model

    model = perturbed(create_model("nf_regnet_b0", num_classes=4, depths=(1, 2), widths=(16, 32), group_width=8))
    exported = jax.export.deserialize(bytearray(export_model(model, 32, platforms).serialize()))
    assert exported.platforms == (platforms or ("cpu",))
    for batch in (2, 3):
        x = np.random.default_rng(batch).normal(size=(batch, 32, 32, 3)).astype(np.float32)
        # float32 rounding: the exported program (WS folded) and the jitted model order sums differently
        np.testing.assert_allclose(np.asarray(exported.call(x)), logits_of(model, x), rtol=1e-4, atol=1e-5)


def test_nf_eval_reads_arrayrecord_like_the_folder(imported_like, image_folder, tmp_path):
    from nf.cli import evaluate as nf_eval
    from nf.data import ImageFolderSource, write_arrayrecord

    shards = write_arrayrecord(ImageFolderSource(image_folder), tmp_path / "ar", num_shards=2)
    reports = {}
    for name, data in (("folder", image_folder), ("arrayrecord", shards)):
        out = tmp_path / f"{name}.json"
        assert nf_eval.main([f"--workdir={imported_like[0]}", f"--data={data}", "--batch_size=4", f"--out={out}"]) == 0
        reports[name] = json.loads(out.read_text())
    assert reports["arrayrecord"]["num_images"] == 12
    assert reports["arrayrecord"]["results"] == reports["folder"]["results"]
