"""NF-ResNet family against the paper: alpha/beta schedule, parameter counts, registry, the
comparison baselines' init properties, BN running stats and stochastic depth inside scanned
stages, and compile size independent of depth (paper §4)."""

from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nf.layers import Conv
from nf.models import create_model, list_models, stages
from nf.models.stages import block_schedule

# paper §4 / paper: depths of every ResNet variant; §2-3: the families the paper compares.
DEPTHS = {
    26: (2, 2, 2, 2),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
    288: (24, 24, 24, 24),
    600: (50, 50, 50, 50),
}
FAMILIES = ("nf", "nf_se", "nf_se_nox2", "nf_nows", "nf_hegain", "bn", "bn_relu_first", "plain", "skipinit", "fixup")

# Small models for the forward passes (XLA:CPU compile time dominates): two stages, a transition
# block each (stage 1 strided) and one scanned block in stage 1; equal widths share kernel shapes,
# so the per-shape init compiles are paid once for all families.
SMALL = dict(widths=(32, 32), strides=(1, 2), depths=(1, 2), stem_width=16, num_classes=10)


def n_params(model) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@functools.cache
def _abstract(name, overrides):
    return nnx.eval_shape(lambda: create_model(name, **dict(overrides)))


def abstract(name, **overrides):
    """The model's structure without initialising it (cached: tracing costs ~0.5 s a model)."""
    return _abstract(name, tuple(sorted(overrides.items())))


# ---------------------------------------------------------------------------------------------
# alpha / beta / stochastic-depth schedule
# ---------------------------------------------------------------------------------------------


def analytic_schedule(depths, alpha, rate):
    """paper §4 written out: block j>=1 of a stage sees 1/sqrt(1 + j alpha^2); the transition
    block of stage s>0 sees the previous stage's full growth 1/sqrt(1 + depth_{s-1} alpha^2);
    the first block 1. Drop rate of block i of N: rate * i / N."""
    n, i, betas, rates = sum(depths), 0, [], []
    for s, depth in enumerate(depths):
        b, r = [], []
        for j in range(depth):
            if j >= 1:
                b.append(1 / math.sqrt(1 + j * alpha**2))
            elif s == 0:
                b.append(1.0)
            else:
                b.append(1 / math.sqrt(1 + depths[s - 1] * alpha**2))
            r.append(rate * i / n)
            i += 1
        betas.append(b)
        rates.append(r)
    return betas, rates


@pytest.mark.parametrize(
    "depths,alpha,rate",
    [((3, 4, 6, 3), 0.2, 0.1), ((2, 5, 1, 3), 0.5, 0.25), ((1, 1, 1), 0.3, 0.0), ((50, 50, 50, 50), 0.2, 0.5)],
)
def test_block_schedule_matches_analytic_formula(depths, alpha, rate):
    betas, rates = analytic_schedule(depths, alpha, rate)
    schedule = block_schedule(depths, alpha, rate)
    assert len(schedule) == len(depths)
    for s, constants in enumerate(schedule):
        np.testing.assert_allclose(constants.betas, betas[s], rtol=1e-12)
        np.testing.assert_allclose(constants.drop_rates, rates[s], rtol=1e-12, atol=1e-15)
    # spot values: NF-ResNet-50 stage 2 transition sees 1 + 4*0.04 -> 1/sqrt(1.16)
    if depths == (3, 4, 6, 3):
        assert math.isclose(schedule[2].betas[0], 1 / math.sqrt(1.16), rel_tol=1e-12)
        assert math.isclose(schedule[0].betas[2], 1 / math.sqrt(1.08), rel_tol=1e-12)
        assert math.isclose(schedule[3].drop_rates[2], 0.1 * 15 / 16, rel_tol=1e-12)


def test_block_schedule_without_input_scaling_is_all_ones():
    for constants in block_schedule((3, 4, 6, 3), 0.2, 0.1, scale_inputs=False):
        assert all(b == 1.0 for b in constants.betas)


