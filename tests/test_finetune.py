"""Fine-tuning a classifier (`init_from` for classification): every backbone tensor comes from
the checkpoint (compared exactly with the saved ones, read by plain orbax), a fresh head for a new
class count, the saved head for the same count; a frozen backbone stays bit-identical through
real trainer steps; `backbone_lr_mult` scales the backbone's updates and nothing else."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest
from absl import flags
from conftest import CLASSIFIER_BACKBONE, CLASSIFIER_RUN, apply_overrides, quickstart_config

from nf.tasks import get_task
from nf.train.optim import make_optimizer
from nf.train.trainer import ModelFns
from nf.train.transfer import backbone_scales, restore_backbone

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _absl_flags_parsed():
    if not flags.FLAGS.is_parsed():  # grain reads absl flags
        flags.FLAGS.mark_as_parsed()


def keypath(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def flat(tree) -> dict[str, np.ndarray]:
    return {keypath(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def saved_tree(workdir: Path, item: str) -> dict[str, np.ndarray]:
    """The latest checkpoint's `item` as {path: array}, read with plain orbax (no nf code)."""
    import orbax.checkpoint as ocp

    step_dir = max((workdir / "checkpoints").iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1)
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(step_dir / "state")
        meta = getattr(meta, "item_metadata", meta)
        tree = ckptr.restore(
            step_dir / "state", jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one), meta)
        )
    return flat(tree[item])


def classifier_state(config, num_classes: int):
    """The trainer's state (pure dicts), abstract state and leaf info for `config`'s classifier."""
    model = get_task(config, num_classes).build_model()
    fns = ModelFns(model)
    params, model_state = fns.init_values(model)
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    state = {"params": params, "ema": params, "model_state": model_state}
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), state)
    return state, abstract, fns.info


def head_paths(info) -> set[str]:
    leaves = jax.tree_util.tree_flatten_with_path(info, is_leaf=lambda x: hasattr(x, "classifier"))[0]
    return {keypath(p) for p, i in leaves if i.classifier}


@pytest.mark.parametrize("num_classes,source", [(2, "ema"), (10, "raw")])
def test_init_from_restores_every_backbone_tensor_and_the_head_when_it_fits(
    classifier_run, digits_root, num_classes, source
):
    config = quickstart_config(digits_root, CLASSIFIER_RUN)
    state, abstract, info = classifier_state(config, num_classes)
    fresh = flat(state["params"])
    restored = restore_backbone(str(classifier_run), source, state, abstract, info)
    saved = saved_tree(classifier_run, "ema" if source == "ema" else "params")
    head = head_paths(info)
    assert head == {"head/kernel", "head/bias"}  # found by the classifier tag
    for tree in ("params", "ema"):
        got = flat(restored[tree])
        assert got.keys() == fresh.keys()
        for k, v in got.items():
            if k in head and num_classes != 10:
                np.testing.assert_array_equal(v, fresh[k])  # a fresh head for the new classes
            else:
                np.testing.assert_array_equal(v, saved[k])  # from the checkpoint, exactly
    assert fresh["head/kernel"].shape == (16, num_classes)


def test_init_from_of_another_classifier_architecture_names_the_paths(classifier_run, digits_root):
    config = quickstart_config(digits_root, {**CLASSIFIER_RUN, "model.widths": (8, 24)})
    state, abstract, info = classifier_state(config, 2)
    with pytest.raises(ValueError, match="holds another model than the one built") as err:
        restore_backbone(str(classifier_run), "ema", state, abstract, info)
    assert "['stages']['1']['first']['conv_out']['kernel'] (1, 1, 4, 16) vs (1, 1, 6, 24)" in str(err.value)


def test_backbone_lr_mult_and_freeze_scale_only_the_backbone_updates(digits_root):
    config = quickstart_config(digits_root, CLASSIFIER_RUN)
    state, _, info = classifier_state(config, 3)
    params = state["params"]
    head = head_paths(info)
    rng = np.random.default_rng(0)
    grads = [jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params) for _ in range(3)]

    def updates(scales):
        tx = make_optimizer(info, learning_rate=0.1, weight_decay=1e-3, agc_clip=0.05, update_scales=scales)
        opt_state, p, out = tx.init(params), params, []
        for g in grads:
            u, opt_state = tx.update(g, opt_state, p)
            p = jax.tree.map(lambda a, b: a + b, p, u)
            out.append(flat(u))
        return out

    assert backbone_scales(info) is None  # the default chain is unchanged (old checkpoints resume)
    base = updates(None)
    slow = updates(backbone_scales(info, lr_mult=0.1))
    frozen = updates(backbone_scales(info, freeze=True))
    for b, s, f in zip(base, slow, frozen):
        for k in b:
            if k in head:  # leafwise transforms: the head's updates do not depend on the backbone's
                assert np.any(b[k] != 0)
                np.testing.assert_array_equal(s[k], b[k])
                np.testing.assert_array_equal(f[k], b[k])
            else:
                assert np.all(f[k] == 0)  # exact zeros: frozen
    # Step 1 (no momentum history, no parameter drift yet): the backbone moves 0.1x as far.
    for k in base[0]:
        want = base[0][k] if k in head else 0.1 * base[0][k]
        np.testing.assert_allclose(slow[0][k], want, rtol=1e-5, atol=1e-9)


def finetune_config(parity_root: Path, init_from: Path, **overrides):
    """configs/finetune_digits.py at the shared classifier's size: 3 steps, 16 px, batch 8."""
    spec = importlib.util.spec_from_file_location("nf_finetune_config", REPO / "configs" / "finetune_digits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    settings = {
        **CLASSIFIER_BACKBONE,
        "init_from": str(init_from),
        "total_steps": 3,
        "batch_size": 8,
        "log_every_steps": 1,
        "eval_every_steps": 3,
        "checkpoint_every_steps": 3,
        "optimizer.warmup_steps": 1,
        "data.prepare": "",
        "data.image_size": 16,
        "data.root": str(parity_root),
        "data.train": str(parity_root / "train"),
        "data.eval": str(parity_root / "test"),
    }
    return apply_overrides(module.get_config(), {**settings, **overrides})


def test_finetuning_with_a_frozen_backbone_end_to_end(classifier_run, tmp_path):
    from nf.data import prepare_digit_parity
    from nf.inference import ModelCard
    from nf.train.trainer import train_and_evaluate

    parity = prepare_digit_parity(tmp_path / "parity")
    config = finetune_config(parity, classifier_run, freeze_backbone=True)
    summary = train_and_evaluate(config, str(tmp_path / "run"))
    assert summary["step"] == 3 and 0 <= summary["ema_top1"] <= 1
    trained, source = saved_tree(tmp_path / "run", "params"), saved_tree(classifier_run, "ema")
    state, _, info = classifier_state(config, 2)
    fresh, head = flat(state["params"]), head_paths(info)
    for k, v in trained.items():
        if k in head:
            assert v.shape == fresh[k].shape and not np.array_equal(v, fresh[k])  # the new head trained
        else:
            np.testing.assert_array_equal(v, source[k])  # bit-identical to the checkpoint after 3 steps
    assert ModelCard.load(tmp_path / "run").class_names == ["even", "odd"]
