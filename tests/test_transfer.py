"""Transfer to dense tasks: dilated backbones, FCN / FCRN heads, segmentation and depth losses and
metrics against numpy references, restoring real classification checkpoints (written by the
trainer) into dense models, and tiny segmentation / depth trainer runs on real digit-scene files."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl import flags
from conftest import CLASSIFIER_BACKBONE
from flax import nnx

from nf.heads import BACKBONE_KEY, FastUpConv, HeadStyle, UpProjection
from nf.heads.fcn import skip_stages
from nf.layers import Conv, ScaledWSConv
from nf.models import create_model
from nf.models.network import stage_dilations
from nf.tasks import depth as depth_task
from nf.tasks import segmentation as seg_task
from nf.tasks.dense import depth_model, segmentation_model

REPO = Path(__file__).resolve().parents[1]
TINY = dict(depths=(1, 1, 1, 2), widths=(8, 16, 16, 32), stem_width=8)  # the last stage is scanned


@pytest.fixture(autouse=True)
def _absl_flags_parsed():
    if not flags.FLAGS.is_parsed():  # grain reads absl flags (jax 0.10.2)
        flags.FLAGS.mark_as_parsed()


def _shapes(module) -> dict:
    flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(module, nnx.Param)))[0]
    return {jax.tree_util.keystr(p): tuple(x.shape) for p, x in flat}


# ------------------------------------------------------------------------------ backbones


@pytest.mark.parametrize(
    "name,options",
    [
        ("nf_resnet26", TINY),
        ("nf_regnet_b0", dict(depths=(1, 1, 1, 2), widths=(16, 32, 32, 64), group_width=8)),  # pooled shortcuts
    ],
)
def test_output_stride_16_dilates_the_last_stage_with_the_same_parameters(name, options):
    x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    plain = create_model(name, num_classes=3, seed=1, **options)
    dilated = create_model(name, num_classes=3, seed=1, output_stride=16, **options)
    assert _shapes(dilated) == _shapes(plain)  # classification checkpoints load as they are
    for a, b in zip(jax.tree.leaves(nnx.state(plain)), jax.tree.leaves(nnx.state(dilated))):
        np.testing.assert_array_equal(a, b)  # same seed: same values too

    f32, f16 = plain.features(x), dilated.features(x)
    assert [s for _, s in f32.stages] == [4, 8, 16, 32]
    assert [s for _, s in f16.stages] == [4, 8, 16, 16]
    assert [f.shape[1:3] for f, _ in f16.stages] == [(16, 16), (8, 8), (4, 4), (4, 4)]
    assert f16.final.shape == (2, 4, 4, dilated.num_features)
    for (a, _), (b, _) in list(zip(f32.stages, f16.stages))[:3]:  # undilated stages: identical outputs
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The classifier reads the same forward pass: logits = head(mean(features.final)).
    logits = dilated(x)
    want = dilated.head(jnp.mean(f16.final, axis=(1, 2)))
    np.testing.assert_allclose(np.asarray(logits), np.asarray(want), rtol=1e-5, atol=1e-6)

    assert dilated.stages[3].first.spatial[0].dilation == 2 and dilated.stages[3].first.shortcut.strides == 1


def test_stage_dilations_for_each_output_stride():
    strides = (1, 2, 2, 2)  # ResNet: stem stride 4
    assert stage_dilations(4, strides, None) == ((1, 1, 1, 1), (4, 8, 16, 32))
    assert stage_dilations(4, strides, 16) == ((1, 1, 1, 2), (4, 8, 16, 16))
    assert stage_dilations(4, strides, 8) == ((1, 1, 2, 4), (4, 8, 8, 8))
    assert stage_dilations(2, (2, 2, 2, 2), 8) == ((1, 1, 2, 4), (4, 8, 8, 8))  # NF-RegNet: stem stride 2
    with pytest.raises(ValueError, match=r"output_stride=12 is not reachable.*valid: \[4, 8, 16, 32\]"):
        stage_dilations(4, strides, 12)


# ------------------------------------------------------------------------------ heads

IDENTITY_STYLE = HeadStyle(Conv, False, lambda x: x)


def _unpool_conv5x5(x: np.ndarray, k: np.ndarray, b: np.ndarray) -> np.ndarray:
    """numpy: 2x unpooling (value to the top-left of each 2x2 cell) then a 5x5 SAME conv."""
    n, h, w, c = x.shape
    up = np.zeros((n, 2 * h, 2 * w, c))
    up[:, ::2, ::2] = x
    pad = np.pad(up, ((0, 0), (2, 2), (2, 2), (0, 0)))
    out = np.zeros((n, 2 * h, 2 * w, k.shape[-1]))
    for i in range(5):
        for j in range(5):
            out += np.einsum("nhwc,co->nhwo", pad[:, i : i + 2 * h, j : j + 2 * w], k[i, j])
    return out + b


def test_fast_up_convolution_equals_unpooling_then_5x5_conv():
    """Laina et al.'s identity: the four interleaved 3x3 / 3x2 / 2x3 / 2x2 convs are one 5x5 conv
    on the 2x unpooled input, their kernels being the 5x5 kernel's taps of each output phase."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 7, 3))
    k5 = rng.normal(size=(5, 5, 3, 4))
    bias = rng.normal(size=(4,))
    up = FastUpConv(IDENTITY_STYLE, 3, 4, act=False, rngs=nnx.Rngs(0))
    assert [tuple(p.conv.kernel.shape[:2]) for p in up.phases] == [(3, 3), (3, 2), (2, 3), (2, 2)]
    for phase, (r, s) in zip(up.phases, [(0, 0), (0, 1), (1, 0), (1, 1)]):
        phase.conv.kernel[...] = jnp.asarray(k5[r::2, s::2], jnp.float32)
        phase.conv.bias[...] = jnp.asarray(bias, jnp.float32)
    got = np.asarray(up(jnp.asarray(x, jnp.float32), train=False))
    np.testing.assert_allclose(got, _unpool_conv5x5(x, k5, bias), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bn", [False, True])
def test_up_projection_doubles_resolution_with_the_given_channels(bn):
    style = HeadStyle(functools.partial(Conv, use_bias=False), True, jax.nn.relu) if bn else None
    style = style or HeadStyle(ScaledWSConv, False, jax.nn.relu)
    block = UpProjection(style, 8, 4, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 5, 6, 8))
    y = block(x, train=True)
    assert y.shape == (2, 10, 12, 4)
    assert float(jnp.min(y)) >= 0.0  # ends with the activation
    kinds = {type(n) for _, n in nnx.iter_graph(block)}
    assert (nnx.BatchNorm in kinds) == bn and (ScaledWSConv in kinds) == (not bn)