def test_model_stages_carry_the_schedule():
    model = abstract("nf_resnet50", stochastic_depth=0.1, alpha=0.3)
    betas, rates = analytic_schedule(DEPTHS[50], 0.3, 0.1)
    assert len(model.stages) == 4
    for s, stage in enumerate(model.stages):
        np.testing.assert_allclose(np.asarray(stage.betas, np.float64), betas[s], rtol=1e-6)
        np.testing.assert_allclose(np.asarray(stage.drop_rates, np.float64), rates[s], rtol=1e-6, atol=1e-9)
    # baselines (no input scaling) have all betas 1
    for stage in abstract("bn_resnet50").stages:
        np.testing.assert_array_equal(np.asarray(stage.betas), 1.0)


# ---------------------------------------------------------------------------------------------
# Parameter counts
# ---------------------------------------------------------------------------------------------


def nf_resnet_param_count(depths, widths=(256, 512, 1024, 2048), stem=64, ratio=0.25, num_classes=1000,
                          in_ch=3, strides=(1, 2, 2, 2), skip_gains=True, se_ratio=0.0):  # fmt: skip
    """Architecture arithmetic: WS convs carry kernel + gain + bias; bottleneck 1x1 -> 3x3 -> 1x1 at
    width*ratio; a strided / widening transition has a 1x1 shortcut conv; optional SE MLP and
    one scalar skip gain per block; linear head."""

    def ws(k, cin, cout):
        return k * k * cin * cout + 2 * cout

    total, cin = ws(7, in_ch, stem), stem
    for depth, width, stride in zip(depths, widths, strides, strict=True):
        mid = int(width * ratio)
        for j in range(depth):
            c = cin if j == 0 else width
            if j == 0 and (stride > 1 or c != width):
                total += ws(1, c, width)
            total += ws(1, c, mid) + ws(3, mid, mid) + ws(1, mid, width)
            if se_ratio:
                hidden = max(1, int(width * se_ratio))
                total += width * hidden + hidden + hidden * width + width
            total += int(skip_gains)
        cin = width
    return total + cin * num_classes + num_classes


def test_nf_resnet50_parameter_count():
    assert nf_resnet_param_count(DEPTHS[50]) == 25_557_048  # the arithmetic reproduces the paper's count
    assert nf_resnet_param_count(DEPTHS[50], skip_gains=False) == 25_557_032
    assert n_params(abstract("nf_resnet50")) == 25_557_048
    assert n_params(abstract("nf_resnet50", skipinit=False)) == 25_557_032


@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("nf_resnet101", dict(depths=DEPTHS[101])),
        ("nf_se_resnet50", dict(depths=DEPTHS[50], se_ratio=0.25)),
        ("nf_resnet26", dict(depths=DEPTHS[26], widths=(64, 96, 128, 160), stem=24, num_classes=7)),
    ],
)
def test_parameter_count_matches_architecture_arithmetic(name, kwargs):
    overrides = {}
    if "widths" in kwargs:
        overrides = dict(widths=kwargs["widths"], stem_width=kwargs["stem"], num_classes=kwargs["num_classes"])
    assert n_params(abstract(name, **overrides)) == nf_resnet_param_count(**kwargs)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


# paper App. C / NFNet paper: NF-RegNet and NFNet depths
REGNET_DEPTHS = {
    "b0": (1, 3, 6, 6),
    "b1": (2, 4, 7, 7),
    "b2": (2, 4, 8, 8),
    "b3": (2, 5, 9, 9),
    "b4": (2, 6, 11, 11),
    "b5": (3, 7, 14, 14),
    "b6": (3, 8, 16, 16),
    "b7": (4, 10, 19, 19),
    "b8": (4, 11, 22, 22),
}


