"""The optimizer recipe against independent numpy references (NFNet paper §3): adaptive gradient
clipping per unit (and per scanned block), the weight-decay mask, coupled weight decay before
Nesterov momentum, the EMA warm-up formula and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from nf.layers.regularizers import SkipGain
from nf.models import create_model
from nf.models.pure import LeafInfo, leaf_info
from nf.train.optim import (
    adaptive_grad_clip,
    decay_mask,
    ema_decay,
    ema_update,
    learning_rate_schedule,
    make_optimizer,
)

CLIP = 0.05


# ---------------------------------------------------------------- numpy references (NFNet paper)


def np_agc_block(g: np.ndarray, w: np.ndarray, clip: float) -> np.ndarray:
    """AGC of one (unstacked) tensor, written unit by unit with explicit loops."""
    g, w = np.asarray(g, np.float64), np.asarray(w, np.float64)

    def clip_unit(gu, wu):
        w_norm, g_norm = math.sqrt(float(np.sum(wu * wu))), math.sqrt(float(np.sum(gu * gu)))
        max_norm = clip * max(w_norm, 1e-3)
        return gu * (max_norm / max(g_norm, 1e-6)) if g_norm > max_norm else gu

    if g.ndim <= 1:  # scalars and vectors: the whole tensor is one unit
        return clip_unit(g, w)
    out = np.empty_like(g)
    for o in range(g.shape[-1]):  # linear (in, out) and HWIO conv kernels: one unit per output
        out[..., o] = clip_unit(g[..., o], w[..., o])
    return out


def np_agc(g: np.ndarray, w: np.ndarray, clip: float, stack_axes: int = 0, classifier: bool = False) -> np.ndarray:
    """AGC of a possibly stacked leaf: every scanned block clipped on its own."""
    if classifier:
        return np.asarray(g, np.float64)
    if stack_axes == 0:
        return np_agc_block(g, w, clip)
    assert stack_axes == 1
    return np.stack([np_agc(g[i], w[i], clip) for i in range(g.shape[0])])


def _unit_axis_count(shape, stack_axes):
    rank = len(shape) - stack_axes
    return 1 if rank <= 1 else shape[-1]


def random_leaf(rng: np.random.Generator, shape, stack_axes=0):
    """Weights and gradients whose per-unit norm ratios spread over 1e-4..1e1, so that with
    CLIP some units are clipped and others not; one unit has all-zero weights (the 1e-3 floor) and
    one has a zero gradient."""
    w = rng.normal(size=shape).astype(np.float32)
    g = rng.normal(size=shape).astype(np.float32)
    blocks = shape[:stack_axes]
    units = _unit_axis_count(shape, stack_axes)
    scale = np.exp(rng.uniform(np.log(1e-4), np.log(10.0), size=(*blocks, units))).astype(np.float32)
    if len(shape) - stack_axes >= 2:
        bshape = (*blocks,) + (1,) * (len(shape) - stack_axes - 1) + (units,)
    else:
        bshape = (*blocks,) + (1,) * (len(shape) - stack_axes)
        scale = scale[..., 0]
    g = g * scale.reshape(bshape)
    if len(shape) - stack_axes >= 2 and units > 2:
        w[..., 0] = 0.0  # weight norm below 1e-3: max_norm = CLIP * 1e-3
        g[..., 1] = 0.0  # nothing to clip
    return w, g


# shapes: scalar, vector, linear (in, out), HWIO conv, stacked conv (n, kh, kw, cin, cout), stacked
# vector (n, c) and stacked scalar gains (n,)
CASES = {
    "scalar": ((), 0),
    "vector": ((7,), 0),
    "linear": ((12, 9), 0),
    "conv": ((3, 3, 5, 6), 0),
    "stacked_conv": ((3, 3, 3, 4, 5), 1),
    "stacked_vector": ((3, 6), 1),
    "stacked_scalar": ((4,), 1),
}


def _hand_tree(seed=0):
    rng = np.random.default_rng(seed)
    params, grads, info = {}, {}, {}
    for name, (shape, stack) in CASES.items():
        params[name], grads[name] = random_leaf(rng, shape, stack)
        info[name] = LeafInfo(stack_axes=stack, unit_rank=len(shape) - stack, classifier=False)
    # the classifier's kernel and bias: huge gradients, never clipped
    params["head_kernel"], grads["head_kernel"] = (
        rng.normal(size=(12, 10)).astype(np.float32),
        1e3 * np.ones((12, 10), np.float32),
    )
    params["head_bias"], grads["head_bias"] = np.zeros(10, np.float32), 1e3 * np.ones(10, np.float32)
    info["head_kernel"] = LeafInfo(0, 2, True)
    info["head_bias"] = LeafInfo(0, 1, True)
    return params, grads, info


def _apply_agc(info, grads, params, clip=CLIP):
    tx = adaptive_grad_clip(clip, info)
    out, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    return jax.tree.map(np.asarray, out)


def test_agc_matches_numpy_reference_per_unit_and_per_block():
    params, grads, info = _hand_tree()
    clipped = _apply_agc(info, grads, params)
    n_clipped = n_kept = 0
    for name in params:
        want = np_agc(grads[name], params[name], CLIP, info[name].stack_axes, info[name].classifier)
        np.testing.assert_allclose(clipped[name], want, rtol=2e-5, atol=1e-7, err_msg=name)
        if info[name].classifier:
            np.testing.assert_array_equal(clipped[name], grads[name], err_msg=name)
        changed = ~np.isclose(want, grads[name], rtol=0, atol=0)
        n_clipped += int(changed.sum())
        n_kept += int((~changed).sum())
    # the random scales really exercise both branches
    assert n_clipped > 50 and n_kept > 50


def test_agc_stacked_blocks_are_independent():
    """A stacked kernel clipped with stack_axes=1 equals each block clipped alone; treating the
    stack axis as part of the unit (stack_axes=0) gives a different answer."""
    rng = np.random.default_rng(1)
    w, g = random_leaf(rng, (3, 3, 3, 4, 5), stack_axes=1)
    g[1] *= 100.0  # one block with much larger gradients than the others
    stacked = _apply_agc({"k": LeafInfo(1, 4, False)}, {"k": g}, {"k": w})["k"]
    for i in range(3):
        alone = _apply_agc({"k": LeafInfo(0, 4, False)}, {"k": g[i]}, {"k": w[i]})["k"]
        np.testing.assert_allclose(stacked[i], alone, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(stacked[i], np_agc_block(g[i], w[i], CLIP), rtol=2e-5, atol=1e-7)
    # a (wrong) rank-5 "unit" norm over axes 0..3 mixes the blocks
    mixed = _apply_agc({"k": LeafInfo(0, 5, False)}, {"k": g}, {"k": w})["k"]
    assert not np.allclose(mixed, stacked)


def test_agc_matches_optax_on_unstacked_layouts():
    """optax.adaptive_grad_clip implements the same rule for unstacked kernels (NFNet paper)."""
    params, grads, info = _hand_tree(2)
    names = ["scalar", "vector", "linear", "conv"]
    ours = _apply_agc({k: info[k] for k in names}, {k: grads[k] for k in names}, {k: params[k] for k in names})
    ref = optax.adaptive_grad_clip(CLIP)
    as_jnp = lambda tree: {k: jnp.asarray(tree[k]) for k in names}
    theirs, _ = ref.update(as_jnp(grads), ref.init(None), as_jnp(params))
    for k in names:
        np.testing.assert_allclose(ours[k], np.asarray(theirs[k]), rtol=2e-5, atol=1e-7, err_msg=k)


# ---------------------------------------------------------------- a real model's parameter tree


@pytest.fixture(scope="module")
def small_model():
    """Abstract (shape-only) small NF-ResNet with SE: metadata without running any init op."""
    return nnx.eval_shape(
        lambda: create_model(
            "nf_resnet26",
            depths=(1, 2, 1, 1),
            widths=(32, 64, 128, 256),
            stem_width=16,
            num_classes=10,
            se_ratio=0.25,
        )
    )


def _flat_variables(model):
    """{path tuple: Variable} of the model's parameters, from the graph, not from leaf_info."""
    state = nnx.state(model, nnx.Param)
    flat = jax.tree_util.tree_flatten_with_path(state, is_leaf=lambda x: isinstance(x, nnx.Variable))[0]
    return {tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): v for path, v in flat}