def test_head_flavour_follows_the_backbone():
    nf = segmentation_model("nf_resnet26", 5, head_width=8, **TINY)
    bn = segmentation_model("bn_resnet26", 5, head_width=8, **TINY)
    assert isinstance(nf.head.convs[0].conv, ScaledWSConv) and nf.head.convs[0].bn is None
    assert not isinstance(bn.head.convs[0].conv, ScaledWSConv) and bn.head.convs[0].bn is not None
    assert nf.head.convs[0].conv.dilation == 6
    out = nf(jnp.zeros((1, 40, 48, 3)))
    assert out.shape == (1, 40, 48, 5)  # logits upsampled to the input
    backbone = create_model("nf_resnet26", num_classes=7, **TINY)
    want = {k: v for k, v in _shapes(backbone).items() if not k.startswith("['head']")}
    assert _shapes(getattr(nf, BACKBONE_KEY)) == want  # the classifier's tree minus its head


def test_fcn_skip_stages_are_the_last_stage_at_each_finer_stride():
    assert skip_stages((4, 8, 16, 16), None) == ()
    assert skip_stages((4, 8, 16, 16), 8) == (1,)
    assert skip_stages((4, 8, 16, 16), 4) == (1, 0)  # coarse to fine
    assert skip_stages((4, 8, 8, 8), 4) == (0,)  # output stride 8: only stride 4 is finer
    assert skip_stages((4, 4, 8, 16), 4) == (2, 1)  # of two stride-4 stages, the later one
    for bad in (16, 2, 6):
        with pytest.raises(ValueError, match=r"skip_stride=.* valid: \[4, 8\]"):
            skip_stages((4, 8, 16, 16), bad)