TIMM_DEPTHS = {  # timm/models/nfnet.py model_cfgs
    "timm_nfnet_l0": (1, 2, 6, 3),
    "timm_eca_nfnet_l0": (1, 2, 6, 3),
    "timm_eca_nfnet_l1": (2, 4, 12, 6),
    "timm_eca_nfnet_l2": (3, 6, 18, 9),
    "timm_nf_regnet_b1": (2, 4, 7, 7),
}


def expected_depths(name: str) -> tuple[int, ...]:
    if name in TIMM_DEPTHS:
        return TIMM_DEPTHS[name]
    if m := re.fullmatch(r"\w+_resnet(\d+)", name):
        return DEPTHS[int(m[1])]
    if m := re.fullmatch(r"nf_regnet_(b\d)", name):
        return REGNET_DEPTHS[m[1]]
    if m := re.fullmatch(r"nfnet_f(\d)(_plus)?", name):
        return tuple((int(m[1]) + 1) * d for d in (1, 2, 6, 3))
    raise AssertionError(f"no reference depths for registered model {name!r}")


def test_registry_names_cover_every_family_and_depth():
    names = set(list_models())
    assert {n for n in names if "_resnet" in n and not n.startswith("timm_")} == {
        f"{f}_resnet{d}" for f in FAMILIES for d in DEPTHS
    }
    assert {f"nf_regnet_{v}" for v in REGNET_DEPTHS} <= names
    assert {f"nfnet_f{i}{plus}" for i in range(8) for plus in ("", "_plus")} <= names


def _check_blocks(model, depths):
    assert tuple(stage.depth for stage in model.stages) == depths
    for stage, depth in zip(model.stages, depths, strict=True):
        if depth == 1:
            assert stage.rest is None
        else:
            leading = {leaf.shape[0] for leaf in jax.tree.leaves(nnx.state(stage.rest, nnx.Param))}
            assert leading == {depth - 1}  # the scanned blocks are stacked on one leading axis


# Every ResNet family at depth 50, NF-ResNet 26 / 101 / 600, and the smallest NF-RegNet and
# NFNet (~0.5-1 s of tracing each); every other registered name runs in the slow test
# (`pytest -m slow`).
FAST_NAMES = sorted(
    {f"{f}_resnet50" for f in FAMILIES} | {f"nf_resnet{d}" for d in (26, 101, 600)} | {"nf_regnet_b0", "nfnet_f0"}
)


@pytest.mark.parametrize("name", FAST_NAMES)
def test_registered_model_builds_with_right_blocks(name):
    _check_blocks(abstract(name), expected_depths(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(list_models()) - set(FAST_NAMES)))
def test_every_registered_model_builds_with_right_blocks(name):
    _check_blocks(abstract(name), expected_depths(name))


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="nf_resnet51") as err:
        create_model("nf_resnet51")
    msg = str(err.value)
    for name in ("nf_resnet50", "bn_resnet101", "fixup_resnet600"):
        assert name in msg


def test_unknown_option_lists_valid_options():
    with pytest.raises(ValueError, match="widht") as err:
        create_model("nf_resnet50", widht=(1, 2, 3, 4))
    msg = str(err.value)
    for option in ("widths", "stochastic_depth", "alpha", "num_classes"):
        assert option in msg


# ---------------------------------------------------------------------------------------------
# Baselines at small size: forward pass, FixUp and SkipInit init properties
# ---------------------------------------------------------------------------------------------

_MODELS: dict[str, nnx.Module] = {}
# skipinit=False: with zero skip gains every branch is hidden and dropping one would change nothing
SD_MODEL = dict(skipinit=False, stochastic_depth=0.5)


def small_model(name: str, **overrides) -> nnx.Module:
    """Real (initialised) small models, built once per session. RBG keys: the same distributions,
    but XLA:CPU compiles the per-shape init ~3x faster than threefry."""
    key = name + repr(sorted(overrides.items()))
    if key not in _MODELS:
        rngs = nnx.Rngs(jax.random.key(0, impl="rbg"))
        _MODELS[key] = create_model(name, rngs=rngs, **{**SMALL, **overrides})
    return _MODELS[key]


