"""The small-batch study (paper Table 2, `nf.experiments.small_batch`): the BN twin normalizes with
each step's own batch statistics (numpy reference, through the trainer's apply path), the run
settings follow the stated rules, and a tiny grid on the digits writes the JSON rows and the PNG."""

from __future__ import annotations

import importlib.util
import json
import math

import jax
import numpy as np
import pytest
from conftest import QUICKSTART
from flax import nnx
from PIL import Image

from nf.experiments import small_batch as sb
from nf.tasks import get_task
from nf.train.trainer import ModelFns


def quickstart():
    spec = importlib.util.spec_from_file_location("nf_quickstart_small_batch", QUICKSTART)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def tiny_base():
    config = quickstart()
    config.model.widths = (8, 8, 16, 16)
    config.model.stem_width = 8
    return config


def test_run_config_same_epochs_linear_lr():
    base = quickstart()  # lr 0.04 at batch 64, warmup 50 of 600 steps, EMA 0.99
    for batch in (64, 8, 4):
        c = sb.run_config(base, model="bn_resnet26", batch_size=batch, seed=3, epochs=6, num_train=1497)
        assert c.total_steps == 1497 * 6 // batch  # same number of epochs
        assert math.isclose(c.optimizer.lr, 0.04 * batch / 64)
        assert c.optimizer.warmup_steps == round(c.total_steps / 12)
        assert math.isclose(c.optimizer.ema_decay ** (64 / batch), 0.99)  # same EMA horizon in images
        assert (c.model.name, c.seed, c.batch_size, c.eval_every_steps) == ("bn_resnet26", 3, batch, c.total_steps)
        assert tuple(c.model.depths) == tuple(base.model.depths)  # the twin: same depths and widths
    assert [sb.norm_of(m) for m in ("nf_resnet26", "bn_resnet26")] == ["nf", "bn"]
    with pytest.raises(ValueError, match="less than one step"):
        sb.run_config(base, model="nf_resnet26", batch_size=64, seed=0, epochs=0.01, num_train=1497)


def _twin(model: str):
    config = sb.run_config(tiny_base(), model=model, batch_size=4, seed=0, epochs=1, num_train=1497)
    return get_task(config, 10).build_model()


def test_bn_twin_normalizes_with_each_steps_batch_statistics():
    model = _twin("bn_resnet26")
    bns = [node for _, node in nnx.iter_graph(model) if isinstance(node, nnx.BatchNorm)]
    assert len(bns) == 13  # one before each of the 3 convs of the 4 bottlenecks + the final pre-activation
    assert all(bn.axis_name is None and bn.momentum == 0.9 for bn in bns)  # no cross-replica sync

    # The layer in training mode against numpy: the batch's own mean and (biased) variance.
    bn = bns[0]
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (4, 5, 5, bn.num_features)).astype(np.float32)
    scale, bias = rng.normal(1, 0.3, bn.num_features), rng.normal(0, 0.3, bn.num_features)
    bn.scale[...], bn.bias[...] = scale.astype(np.float32), bias.astype(np.float32)
    mean0, var0 = np.asarray(bn.mean[...]), np.asarray(bn.var[...])
    y = np.asarray(bn(x, use_running_average=False))
    xd = x.astype(np.float64)
    m, v = xd.mean(axis=(0, 1, 2)), xd.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, (xd - m) / np.sqrt(v + bn.epsilon) * scale + bias, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(bn.mean[...]), 0.9 * mean0 + 0.1 * m, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.var[...]), 0.9 * var0 + 0.1 * v, rtol=1e-5)
    # evaluation mode reads the running averages instead
    y_eval = np.asarray(bn(x, use_running_average=True))
    ref = (xd - np.asarray(bn.mean[...])) / np.sqrt(np.asarray(bn.var[...]) + bn.epsilon) * scale + bias
    np.testing.assert_allclose(y_eval, ref, rtol=1e-4, atol=1e-4)