def test_fcn_skips_add_a_1x1_score_of_each_finer_stage():
    """FCN-8s: logits at the finest skip's stride; with the coarse classifier and the stride-8
    score zeroed, they are exactly the numpy 1x1 score of the stride-4 stage output."""
    x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    model = segmentation_model("nf_resnet26", 5, head_width=8, head_dilation=2, skip_stride=4, **TINY)
    assert model.head.skip_stages == (1, 0)
    features = model.backbone.features(x)
    assert model.head(features, train=False).shape == (2, 16, 16, 5)  # stride 4
    assert model(x).shape == (2, 64, 64, 5)
    for conv in (model.head.classifier, model.head.skip_scores[0]):
        conv.kernel[...], conv.bias[...] = jnp.zeros_like(conv.kernel[...]), jnp.zeros_like(conv.bias[...])
    score = model.head.skip_scores[1]
    stage0 = np.asarray(features.stages[0][0])
    want = np.einsum("nhwc,co->nhwo", stage0, np.asarray(score.kernel[...])[0, 0]) + np.asarray(score.bias[...])
    np.testing.assert_allclose(np.asarray(model.head(features, train=False)), want, rtol=1e-4, atol=1e-5)
    plain = segmentation_model("nf_resnet26", 5, head_width=8, head_dilation=2, **TINY)
    assert plain.head.skip_stages == () and plain.head(plain.backbone.features(x), train=False).shape == (2, 4, 4, 5)