# One jitted forward for every model (nnx.jit caches per graph and propagates BatchNorm updates);
# always called with a key so that eval-mode calls of a model share one compile.
forward = nnx.jit(lambda model, x, train, key: model(x, train=train, key=key), static_argnums=2)
KEY = jax.random.PRNGKey(42)


def first_and_stacked_blocks(model, x16, x32):
    """(out, residual, shortcut) of stage 0's transition block on `x16` (16-ch stem output) and
    (out, residual) of stage 1's first scanned block (run standalone) on `x32`, in one jit."""
    graphdef, state = nnx.split(model)

    def run(state, x16, x32):
        m = nnx.merge(graphdef, state)
        first = m.stages[0].first
        out, residual = first(x16, beta=1.0, drop_rate=0.0, key=None, train=False)
        shortcut = first.shortcut(jax.nn.relu(x16))  # the baselines' pre-activation is a plain relu
        rest_def, rest_state = nnx.split(m.stages[1].rest)
        member = nnx.merge(rest_def, jax.tree.map(lambda a: a[0], rest_state))
        out2, residual2 = member(x32, beta=1.0, drop_rate=0.0, key=None, train=False)
        return out, residual, shortcut, out2, residual2

    return [np.asarray(a) for a in jax.jit(run)(state, x16, x32)]


X = jax.random.normal(jax.random.PRNGKey(0), (16, 32, 32, 3))


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("bn_resnet26", dict(depths=(1, 3))),
        ("bn_relu_first_resnet26", {}),
        ("plain_resnet26", {}),
        ("skipinit_resnet26", {}),
        ("fixup_resnet26", {}),
        ("nf_resnet26", SD_MODEL),
    ],
)
def test_baseline_forward_finite(name, overrides):
    logits = np.asarray(forward(small_model(name, **overrides), X, False, KEY))
    assert logits.shape == (16, 10)
    assert np.all(np.isfinite(logits))
    if name != "fixup_resnet26":
        assert np.std(logits) > 0  # FixUp's classifier is zero (checked below)


def test_fixup_init_branch_and_classifier_are_zero():
    model = small_model("fixup_resnet26")
    np.testing.assert_array_equal(np.asarray(model.head.kernel[...]), 0.0)
    np.testing.assert_array_equal(np.asarray(forward(model, X, False, KEY)), 0.0)
    blocks = [s.first for s in model.stages] + [s.rest for s in model.stages if s.rest is not None]
    for block in blocks:
        np.testing.assert_array_equal(np.asarray(block.conv3.kernel[...]), 0.0)
        np.testing.assert_array_equal(np.asarray(block.biases[...]), 0.0)
        np.testing.assert_array_equal(np.asarray(block.multiplier[...]), 1.0)
    # branch convs are He init scaled by L^(-1/(2m-2)) = L^(-1/4) (m = 3 convs per branch, L blocks)
    k = np.concatenate([np.asarray(b.conv2.kernel[...]).ravel() for b in blocks])
    want = math.sqrt(2 / (3 * 3 * 8)) * sum(SMALL["depths"]) ** (-0.25)
    assert abs(k.std() / want - 1) < 0.1, (k.std(), want)

    x16 = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 16))
    x32 = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8, 32))
    out, residual, shortcut, out2, residual2 = first_and_stacked_blocks(model, x16, x32)
    np.testing.assert_array_equal(residual, 0.0)
    np.testing.assert_array_equal(out, shortcut)
    np.testing.assert_array_equal(residual2, 0.0)
    np.testing.assert_array_equal(out2, np.asarray(x32))  # identity block