def _flat_pure(tree, is_leaf=None):
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
    return {tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): v for path, v in flat}


def _independent_stack_axes(path) -> int:
    return 1 if "rest" in path else 0  # a stage's blocks after the first are scanned (stacked)


def test_model_leaf_info_and_agc(small_model):
    variables = _flat_variables(small_model)
    info = leaf_info(nnx.state(small_model, nnx.Param))
    flat_info = _flat_pure(info, is_leaf=lambda x: isinstance(x, LeafInfo))
    assert set(flat_info) == set(variables)
    for path, v in variables.items():
        stack = _independent_stack_axes(path)
        want = LeafInfo(stack, len(v.shape) - stack, path[0] == "head")
        assert flat_info[path] == want, path
    # the model really has stacked kernels, stacked vectors and stacked skip gains
    ranks = {(i.stack_axes, i.unit_rank) for i in flat_info.values()}
    assert {(1, 4), (1, 2), (1, 1), (1, 0), (0, 4), (0, 2), (0, 1), (0, 0)} <= ranks

    rng = np.random.default_rng(3)
    params, grads = {}, {}
    for path, v in variables.items():
        params[path], grads[path] = random_leaf(rng, tuple(v.shape), _independent_stack_axes(path))
    # rebuild pure-dict trees with the structure of `info`
    treedef = jax.tree.structure(nnx.to_pure_dict(nnx.state(small_model, nnx.Param)))
    order = list(_flat_pure(nnx.to_pure_dict(nnx.state(small_model, nnx.Param))))
    p_tree = jax.tree.unflatten(treedef, [params[k] for k in order])
    g_tree = jax.tree.unflatten(treedef, [grads[k] for k in order])
    clipped = _flat_pure(_apply_agc(info, g_tree, p_tree))
    for path in order:
        want = np_agc(grads[path], params[path], CLIP, _independent_stack_axes(path), path[0] == "head")
        np.testing.assert_allclose(clipped[path], want, rtol=2e-5, atol=1e-7, err_msg=str(path))
    np.testing.assert_array_equal(clipped[("head", "kernel")], grads[("head", "kernel")])