@pytest.mark.parametrize("output_stride,want", [(None, (2, 1, 0, None)), (16, (1, 0, None, None))])
def test_fcrn_skips_join_the_up_projection_of_their_resolution(output_stride, want):
    x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    model = depth_model("nf_resnet26", output_stride=output_stride, skip_stride=4, **TINY)
    assert model.head.skip_stages == want
    features = model.backbone.features(x)
    stride = features.stages[-1][1]
    skip_strides = [stride // 2 ** (k + 1) for k, s in enumerate(want) if s is not None]
    assert skip_strides == [features.stages[s][1] for s in want if s is not None]  # resolutions match
    assert model(x).shape == (2, 64, 64, 1)
    with_skips = model.head(features, train=False)
    model.head.skip_projections = nnx.List([None] * len(want))  # the paper's head, same weights otherwise
    assert with_skips.shape == model.head(features, train=False).shape
    assert not np.allclose(np.asarray(with_skips), np.asarray(model.head(features, train=False)))


def test_depth_head_starts_at_init_depth():
    x = jax.random.normal(jax.random.key(0), (2, 64, 64, 3))
    out = np.asarray(depth_model("nf_resnet26", init_depth=4.5, **TINY)(x))
    assert out.shape == (2, 64, 64, 1)
    assert np.mean(out) == pytest.approx(4.5, abs=0.05) and np.std(out) < 0.05  # small output conv init


# ------------------------------------------------------------------------------ segmentation


def _np_seg(logits, labels, mask, k):
    valid = (labels != 255) & mask[:, None, None]
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    safe = np.where(valid, labels, 0)
    ce = -np.take_along_axis(logp, safe[..., None], -1)[..., 0]
    conf = np.zeros((k, k), np.int64)
    pred = logits.argmax(-1)
    for t, p in zip(labels[valid], pred[valid]):
        conf[t, p] += 1
    return (ce * valid).sum(), valid.sum(), conf


def test_segmentation_loss_confusion_and_miou_against_numpy():
    rng = np.random.default_rng(0)
    k = 4
    batches = []
    for _ in range(2):
        logits = rng.normal(size=(3, 6, 5, k)).astype(np.float32)
        labels = rng.integers(0, k, size=(3, 6, 5)).astype(np.int32)
        labels[rng.random(labels.shape) < 0.3] = 255
        mask = np.array([True, True, False])  # eval padding
        batches.append((logits, labels, mask))
    totals, ce_sum, n_sum, conf_sum = None, 0.0, 0, np.zeros((k, k), np.int64)
    for logits, labels, mask in batches:
        batch = {"label": jnp.asarray(labels), "mask": jnp.asarray(mask)}
        sums = jax.tree.map(np.asarray, seg_task.eval_sums(jnp.asarray(logits), batch))
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
        ce, n, conf = _np_seg(logits, labels, mask, k)
        ce_sum, n_sum, conf_sum = ce_sum + ce, n_sum + n, conf_sum + conf
        # the training loss: mean over the valid pixels of this batch
        np.testing.assert_allclose(float(seg_task.loss(jnp.asarray(logits), batch)), ce / n, rtol=1e-5)
    np.testing.assert_array_equal(totals["confusion"], conf_sum)
    assert int(totals["pixels"]) == n_sum
    np.testing.assert_allclose(float(totals["loss"]), ce_sum, rtol=1e-5)

    task = seg_task.Segmentation(None, k)
    result = task.finalize(totals)
    iou = [conf_sum[c, c] / (conf_sum[c].sum() + conf_sum[:, c].sum() - conf_sum[c, c]) for c in range(k)]
    assert result["miou"] == pytest.approx(np.mean(iou))
    assert result["pixel_accuracy"] == pytest.approx(np.trace(conf_sum) / conf_sum.sum())
    assert result["loss"] == pytest.approx(ce_sum / n_sum, rel=1e-5)
    # a class of the dataset definition that never occurs nor is predicted counts 0 in the mean
    conf5 = np.zeros((5, 5))
    conf5[:4, :4] = conf_sum
    assert seg_task.metrics_from_confusion(conf5)["miou"] == pytest.approx(np.sum(iou) / 5)


# ------------------------------------------------------------------------------ depth


def _np_berhu(p, g, valid):
    e = np.where(valid, p - g, 0.0)
    c = 0.2 * np.abs(e).max()
    a = np.abs(e)
    per = np.where(a <= c, a, (e**2 + c**2) / (2 * c))
    return per[valid].mean()


def test_berhu_and_depth_metrics_against_numpy():
    rng = np.random.default_rng(1)
    totals, preds, gts = None, [], []
    for _ in range(2):
        gt = rng.uniform(0.5, 8.0, size=(3, 7, 6)).astype(np.float32)
        gt[rng.random(gt.shape) < 0.25] = 0.0  # no measurement
        pred = (gt * rng.uniform(0.7, 1.4, size=gt.shape) + rng.normal(0, 0.2, gt.shape)).astype(np.float32)
        pred[0, 0, :3] = [-1.0, 0.0, 1e-5]  # non-positive predictions are clamped to 1 mm
        mask = np.array([True, True, False])
        batch = {"depth": jnp.asarray(gt), "mask": jnp.asarray(mask)}
        valid = (gt > 0) & mask[:, None, None]
        got = float(depth_task.berhu(jnp.asarray(pred), batch["depth"], depth_task.valid_pixels(batch)))
        assert got == pytest.approx(_np_berhu(pred, gt, valid), rel=1e-5)
        sums = jax.tree.map(np.asarray, depth_task.eval_sums(jnp.asarray(pred), batch))
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
        preds.append(np.maximum(pred[valid], 1e-3).astype(np.float64))
        gts.append(gt[valid].astype(np.float64))
    p, g = np.concatenate(preds), np.concatenate(gts)
    ratio = np.maximum(p / g, g / p)
    result = depth_task.finalize(totals)
    for i in (1, 2, 3):
        assert result[f"delta{i}"] == pytest.approx(np.mean(ratio < 1.25**i), abs=1e-9)
    assert result["rms"] == pytest.approx(np.sqrt(np.mean((p - g) ** 2)), rel=1e-5)
    assert result["rel"] == pytest.approx(np.mean(np.abs(p - g) / g), rel=1e-5)
    assert 0 < result["delta1"] < result["delta2"] < result["delta3"] < 1


def test_berhu_gradient_treats_c_as_a_constant():
    """d berHu / d p = sign(e) below c and e / c above it (c = 0.2 max|e|, not differentiated)."""
    g = jnp.array([[[1.0, 2.0, 3.0, 0.0]]])
    p = jnp.array([[[1.1, 2.5, 8.0, 5.0]]])  # |e| = 0.1, 0.5, 5 (c = 1); the last pixel is invalid
    valid = g > 0
    grad = jax.grad(lambda q: depth_task.berhu(q, g, valid))(p)
    np.testing.assert_allclose(np.asarray(grad)[0, 0], np.array([1.0, 1.0, 5.0, 0.0]) / 3, rtol=1e-5)


# ------------------------------------------------------------------------------ restore + trainer


def _config(path: Path, **overrides):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


BACKBONE = CLASSIFIER_BACKBONE  # the shared classifier_run fixture's (conftest.py)


@pytest.fixture(scope="module")
def scenes_root(tmp_path_factory) -> Path:
    from nf.data import prepare_digit_scenes

    return prepare_digit_scenes(tmp_path_factory.mktemp("scenes"), num_train=48, num_val=12)


def _dense_config(task: str, scenes_root: Path, workdir_init: str, **extra):
    name = "scenes_seg.py" if task == "segmentation" else "scenes_depth.py"
    common = {
        **BACKBONE,
        "init_from": workdir_init,
        "total_steps": 3,
        "batch_size": 8,
        "log_every_steps": 1,
        "eval_every_steps": 3,
        "checkpoint_every_steps": 3,
        "optimizer.warmup_steps": 1,
        "data.prepare": "",
        "data.root": str(scenes_root),
    }
    if task == "segmentation":
        common.update(
            {
                "model.output_stride": 4,  # the second stage dilated
                "head.width": 8,
                "head.skip_stride": 0,  # no stage is finer than output stride 4
                "data.path": str(scenes_root / "voc"),
                "data.crop_size": 32,
                "data.eval_crop_size": 32,
            }
        )
    else:
        common.update(
            {
                "model.widths": (8, 64),  # the FCRN head halves the final width 5 times
                "model.output_stride": 8,  # this backbone's natural one
                "data.path": str(scenes_root / "nyu"),
                "data.image_size": (32, 32),
                "data.resize_to": (32, 32),
            }
        )
    return _config(REPO / "configs" / name, **{**common, **extra})


def _restore_numpy(workdir: Path, item: str) -> dict:
    """The saved tree `item` as {path: array}, read with plain orbax (no nf code)."""
    import orbax.checkpoint as ocp

    step_dir = sorted((workdir / "checkpoints").iterdir(), key=lambda p: int(p.name))[-1] / "state"
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(step_dir)
        meta = getattr(meta, "item_metadata", meta)
        tree = ckptr.restore(
            step_dir, jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta)
        )
    flat = jax.tree_util.tree_flatten_with_path(tree[item])[0]
    return {tuple(str(getattr(k, "key", k)) for k in p): np.asarray(x) for p, x in flat}