def test_skipinit_gain_zero_hides_the_residual_branch():
    model = small_model("skipinit_resnet26")
    for stage in model.stages:
        np.testing.assert_array_equal(np.asarray(stage.first.skip_gain[...]), 0.0)
        if stage.rest is not None:
            np.testing.assert_array_equal(np.asarray(stage.rest.skip_gain[...]), 0.0)
    x16 = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 16))
    x32 = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8, 32))
    out, residual, shortcut, out2, residual2 = first_and_stacked_blocks(model, x16, x32)
    assert residual.var() > 1e-3 and residual2.var() > 1e-3  # the branches compute something ...
    np.testing.assert_array_equal(out, shortcut)  # ... that does not reach the output
    np.testing.assert_array_equal(out2, np.asarray(x32))


# ---------------------------------------------------------------------------------------------
# BatchNorm running statistics inside the scanned stages
# ---------------------------------------------------------------------------------------------


def _np_stem(x, kernel):
    """7x7 stride-2 SAME conv (no bias: a BN follows) then 3x3 stride-2 SAME max-pool, in numpy."""
    x, k = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    _, h, w, _ = x.shape
    oh, ow = -(-h // 2), -(-w // 2)
    ph, pw = max((oh - 1) * 2 + 7 - h, 0), max((ow - 1) * 2 + 7 - w, 0)
    xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    y = sum(xp[:, i : i + 2 * oh - 1 : 2, j : j + 2 * ow - 1 : 2, :] @ k[i, j] for i in range(7) for j in range(7))
    h2, w2 = -(-oh // 2), -(-ow // 2)
    ph, pw = max((h2 - 1) * 2 + 3 - oh, 0), max((w2 - 1) * 2 + 3 - ow, 0)
    yp = np.pad(y, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), constant_values=-np.inf)
    return np.max([yp[:, i : i + 2 * h2 - 1 : 2, j : j + 2 * w2 - 1 : 2, :] for i in range(3) for j in range(3)], 0)


def batchnorms(module):
    return [(path, node) for path, node in nnx.iter_graph(module) if isinstance(node, nnx.BatchNorm)]


def test_training_mode_updates_batchnorm_stats_in_scanned_stages():
    # a fresh instance (running stats at 0 / 1) of the cached model's structure: jit cache hits
    model = create_model("bn_resnet26", rngs=nnx.Rngs(jax.random.key(1, impl="rbg")), **{**SMALL, "depths": (1, 3)})
    before = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))
    forward(model, X, False, KEY)  # eval mode: running averages are read, not written
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.array, nnx.state(model, nnx.BatchStat)))

    forward(model, X, True, KEY)

    n_stacked = 0
    for s, stage in enumerate(model.stages):
        for _, bn in batchnorms(stage.first):
            assert np.all(np.asarray(bn.mean[...]) != 0), s
        if stage.rest is None:
            continue
        for path, bn in batchnorms(stage.rest):  # 3 per bottleneck, stacked on a leading axis
            mean, var = np.asarray(bn.mean[...]), np.asarray(bn.var[...])
            assert mean.shape[0] == stage.depth - 1
            for i in range(stage.depth - 1):  # every stacked block got its own update
                assert np.all(mean[i] != 0), (s, path, i)
                assert np.all(var[i] != 1) and np.all(var[i] > 0.9 - 1e-6), (s, path, i)  # 0.9*1 + 0.1*var
            if stage.depth > 2:
                assert not np.allclose(mean[0], mean[1])
            n_stacked += 1
    assert n_stacked == 3
    # exact value for the first BN: momentum 0.9 on the batch statistics of the pooled stem output
    (stem_conv,) = [n for _, n in nnx.iter_graph(model.stem) if isinstance(n, Conv)]
    assert stem_conv.bias is None  # a BN follows
    h = _np_stem(X, stem_conv.kernel[...])
    bn = model.stages[0].first.pre.bn
    np.testing.assert_allclose(np.asarray(bn.mean[...]), 0.1 * h.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(bn.var[...]), 0.9 + 0.1 * h.var(axis=(0, 1, 2)), rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Stochastic depth in the model
# ---------------------------------------------------------------------------------------------


def test_model_stochastic_depth_keys():
    model = small_model("nf_resnet26", **SD_MODEL)
    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    y1, y1_again, y2 = (np.asarray(forward(model, X, True, k)) for k in (k1, k1, k2))
    np.testing.assert_array_equal(y1, y1_again)  # same key, same drops
    assert not np.allclose(y1, y2)  # other key, other drops
    e1, e2 = np.asarray(forward(model, X, False, k1)), np.asarray(forward(model, X, False, k2))
    np.testing.assert_array_equal(e1, e2)  # eval ignores the key ...
    assert not np.allclose(e1, y1)  # ... and drops nothing
    assert np.all(np.isfinite(y1)) and np.all(np.isfinite(y2))


# ---------------------------------------------------------------------------------------------
# Scan: traced program size does not grow with depth
# ---------------------------------------------------------------------------------------------


def _count_eqns(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if hasattr(sub, "eqns"):
                    total += _count_eqns(sub)
                elif hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
                    total += _count_eqns(sub.jaxpr)
    return total


def _jaxpr(depths):
    model = abstract("nf_resnet26", widths=(32, 32, 32, 32), stem_width=16, num_classes=10, depths=depths)
    graphdef, state = nnx.split(model)
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    return jax.make_jaxpr(lambda s, x: nnx.merge(graphdef, s)(x))(state, x).jaxpr


def test_traced_size_independent_of_depth():
    shallow, deep = _jaxpr((8, 8, 8, 8)), _jaxpr((16, 16, 16, 16))  # longer than UNROLL_MAX_BLOCKS
    n_shallow, n_deep = _count_eqns(shallow), _count_eqns(deep)
    assert abs(n_deep - n_shallow) <= 0.02 * n_shallow, (n_shallow, n_deep)
    assert len(deep.eqns) == len(shallow.eqns)
    lengths = [e.params["length"] for e in deep.eqns if e.primitive.name == "scan"]
    assert lengths == [15, 15, 15, 15]  # (an unrolled stage would add ~ n/16 equations per extra block)


@pytest.mark.parametrize("name,overrides", [("bn_resnet26", {}), ("nf_regnet_b0", SD_MODEL)])
def test_unrolled_stage_matches_scan(name, overrides, monkeypatch):
    """A short stage's Python loop computes what the scan computes: logits, SPP statistics,
    gradients, BatchNorm running averages, stochastic-depth draws."""
    if name == "nf_regnet_b0":
        overrides = {**overrides, "widths": (16, 32, 32, 32), "depths": (1, 1, 3, 1), "num_classes": 10}
    else:
        overrides = {**SMALL, "depths": (1, 3)}
    results = []
    for unroll in (0, stages.UNROLL_MAX_BLOCKS):
        monkeypatch.setattr(stages, "UNROLL_MAX_BLOCKS", unroll)
        model = create_model(name, rngs=nnx.Rngs(jax.random.key(1, impl="rbg")), **overrides)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(params, rest):
            m = nnx.merge(graphdef, params, rest, copy=True)
            logits, stats = m(X, train=True, key=KEY, collect_stats=True)
            return jnp.sum(logits**2), (logits, stats, nnx.state(m, nnx.BatchStat))

        (_, aux), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, rest)
        results.append((aux, grads))
        assert any(e.primitive.name == "scan" for e in jax.make_jaxpr(loss)(params, rest).eqns) == (unroll == 0)
    for scanned, unrolled in zip(*(jax.tree.leaves(r) for r in results), strict=True):
        np.testing.assert_allclose(unrolled, scanned, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["nf_resnet26", "nf_regnet_b0", "bn_resnet26"])
def test_inference_copy_unstacks_short_stages_with_the_same_outputs(name):
    """`inference_copy`: WS folded and each short stage's blocks as separate modules holding the
    stacked parameters' slices; logits and SPP statistics as the stacked model's, original intact."""
    from nf.models import inference_copy

    overrides = (
        {**SMALL, "depths": (1, 3)} if "resnet" in name else dict(widths=(16, 32), depths=(1, 3), num_classes=10)
    )
    model = create_model(name, rngs=nnx.Rngs(jax.random.key(3, impl="rbg")), **overrides)
    # perturbed parameters: SkipInit's zero gains and the zero-initialised classifier would hide
    # the residual branches and the logits
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
    leaves = [p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)]
    model = nnx.merge(graphdef, jax.tree.unflatten(tree, leaves), rest)
    copy = inference_copy(model)

    for stage, stage_copy in zip(model.stages, copy.stages, strict=True):
        if stage.rest is None:
            assert stage_copy.rest is None
            continue
        assert not isinstance(stage.rest, nnx.List)  # the original keeps its stacked parameters
        assert isinstance(stage_copy.rest, nnx.List) and len(stage_copy.rest) == stage.depth - 1
        stacked = jax.tree.leaves(nnx.state(stage.rest, nnx.BatchStat))
        for i, block in enumerate(stage_copy.rest):
            for a, b in zip(stacked, jax.tree.leaves(nnx.state(block, nnx.BatchStat)), strict=True):
                np.testing.assert_array_equal(np.asarray(a[i]), np.asarray(b))
    assert n_params(copy) == n_params(model)

    want_logits, want_stats = model(X, train=False, collect_stats=True)
    got_logits, got_stats = copy(X, train=False, collect_stats=True)
    assert float(jnp.std(want_logits)) > 1e-3
    np.testing.assert_allclose(np.asarray(got_logits), np.asarray(want_logits), rtol=1e-5, atol=1e-5)
    for k in want_stats:
        np.testing.assert_allclose(np.asarray(got_stats[k]), np.asarray(want_stats[k]), rtol=1e-5, atol=1e-6)