def test_decay_mask_on_model(small_model):
    variables = _flat_variables(small_model)
    mask = _flat_pure(decay_mask(leaf_info(nnx.state(small_model, nnx.Param))))
    assert set(mask) == set(variables)
    for path, v in variables.items():
        # by variable type/role: kernels decay; gains, biases and SkipInit gains do not
        by_type = (not isinstance(v, SkipGain)) and path[-1] == "kernel"
        # by shape: a kernel is rank >= 2 per block (stacked leaves carry one extra leading axis)
        by_shape = len(v.shape) - _independent_stack_axes(path) >= 2
        assert by_type == by_shape, path
        assert bool(mask[path]) == by_type, path
    decayed = {p for p, m in mask.items() if m}
    assert ("head", "kernel") in decayed and ("head", "bias") not in decayed
    assert any("se" in p and p[-1] == "kernel" for p in decayed)  # SE linear kernels
    assert any("rest" in p and p[-1] == "kernel" for p in decayed)  # stacked conv kernels
    skip = [p for p, v in variables.items() if isinstance(v, SkipGain)]
    assert len(skip) == 5 and not any(mask[p] for p in skip)  # 4 first blocks + 1 stacked
    stacked_vectors = [p for p in variables if "rest" in p and p[-1] in ("gain", "bias")]
    assert stacked_vectors and not any(mask[p] for p in stacked_vectors)

    # the optimizer applies exactly this mask: zero gradient, lr 1, no momentum -> -wd * p on kernels
    info = leaf_info(nnx.state(small_model, nnx.Param))
    pure = nnx.to_pure_dict(nnx.state(small_model, nnx.Param))
    p_tree = jax.tree.map(lambda x: jnp.ones(x.shape, jnp.float32), pure)
    tx = make_optimizer(info, learning_rate=1.0, momentum=0.0, weight_decay=0.1)
    upd, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, p_tree), tx.init(p_tree), p_tree)
    for path, u in _flat_pure(upd).items():
        np.testing.assert_allclose(np.asarray(u), -0.1 if mask[path] else 0.0, rtol=1e-6, err_msg=str(path))


# ---------------------------------------------------------------- coupled weight decay + Nesterov