def _dense_state(config):
    """The trainer's state layout (pure dicts) and abstract state for the dense model of `config`."""
    from nf.tasks import get_task

    model = get_task(config, 11).build_model()
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    _, params, rest = nnx.split(model, nnx.Param, ...)
    state = {
        "params": nnx.to_pure_dict(params),
        "ema": nnx.to_pure_dict(params),
        "model_state": nnx.to_pure_dict(rest),
    }
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), state)
    return state, abstract


@pytest.mark.parametrize("source", ["ema", "raw"])
def test_restoring_a_classification_checkpoint_copies_the_backbone(classifier_run, scenes_root, source):
    from nf.train.transfer import restore_backbone

    config = _dense_config("segmentation", scenes_root, str(classifier_run))
    state, abstract = _dense_state(config)
    head_before = jax.tree.map(np.asarray, state["params"]["head"])
    restored = restore_backbone(str(classifier_run), source, state, abstract)
    saved = _restore_numpy(classifier_run, "ema" if source == "ema" else "params")
    for tree in ("params", "ema"):
        flat = jax.tree_util.tree_flatten_with_path(restored[tree][BACKBONE_KEY])[0]
        assert len(flat) == len([k for k in saved if k[0] != "head"])  # every backbone leaf, nothing else
        for p, x in flat:
            np.testing.assert_array_equal(np.asarray(x), saved[tuple(str(getattr(k, "key", k)) for k in p)])
    for a, b in zip(jax.tree.leaves(head_before), jax.tree.leaves(restored["params"]["head"])):
        np.testing.assert_array_equal(a, np.asarray(b))  # the head keeps its fresh initialization
    if source == "ema":  # EMA and raw weights differ after training, so the choice is observable
        raw = _restore_numpy(classifier_run, "params")
        assert any(not np.array_equal(raw[k], saved[k]) for k in saved)


