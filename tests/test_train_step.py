"""The real train step (`nf.train.trainer.setup_training`: jitted, guarded, donated) against a
re-derivation written here from the papers' formulas, step by step from the same state and
batches: softmax cross-entropy with label smoothing on non-uniform logits, adaptive gradient
clipping per unit (NFNet paper §3; the classifier exempt), coupled weight decay on kernels only,
SGD with Nesterov momentum, the learning rate of that step (linear warmup, cosine, scaled by
batch/256) and the EMA with its warm-up decay `min(decay, (1+t)/(10+t))`. Nothing of
`nf.train.optim` or the task's loss is used by the reference; the model's forward pass is nf's
(checked against timm and DeepMind elsewhere) and gives the reference its gradients."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

STEPS = 4  # step 0 (lr 0: warmup from 0), 1 (warmup), 2 (peak), 3 (cosine)
BATCH, PX, CLASSES = 16, 16, 10
RECIPE = {
    "batch_size": BATCH,
    "total_steps": 6,
    "optimizer.lr": 0.8,  # x 16/256 (scale_lr_by_batch) = 0.05
    "optimizer.scale_lr_by_batch": True,
    "optimizer.warmup_steps": 2,
    "optimizer.end_lr": 0.001,
    "optimizer.momentum": 0.9,
    "optimizer.nesterov": True,
    "optimizer.weight_decay": 1e-2,  # large enough to move every kernel visibly in 4 steps
    "optimizer.label_smoothing": 0.1,
    "optimizer.agc_clip": 0.02,  # clips some units and not others (asserted below)
    "optimizer.ema_decay": 0.25,  # the warm-up term (1+t)/(10+t) wins at t=0,1 and the decay from t=3
    "model.stochastic_depth": 0.0,
    "model.dropout": 0.0,
}
# Tolerances on each leaf's change in one step, relative to its largest entry, on top of the
# float32 rounding of the stored parameters (4 ulp of max|w|; the only error seen on XLA:CPU: the
# reference differentiates the same forward pass, in the same dtype, as the step).
# float32: the two programs may order float32 reductions (conv gradients, unit norms) differently:
# 1e-5. bfloat16: activations and their gradients carry 8 mantissa bits (eps 2^-8 = 3.9e-3); a
# different fusion in the two programs may round an operand the other way: one eps.
TOLERANCE = {"": 1e-5, "bfloat16": 4e-3}
F32_EPS = float(np.finfo(np.float32).eps)


# ------------------------------------------------------------- the reference (papers' formulas)


def ref_learning_rate(t: int, lr: float, batch: int, total: int, warmup: int, end: float) -> float:
    """NFNet recipe: lr * batch / 256, linear warmup from 0 over `warmup` steps, cosine to `end`."""
    base = lr * batch / 256
    if t < warmup:
        return base * t / warmup
    return end + (base - end) * 0.5 * (1 + math.cos(math.pi * (t - warmup) / (total - warmup)))


def ref_loss(logits: jax.Array, labels: jax.Array, smoothing: float) -> jax.Array:
    """Mean cross-entropy against (1 - e) * one-hot + e / C (Szegedy et al. 2016)."""
    logits = logits.astype(jnp.float32)
    targets = (1 - smoothing) * (labels[:, None] == jnp.arange(logits.shape[-1])) + smoothing / logits.shape[-1]
    log_p = logits - jax.scipy.special.logsumexp(logits, axis=-1, keepdims=True)
    return -jnp.mean(jnp.sum(targets * log_p, axis=-1))


def ref_agc(g: np.ndarray, w: np.ndarray, stack: int, clip: float) -> tuple[np.ndarray, int, int]:
    """NFNet paper eq. 3 per unit: a unit is a whole scalar/vector, an output unit of a kernel
    (the norm runs over every axis but the last); leading stacked-block axes index separate
    blocks. Each unit is clipped to clip * max(||W||, 1e-3). Returns (clipped, units clipped, units)."""
    blocks_g = g.reshape((-1, *g.shape[stack:])) if stack else g[None]
    blocks_w = w.reshape((-1, *w.shape[stack:])) if stack else w[None]
    out, clipped_units, units = np.empty_like(blocks_g), 0, 0
    for b, (gb, wb) in enumerate(zip(blocks_g, blocks_w)):
        if gb.ndim <= 1:
            units_g, units_w = gb.reshape(1, -1), wb.reshape(1, -1)
        else:
            units_g, units_w = gb.reshape(-1, gb.shape[-1]).T, wb.reshape(-1, wb.shape[-1]).T
        g_norm = np.sqrt((units_g**2).sum(axis=1, keepdims=True))
        max_norm = clip * np.maximum(np.sqrt((units_w**2).sum(axis=1, keepdims=True)), 1e-3)
        scale = np.where(g_norm > max_norm, max_norm / np.maximum(g_norm, 1e-6), 1.0)
        clipped = units_g * scale
        clipped_units, units = clipped_units + int(np.sum(scale < 1)), units + len(scale)
        out[b] = clipped.reshape(gb.shape) if gb.ndim <= 1 else clipped.T.reshape(gb.shape)
    return out.reshape(g.shape), clipped_units, units


class Reference:
    """Params, Nesterov momentum buffers and EMA carried in float64 numpy, one step at a time."""

    def __init__(self, state: dict, leaves: dict, config):
        self.params = {k: np.asarray(v, np.float64) for k, v in flat(state["params"]).items()}
        self.ema = {k: np.asarray(v, np.float64) for k, v in flat(state["ema"]).items()}
        self.trace = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.leaves, self.opt, self.config = leaves, config.optimizer, config
        self.clipped_units = self.units = 0

    def step(self, t: int, grads: dict[str, np.ndarray]) -> float:
        opt = self.opt
        lr = ref_learning_rate(t, opt.lr, self.config.batch_size, self.config.total_steps, opt.warmup_steps, opt.end_lr)
        decay = min(opt.ema_decay, (1 + t) / (10 + t))
        for k, w in self.params.items():
            stack, classifier = self.leaves[k]
            g = np.asarray(grads[k], np.float64)
            if not classifier:  # the final linear layer is not clipped (NFNet paper §3)
                g, clipped, units = ref_agc(g, w, stack, opt.agc_clip)
                self.clipped_units, self.units = self.clipped_units + clipped, self.units + units
            if w.ndim - stack >= 2:  # kernels decay; gains, biases, skip gains do not
                g = g + opt.weight_decay * w
            self.trace[k] = opt.momentum * self.trace[k] + g
            self.params[k] = w - lr * (g + opt.momentum * self.trace[k])  # Nesterov
        for k in self.ema:  # the EMA of the updated parameters
            self.ema[k] = decay * self.ema[k] + (1 - decay) * self.params[k]
        return lr


# ------------------------------------------------------------------------------------ helpers


def flat(tree) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def leaf_facts(model: nnx.Module) -> dict[str, tuple[int, bool]]:
    """{path: (stacked block axes, is the classifier)} from the model's own variable metadata."""
    params = nnx.to_pure_dict(
        jax.tree.map(
            lambda v: (v.get_metadata().get("stack_axes", 0), bool(v.get_metadata().get("classifier", False))),
            nnx.state(model, nnx.Param),
            is_leaf=lambda x: isinstance(x, nnx.Variable),
        )
    )
    return {
        jax.tree_util.keystr(p): v
        for p, v in jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: isinstance(x, tuple))[0]
    }