def _np_sgd_nesterov(params, grads_seq, info, lrs, momentum, wd, clip):
    """Hand-written: g <- AGC(g); g <- g + wd * p on kernels; trace = g + m * trace;
    update = g + m * trace (Nesterov); p <- p - lr * update."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    trace = {k: np.zeros_like(v) for k, v in p.items()}
    for grads, lr in zip(grads_seq, lrs, strict=True):
        for k in p:
            i = info[k]
            g = np_agc(grads[k], p[k], clip, i.stack_axes, i.classifier) if clip else np.asarray(grads[k], np.float64)
            if i.unit_rank >= 2:
                g = g + wd * p[k]
            trace[k] = g + momentum * trace[k]
            p[k] = p[k] - lr * (g + momentum * trace[k])
    return p


@pytest.mark.parametrize("clip", [None, CLIP])
def test_coupled_weight_decay_nesterov_matches_numpy(clip):
    params, _, info = _hand_tree(4)
    rng = np.random.default_rng(5)
    grads_seq = [
        {k: (0.01 * rng.normal(size=np.shape(v))).astype(np.float32) for k, v in params.items()} for _ in range(3)
    ]
    lr, momentum, wd = 0.5, 0.9, 0.3  # large decay: a decoupled or misplaced decay would show
    schedule = lambda count: lr * (count + 1.0)  # the schedule is queried with the update count
    tx = make_optimizer(info, learning_rate=schedule, momentum=momentum, nesterov=True, weight_decay=wd, agc_clip=clip)
    state = tx.init(params)
    p = {k: jnp.asarray(v) for k, v in params.items()}
    step = jax.jit(lambda g, s, p: tx.update(g, s, p))
    for g in grads_seq:
        upd, state = step(g, state, p)
        p = jax.tree.map(lambda a, b: a + b, p, upd)
    want = _np_sgd_nesterov(params, grads_seq, info, [lr * 1, lr * 2, lr * 3], momentum, wd, clip)
    for k in params:
        np.testing.assert_allclose(np.asarray(p[k]), want[k], rtol=1e-4, atol=1e-6, err_msg=k)

    # decoupled (AdamW-style, decay after momentum) would differ: the reference is discriminative
    p1 = {k: np.asarray(v, np.float64) for k, v in params.items()}
    trace = {k: np.zeros_like(v) for k, v in p1.items()}
    for g_all, lr_t in zip(grads_seq, [lr, 2 * lr, 3 * lr], strict=True):
        for k in p1:
            g = np_agc(g_all[k], p1[k], clip, info[k].stack_axes, info[k].classifier) if clip else g_all[k]
            trace[k] = g + momentum * trace[k]
            p1[k] = p1[k] - lr_t * (g + momentum * trace[k]) - lr_t * wd * p1[k] * (info[k].unit_rank >= 2)
    assert not np.allclose(p1["conv"], want["conv"], rtol=1e-3)


# ---------------------------------------------------------------- EMA and schedule (paper App. A)


@pytest.mark.parametrize("decay", [0.99999, 0.5])
def test_ema_matches_formula(decay):
    ts = np.arange(0, 60)
    got = np.asarray(jax.vmap(lambda t: ema_decay(t, decay))(jnp.asarray(ts)))
    want = np.minimum(decay, (1.0 + ts) / (10.0 + ts))
    np.testing.assert_allclose(got, want, rtol=1e-6)

    rng = np.random.default_rng(6)
    ema = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": np.float32(rng.normal())}
    ema_np = {k: np.asarray(v, np.float64) for k, v in ema.items()}
    update = jax.jit(lambda e, p, t: ema_update(e, p, t, decay))
    for t in range(12):
        params = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": np.float32(rng.normal())}
        ema = update(ema, params, jnp.asarray(t, jnp.int32))
        d = min(decay, (1 + t) / (10 + t))
        ema_np = {k: d * ema_np[k] + (1 - d) * params[k] for k in ema_np}
    for k in ema_np:
        np.testing.assert_allclose(np.asarray(ema[k]), ema_np[k], rtol=1e-5, err_msg=k)


def _np_schedule(t, base, total, warmup, end):
    if t < warmup:
        return base * t / warmup
    frac = min(max((t - warmup) / (total - warmup), 0.0), 1.0)
    return end + (base - end) * 0.5 * (1.0 + math.cos(math.pi * frac))


@pytest.mark.parametrize("end", [0.0, 0.001])
def test_warmup_cosine_schedule(end):
    base, total, warmup = 0.4, 1000, 50
    s = learning_rate_schedule(base, total, warmup, end)
    mid = warmup + (total - warmup) // 2
    expect = {0: 0.0, warmup // 2: base / 2, warmup: base, mid: end + (base - end) / 2, total: end}
    for t, v in expect.items():
        assert float(s(t)) == pytest.approx(v, rel=1e-5, abs=1e-7), t
    for t in range(0, total + 1, 37):
        assert float(s(t)) == pytest.approx(_np_schedule(t, base, total, warmup, end), rel=1e-4, abs=1e-7), t


@pytest.mark.parametrize("total", [3, 50, 51])
def test_schedule_shorter_than_warmup(total):
    """A run shorter than (or as long as) its warmup, e.g. a smoke run `--config.total_steps=3` of a
    config with 50 warmup steps, keeps the warmup ramp instead of failing."""
    base, warmup = 0.04, 50
    s = learning_rate_schedule(base, total, warmup)
    for t in range(min(total, warmup) + 1):
        assert float(s(t)) == pytest.approx(base * t / warmup, rel=1e-5, abs=1e-9), t