def test_restoring_another_architecture_names_the_differing_paths(classifier_run, scenes_root):
    from nf.train.transfer import restore_backbone

    config = _dense_config("segmentation", scenes_root, str(classifier_run), **{"model.widths": (8, 24)})
    state, abstract = _dense_state(config)
    with pytest.raises(ValueError, match="holds another model") as err:
        restore_backbone(str(classifier_run), "ema", state, abstract)
    assert "['stages']['1']['first']['conv_out']['kernel'] (1, 1, 4, 16) vs (1, 1, 6, 24)" in str(err.value)
    deeper = _dense_config("segmentation", scenes_root, "", **{"model.depths": (1, 2, 1), "model.widths": (8, 16, 16)})
    deeper.model.strides = (1, 2, 2)
    state, abstract = _dense_state(deeper)
    with pytest.raises(ValueError, match=r"missing in checkpoint: \['stages'\]\['2'\]"):
        restore_backbone(str(classifier_run), "ema", state, abstract)


def test_init_from_without_a_checkpoint_fails_naming_the_path(scenes_root, tmp_path):
    from nf.train.trainer import train_and_evaluate

    empty = tmp_path / "not_trained"
    empty.mkdir()
    config = _dense_config("segmentation", scenes_root, str(empty))
    with pytest.raises(FileNotFoundError, match=f"init_from='{empty}' holds no checkpoint"):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def _metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_segmentation_training_from_a_classifier_end_to_end(classifier_run, scenes_root, tmp_path, capsys):
    """The trainer with config.task="segmentation": backbone from the classifier's checkpoint,
    3 steps, eval (raw and EMA) and a checkpoint. The learning rate is 0, so the 3 steps (whose
    gradients flow through the restored backbone) leave the parameters exactly where the restore
    put them: the saved backbone must equal the classifier's EMA weights bit for bit."""
    from nf.train.trainer import train_and_evaluate

    workdir = tmp_path / "seg"
    config = _dense_config("segmentation", scenes_root, str(classifier_run), **{"optimizer.lr": 0.0})
    summary = train_and_evaluate(config, str(workdir))
    metrics = _metrics(workdir)
    train = [m for m in metrics if m["split"] == "train"]
    assert [m["step"] for m in train] == [1, 2, 3]
    assert {"loss", "pixel_accuracy", "grad_norm", "learning_rate"} <= set(train[0])
    (evals,) = [m for m in metrics if m["split"] == "eval"]
    assert set(evals) == {"step", "split"} | {p + k for p in ("", "ema_") for k in ("miou", "pixel_accuracy", "loss")}
    assert 0 <= evals["miou"] <= 1 and 0 <= evals["pixel_accuracy"] <= 1
    assert summary["ema_miou"] == evals["ema_miou"]
    assert "eval mIoU" in capsys.readouterr().out
    assert all(m["grad_norm"] > 0 and m["learning_rate"] == 0 for m in train)
    # every backbone tensor is the classifier's (EMA, the default source), bit for bit; the head is new
    saved = _restore_numpy(workdir, "params")
    classifier = _restore_numpy(classifier_run, "ema")
    backbone = {k[1:]: v for k, v in saved.items() if k[0] == BACKBONE_KEY}
    assert set(backbone) == {k for k in classifier if k[0] != "head"}
    for k, v in backbone.items():
        np.testing.assert_array_equal(v, classifier[k], err_msg=str(k))
    assert any(k[0] == "head" for k in saved)  # the segmentation head, freshly initialized


@pytest.mark.slow  # ~2 min: two more trainer runs
def test_a_workdir_with_checkpoints_resumes_instead_of_reading_init_from(classifier_run, scenes_root, tmp_path):
    from nf.train.trainer import train_and_evaluate

    workdir = tmp_path / "seg"
    train_and_evaluate(_dense_config("segmentation", scenes_root, str(classifier_run)), str(workdir))
    config = _dense_config("segmentation", scenes_root, "/no/such/classifier", **{"total_steps": 4})
    train_and_evaluate(config, str(workdir))  # resumes from step 3: init_from is never read
    assert [m["step"] for m in _metrics(workdir) if m["split"] == "train"] == [1, 2, 3, 4]