def test_train_step_couples_the_batch_for_bn_only():
    """Through the trainer's apply: example 0's training-mode logits change with the other three
    examples of its batch for the BN twin (batch statistics) and not for the NF model."""
    rng = np.random.default_rng(1)
    batch = rng.normal(size=(4, 32, 32, 3)).astype(np.float32)
    other = batch.copy()
    other[1:] = rng.normal(1.0, 2.0, size=(3, 32, 32, 3))
    key = jax.random.key(0)
    for name, coupled in (("bn_resnet26", True), ("nf_resnet26", False)):
        model = _twin(name)
        params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
        # a trained-looking classifier (it starts at zero-mean N(0, 0.01)) so the logits differ clearly
        fns = ModelFns(model)
        _, state = fns.init_values(model)
        a, new_state = fns.apply(params, state, batch, train=True, key=key)
        b, _ = fns.apply(params, state, other, train=True, key=key)
        gap = float(np.abs(np.asarray(a[0]) - np.asarray(b[0])).max())
        scale = float(np.abs(np.asarray(a[0])).max())
        if coupled:
            assert gap > 1e-2 * scale, (name, gap, scale)
            changed = jax.tree.map(lambda s, n: not np.allclose(s, n), state, new_state)
            assert all(jax.tree.leaves(changed))  # every running average moved this step
            a_eval, _ = fns.apply(params, state, batch, train=False)
            b_eval, _ = fns.apply(params, state, other, train=False)
            np.testing.assert_allclose(np.asarray(a_eval[0]), np.asarray(b_eval[0]), rtol=1e-5, atol=1e-6)
        else:
            assert gap <= 1e-5 * max(scale, 1e-6), (name, gap, scale)


@pytest.mark.slow  # trains 4 tiny runs (~30-80 s); `pytest -m slow`
def test_tiny_grid_writes_rows_and_plot(digits_root, tmp_path):
    data = sb.Data(prepare="digits", root=str(digits_root))
    kwargs = dict(models=["nf_resnet26", "bn_resnet26"], batch_sizes=[8, 2], seeds=[0], epochs=0.02, data=data)
    rows = sb.run_grid(tiny_base(), tmp_path, **kwargs)

    saved = json.loads((tmp_path / "small_batch.json").read_text())
    assert saved == rows
    assert [(r["model"], r["norm"], r["batch_size"]) for r in saved] == [
        ("nf_resnet26", "nf", 8),
        ("bn_resnet26", "bn", 8),
        ("nf_resnet26", "nf", 2),
        ("bn_resnet26", "bn", 2),
    ]
    for r in saved:
        assert tuple(r) == sb.ROW_KEYS
        assert r["steps"] == int(1497 * 0.02) // r["batch_size"] and r["seed"] == 0
        assert 0.0 <= r["top1"] <= 1.0 and 0.0 <= r["ema_top1"] <= 1.0 and r["seconds"] > 0
        # the row holds the trainer's own final evaluation of that run
        lines = (tmp_path / "runs" / f"{r['model']}_b{r['batch_size']}_s0" / "metrics.jsonl").read_text()
        final = [m for m in map(json.loads, lines.splitlines()) if m["split"] == "eval"][-1]
        assert (final["step"], final["top1"], final["ema_top1"]) == (r["steps"], r["top1"], r["ema_top1"])
    with Image.open(tmp_path / "small_batch.png") as png:
        assert png.format == "PNG" and png.size == (720, 288)  # 9 x 3.6 in at 80 dpi
    table = sb.format_table(saved)
    assert "| nf_resnet26 | top-1 |" in table and "| bn_resnet26 | EMA top-1 |" in table and "55.7 %" in table

    # Finished runs are reused (same rows, no training); other settings are refused.
    assert sb.run_grid(tiny_base(), tmp_path, **kwargs) == rows
    with pytest.raises(ValueError, match="other settings"):
        sb.run_grid(tiny_base(), tmp_path, **{**kwargs, "epochs": 0.03})


def test_textured_digits_folder(tmp_path):
    from nf.data import ImageFolderSource, prepare_textured_digits
    from nf.data.digits import load_digit_images, split_indices
    from nf.data.textured_digits import render_textured_digit

    root = prepare_textured_digits(tmp_path / "tex")
    train, test = ImageFolderSource(root / "train"), ImageFolderSource(root / "test")
    assert (len(train), len(test), train.classes) == (1497, 300, [str(c) for c in range(10)])
    glyphs, labels = load_digit_images()
    i = int(split_indices(labels)[1][0])  # the first test image
    path = root / "test" / str(labels[i]) / f"{i:04d}.png"
    image = np.asarray(Image.open(path))
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, render_textured_digit(glyphs[i], np.random.default_rng([0, 1, i])))
    # the strokes are painted in a bright colour (one channel 255) over a background <= 200
    stroke = image.max(axis=-1) == 255
    assert 0 < stroke.sum() < 32 * 32 / 2 and np.all(image[~stroke] <= 200)
    means = [
        np.asarray(Image.open(root / "train" / "3" / name)).mean(axis=(0, 1))
        for name in sorted(p.name for p in (root / "train" / "3").iterdir())[:20]
    ]
    assert np.std(means, axis=0).min() > 10  # every image has its own colour statistics
    assert prepare_textured_digits(root) == root  # prepared: nothing to do
    with pytest.raises(ValueError, match="written by prepare_textured_digits with"):
        prepare_textured_digits(root, seed=1)