def test_model_families_do_not_import_heads_or_tasks():
    """Layering: nf.models (backbones) never imports nf.heads or nf.tasks; the tasks compose
    backbone + head above both (nf.tasks.dense)."""
    import ast
    from pathlib import Path

    import nf.models

    offenders = []
    for path in Path(nf.models.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(("nf.heads", "nf.tasks", "nf.train"))]
    assert offenders == []


@pytest.mark.parametrize("remat", ["block", "dots_saveable"])
def test_remat_keeps_parameters_outputs_and_gradients(remat, monkeypatch):
    """`model.remat` recomputes blocks in the backward pass: the parameter tree is the same, and
    logits, BatchNorm updates and gradients match the model without it (scanned and unrolled
    stages, the transition block included); the jaxpr carries the checkpoints."""
    monkeypatch.setattr(stages, "UNROLL_MAX_BLOCKS", 1)  # stage 2 (2 blocks after the first) scans
    overrides = {**SMALL, "depths": (2, 3), "stochastic_depth": 0.5, "skipinit": False}
    results, trees = [], []
    for mode in ("none", remat):
        model = create_model("bn_resnet26", rngs=nnx.Rngs(jax.random.key(1, impl="rbg")), remat=mode, **overrides)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        trees.append(jax.tree.map(lambda x: (x.shape, x.dtype), nnx.to_pure_dict(params)))

        def loss(params, rest):
            m = nnx.merge(graphdef, params, rest, copy=True)
            logits = m(X, train=True, key=KEY)
            return jnp.sum(logits**2), (logits, nnx.state(m, nnx.BatchStat))

        (_, aux), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, rest)
        results.append((aux, grads))
        checkpoints = str(jax.make_jaxpr(loss)(params, rest)).count("remat2[")  # jax.checkpoint's primitive
        assert (checkpoints > 0) == (mode != "none")
    assert trees[0] == trees[1]
    for plain, remat_ in zip(*(jax.tree.leaves(r) for r in results), strict=True):
        np.testing.assert_allclose(remat_, plain, rtol=1e-5, atol=1e-6)


def test_remat_rejects_unknown_values():
    with pytest.raises(ValueError, match=r"model.remat='everything'.*dots_saveable"):
        create_model("nf_resnet26", remat="everything", **SMALL)