@pytest.mark.slow  # ~3 min on a 2-core CPU: the FCRN head's compile
def test_depth_training_end_to_end(scenes_root, tmp_path):
    from nf.train.trainer import train_and_evaluate

    workdir = tmp_path / "depth"
    summary = train_and_evaluate(_dense_config("depth", scenes_root, ""), str(workdir))
    metrics = _metrics(workdir)
    assert [m["step"] for m in metrics if m["split"] == "train"] == [1, 2, 3]
    (evals,) = [m for m in metrics if m["split"] == "eval"]
    keys = ("delta1", "delta2", "delta3", "rms", "rel")
    assert set(evals) == {"step", "split"} | {p + k for p in ("", "ema_") for k in keys}
    assert 0 <= summary["delta1"] <= summary["delta2"] <= summary["delta3"] <= 1
    assert summary["rms"] > 0


# ------------------------------------------------------------------------------ configs


def _load(name: str):
    """Parse --config=configs/<name>.py as the `nf-train` entry point does."""
    from ml_collections import config_flags

    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=fv, lock_config=True)
    fv(["nf-train", f"--config={REPO / 'configs' / name}.py"])
    return fv.config


@pytest.mark.parametrize("family", ["nf", "bn"])
def test_paper_transfer_configs_hold_the_recipes(family):
    from nf.models import model_options
    from nf.train.optim import learning_rate_schedule

    voc = _load(f"voc_fcn_{family}_resnet50")
    assert (voc.task, voc.model.name, voc.model.output_stride) == ("segmentation", f"{family}_resnet50", 16)
    assert (voc.total_steps, voc.batch_size, voc.optimizer.weight_decay) == (30_000, 16, 5e-5)
    assert (voc.data.crop_size, voc.data.eval_crop_size, voc.data.num_classes) == (513, 513, 21)
    assert (voc.head.width, voc.head.dilation) == (256, 6)
    opt = voc.optimizer
    lr = learning_rate_schedule(opt.lr, voc.total_steps, opt.warmup_steps, kind=opt.schedule, boundaries=opt.boundaries)
    assert [float(lr(t)) for t in (0, 20_999, 21_000, 26_999, 27_000, 29_999)] == pytest.approx(
        [0.003, 0.003, 3e-4, 3e-4, 3e-5, 3e-5]
    )
    nyu = _load(f"nyu_fcrn_{family}_resnet50")
    assert (nyu.task, nyu.model.name, nyu.total_steps, nyu.batch_size) == ("depth", f"{family}_resnet50", 7_500, 256)
    assert (nyu.optimizer.lr, nyu.optimizer.schedule, tuple(nyu.data.image_size)) == (0.16, "cosine", (228, 304))
    for cfg in (voc, nyu):
        assert set(cfg.model) - {"name"} <= set(model_options(cfg.model.name))
        assert cfg.init_from == f"runs/{family}_resnet50_imagenet" and cfg.init_from_params == "ema"


def test_scene_configs_match_the_quickstart_backbone():
    quickstart = _load("quickstart")
    for name in ("scenes_seg", "scenes_depth"):
        cfg = _load(name)
        for key in ("name", "depths", "widths", "stem_width", "skipinit"):
            assert cfg.model[key] == quickstart.model[key], (name, key)  # so its checkpoint restores
        assert cfg.init_from == "runs/quickstart"


def test_dense_init_from_accepts_a_save_model_workdir(classifier_run, scenes_root, tmp_path):
    """A model workdir written by nf.inference.save_model (as nf-import writes) initializes a dense
    backbone like a trainer workdir does."""
    from nf.inference import load_model, save_model
    from nf.train.transfer import restore_backbone

    model, card = load_model(classifier_run, "raw")
    save_model(model, tmp_path / "saved", card)
    config = _dense_config("segmentation", scenes_root, str(tmp_path / "saved"))
    state, abstract = _dense_state(config)
    restored = restore_backbone(str(tmp_path / "saved"), "ema", state, abstract)
    want = _restore_numpy(classifier_run, "params")  # save_model's EMA = the raw weights it was given
    flat = jax.tree_util.tree_flatten_with_path(restored["params"][BACKBONE_KEY])[0]
    assert len(flat) == len([k for k in want if k[0] != "head"])
    for p, x in flat:
        np.testing.assert_array_equal(np.asarray(x), want[tuple(str(getattr(k, "key", k)) for k in p)])
