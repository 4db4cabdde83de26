"""bfloat16 compute end to end (every NFNet recipe: bf16 activations, float32 master weights): a
tiny NFNet's forward pass and gradients against the same model in float32, and a short training
run with `model.dtype="bfloat16"`. The conv formulations' bf16 paths are in test_conv_ops.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nf.models import create_model

# A tiny NFNet with every part of F0 (deep stem, SE, two grouped 3x3 convs, transitions with
# average pooling, final conv x2, GELU), group width 8; skip gains 1 and no stochastic depth or
# dropout so that every branch counts.
TINY_NFNET = dict(
    depths=(1, 2),
    widths=(16, 32),
    strides=(1, 2),
    group_width=8,
    stem_widths=(4, 8, 8),
    skipinit=False,
    stochastic_depth=0.0,
    dropout=0.0,
    num_classes=10,
)
# bf16 keeps 8 mantissa bits (eps 2^-8 = 3.9e-3); ~20 layers each round their activations once, so
# logits and gradients agree with float32 to a few eps: 2e-2 of their largest entry (XLA:CPU
# achieves a whole-gradient relative L2 error of 1.5e-2).
BF16_RTOL = 2e-2


def _loss_and_grads(model: nnx.Module, x: jax.Array, labels: jax.Array):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    @jax.jit
    def run(params):
        def loss_fn(p):
            logits = nnx.merge(graphdef, p, rest)(x, train=True)
            return jnp.mean(-jax.nn.log_softmax(logits.astype(jnp.float32))[jnp.arange(len(labels)), labels]), logits

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    return run(params)


def test_tiny_nfnet_bf16_forward_and_gradients_match_float32():
    f32 = create_model("nfnet_f0", seed=0, **TINY_NFNET)
    bf16 = create_model("nfnet_f0", seed=0, dtype=jnp.bfloat16, **TINY_NFNET)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, 32, 32, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 4))
    (loss32, logits32), grads32 = _loss_and_grads(f32, x, labels)
    (loss16, logits16), grads16 = _loss_and_grads(bf16, x, labels)

    logits32, logits16 = np.asarray(logits32, np.float64), np.asarray(logits16, np.float64)
    scale = np.abs(logits32).max()
    assert np.abs(logits16 - logits32).max() <= BF16_RTOL * scale
    assert np.abs(logits16 - logits32).max() > 1e-6 * scale  # the bf16 model did compute in bf16
    assert float(loss16) == pytest.approx(float(loss32), rel=BF16_RTOL)
    leaves32 = jax.tree_util.tree_leaves_with_path(grads32)
    leaves16 = jax.tree.leaves(grads16)
    assert len(leaves32) == len(leaves16)
    largest = max(float(np.abs(np.asarray(g)).max()) for _, g in leaves32)
    diff2 = norm2 = 0.0
    for (path, g32), g16 in zip(leaves32, leaves16):
        name = jax.tree_util.keystr(path)
        assert g16.dtype == jnp.float32, name  # float32 master weights' gradients
        g32, g16 = np.asarray(g32, np.float64), np.asarray(g16, np.float64)
        diff2, norm2 = diff2 + np.sum((g16 - g32) ** 2), norm2 + np.sum(g32**2)
        # Per leaf, 1e-1 of its largest entry: a gain's or bias's gradient is a sum over the batch
        # and every position of terms of both signs, each with bf16's relative error, so the sum
        # keeps a larger relative error than its terms. Leaves whose gradient is below 1e-2 of the
        # largest (an SE bias behind a ReLU) are all cancellation: only the whole-tree bound.
        scale = np.abs(g32).max()
        if scale >= 1e-2 * largest:
            assert np.abs(g16 - g32).max() <= 5 * BF16_RTOL * scale, name
    assert np.sqrt(diff2 / norm2) <= BF16_RTOL  # the whole gradient


def test_short_training_run_in_bfloat16(tiny_config, tmp_path):
    """The trainer with model.dtype="bfloat16": finite losses, float32 parameters and EMA saved,
    the parameters moved (the step itself against the papers' formulas: test_train_step.py)."""
    from absl import flags

    from nf.inference import load_model
    from nf.train.trainer import train_and_evaluate

    if not flags.FLAGS.is_parsed():  # grain reads absl flags
        flags.FLAGS.mark_as_parsed()
    config = tiny_config({"model.dtype": "bfloat16", "total_steps": 3, "eval_every_steps": 3})
    workdir = tmp_path / "run"
    summary = train_and_evaluate(config, str(workdir))
    assert summary["step"] == 3 and np.isfinite(summary["loss"]) and np.isfinite(summary["ema_loss"])
    ema, _ = load_model(str(workdir), weights="ema")
    raw, _ = load_model(str(workdir), weights="raw")
    for leaf in jax.tree.leaves(nnx.state(raw, nnx.Param)) + jax.tree.leaves(nnx.state(ema, nnx.Param)):
        assert leaf.dtype == jnp.float32
    init = create_model(config.model.name, seed=config.seed, num_classes=10, **_overrides(config))
    moved = [
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(jax.tree.leaves(nnx.state(raw, nnx.Param)), jax.tree.leaves(nnx.state(init, nnx.Param)))
    ]
    assert max(moved) > 1e-4


def _overrides(config) -> dict:
    from nf.tasks.base import model_overrides

    return {k: v for k, v in model_overrides(config).items() if k != "dtype"}