def assert_close_per_leaf(got: dict, want: dict, before: dict, rtol: float, what: str) -> None:
    """Each leaf's change from `before` agrees within rtol of its largest entry, plus the float32
    rounding of the stored values (a change is a difference of float32 numbers of size |w|)."""
    assert got.keys() == want.keys()
    for k in want:
        d_got, d_want = got[k].astype(np.float64) - before[k], want[k] - before[k]
        scale = np.abs(d_want).max()
        assert scale > 0, f"{what} {k} did not move"
        err = np.abs(d_got - d_want).max()
        allowed = rtol * scale + 4 * F32_EPS * np.abs(want[k]).max()
        assert err <= allowed, f"{what} {k}: change differs by {err:.3g} of {scale:.3g} (allowed {allowed:.3g})"


# ------------------------------------------------------------------------------------- the test


@pytest.mark.parametrize("dtype", ["", "bfloat16"])
def test_train_step_matches_the_papers_formulas(tiny_config, dtype):
    from nf.tasks import get_task
    from nf.train.sharding import make_mesh
    from nf.train.trainer import setup_training

    config = tiny_config({**RECIPE, "model.dtype": dtype})
    task = get_task(config, num_classes=CLASSES)
    setup = setup_training(config, task, make_mesh(config.mesh))

    # Non-uniform logits: a classifier of N(0, 1) weights (its init N(0, 0.01) gives near-uniform
    # ones, where any target distribution has the same loss gradient direction up to scale).
    rng = np.random.default_rng(0)
    state = jax.tree.map(np.asarray, jax.device_get(setup.state))
    state["params"]["head"]["kernel"] = rng.normal(size=state["params"]["head"]["kernel"].shape).astype(np.float32)
    state["ema"] = jax.tree.map(np.copy, state["params"])
    ref = Reference(state, leaf_facts(nnx.eval_shape(task.build_model)), config)
    model_state = state["model_state"]
    key = jax.random.key(0)  # no stochastic depth or dropout: the forward pass ignores it

    @jax.jit
    def ref_grads(params, batch):
        def loss_fn(p):
            logits, _ = setup.fns.apply(p, model_state, batch["image"], train=True, key=key)
            return ref_loss(logits, batch["label"], config.optimizer.label_smoothing), logits

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    live = jax.device_put(state, setup.state_shard)
    counters = setup.counters
    for t in range(STEPS):
        batch = {
            "image": rng.normal(size=(BATCH, PX, PX, 3)).astype(np.float32),
            "label": rng.integers(0, CLASSES, BATCH).astype(np.int32),
        }
        params_f32 = jax.tree.map(lambda x: x.astype(np.float32), unflatten(ref.params, state["params"]))
        (loss, logits), grads = ref_grads(params_f32, batch)
        assert float(np.std(np.asarray(logits, np.float32), axis=-1).min()) > 0.3  # non-uniform
        before = {k: v.copy() for k, v in ref.params.items()}
        ema_before = {k: v.copy() for k, v in ref.ema.items()}
        lr = ref.step(t, flat(grads))

        live, metrics, counters = setup.train_step(live, batch, counters)
        got = jax.device_get(live)
        assert int(got["step"]) == t + 1
        assert float(metrics["learning_rate"]) == pytest.approx(lr, rel=1e-6, abs=1e-12)
        assert float(metrics["loss"]) == pytest.approx(float(loss), rel=TOLERANCE[dtype])
        grad_norm = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in flat(grads).values()))
        assert float(metrics["grad_norm"]) == pytest.approx(grad_norm, rel=TOLERANCE[dtype])
        if t == 0:  # lr 0: nothing moves, the momentum and the EMA start
            for k, v in flat(got["params"]).items():
                np.testing.assert_array_equal(v, before[k].astype(np.float32))
        else:
            assert_close_per_leaf(flat(got["params"]), ref.params, before, TOLERANCE[dtype], f"step {t} param")
            assert_close_per_leaf(flat(got["ema"]), ref.ema, ema_before, TOLERANCE[dtype], f"step {t} EMA")
        # Continue both from the real state: the reference's float64 values stay with its own
        # momentum buffers, the parameters it differentiates next are the real ones.
        ref.params = {k: v.astype(np.float64) for k, v in flat(got["params"]).items()}
        ref.ema = {k: v.astype(np.float64) for k, v in flat(got["ema"]).items()}
    # The recipe exercised both sides of AGC's threshold.
    assert 0 < ref.clipped_units < ref.units, (ref.clipped_units, ref.units)


def unflatten(values: dict[str, np.ndarray], like):
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(like)[0]]
    return jax.tree_util.tree_unflatten(jax.tree.structure(like), [values[p] for p in paths])
