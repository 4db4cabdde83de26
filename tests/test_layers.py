"""Layers against independent references: numpy Scaled WS + a naive numpy convolution, the
paper's gamma constants and their analytic/Monte-Carlo values, SE, stochastic depth, fold_ws
and input validation (paper §4.2-4.3)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nf.layers import (
    GAMMA,
    Conv,
    ScaledWSConv,
    SqueezeExcite,
    estimate_gamma,
    fold_ws,
    scaled_activation,
    standardize_weight,
    stochastic_depth,
)
from nf.models import create_model

# ---------------------------------------------------------------------------------------------
# Independent numpy references
# ---------------------------------------------------------------------------------------------


def np_standardize(w, gain, eps=1e-4):
    """paper §4.2-4.3: (W - mean) * gain / sqrt(max(fan_in * var, eps)), per output channel."""
    w = np.asarray(w, np.float64)
    fan_in = w.shape[0] * w.shape[1] * w.shape[2]
    mean = w.mean(axis=(0, 1, 2), keepdims=True)
    var = w.var(axis=(0, 1, 2), keepdims=True)  # population variance
    return (w - mean) * np.asarray(gain, np.float64) / np.sqrt(np.maximum(fan_in * var, eps))


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def np_conv(x, w, strides=1, padding="SAME", dilation=1, groups=1):
    """Naive NHWC x HWIO convolution: explicit padding, then one strided slice per kernel tap."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    (sh, sw), (dh, dw) = _pair(strides), _pair(dilation)
    n, h, wd, c = x.shape
    kh, kw, cin_g, cout = w.shape
    assert cin_g * groups == c
    ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if padding == "SAME":
        oh, ow = -(-h // sh), -(-wd // sw)
        ph, pw = max((oh - 1) * sh + ekh - h, 0), max((ow - 1) * sw + ekw - wd, 0)
        pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
    elif padding == "VALID":
        pads = ((0, 0), (0, 0))
    else:
        pads = tuple(tuple(p) for p in padding)
    xp = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    oh = (xp.shape[1] - ekh) // sh + 1
    ow = (xp.shape[2] - ekw) // sw + 1
    cout_g = cout // groups
    out = np.zeros((n, oh, ow, cout))
    for g in range(groups):
        xg = xp[..., g * cin_g : (g + 1) * cin_g]
        for i in range(kh):
            for j in range(kw):
                patch = xg[:, i * dh : i * dh + (oh - 1) * sh + 1 : sh, j * dw : j * dw + (ow - 1) * sw + 1 : sw, :]
                out[..., g * cout_g : (g + 1) * cout_g] += patch @ w[i, j, :, g * cout_g : (g + 1) * cout_g]
    return out


# ---------------------------------------------------------------------------------------------
# Scaled Weight Standardization
# ---------------------------------------------------------------------------------------------


def test_standardize_weight_matches_numpy():
    rng = np.random.default_rng(0)
    w = rng.normal(3.0, 5.0, (3, 3, 8, 12)).astype(np.float32)  # scale/offset must not matter
    gain = rng.uniform(0.5, 2.0, (12,)).astype(np.float32)
    got = np.asarray(standardize_weight(jnp.asarray(w), jnp.asarray(gain)))
    np.testing.assert_allclose(got, np_standardize(w, gain), rtol=1e-4, atol=1e-6)


def test_ws_kernel_gradient_has_zero_mean_over_fan_in():
    """The output ignores the kernel's mean, so training never grows it (one-pass variance stays exact)."""
    rng = np.random.default_rng(1)
    w = jnp.asarray(rng.normal(0.0, 1.0, (3, 3, 8, 12)).astype(np.float32))
    gain = jnp.asarray(rng.uniform(0.5, 2.0, (12,)).astype(np.float32))
    dy = jnp.asarray(rng.normal(size=(3, 3, 8, 12)).astype(np.float32))
    grad = np.asarray(jax.grad(lambda k: jnp.sum(standardize_weight(k, gain) * dy))(w), np.float64)
    assert np.abs(grad.mean(axis=(0, 1, 2))).max() < 1e-6 * np.abs(grad).max()


def test_standardized_kernel_zero_mean_unit_fan_in_variance():
    rng = np.random.default_rng(1)
    w = rng.normal(-2.0, 0.3, (5, 3, 6, 16)).astype(np.float32)
    w_hat = np.asarray(standardize_weight(jnp.asarray(w), jnp.ones((16,))), np.float64)
    fan_in = 5 * 3 * 6
    np.testing.assert_allclose(w_hat.mean(axis=(0, 1, 2)), 0.0, atol=1e-6)
    np.testing.assert_allclose(w_hat.var(axis=(0, 1, 2)) * fan_in, 1.0, rtol=1e-4)
    # Equivalently every output channel has unit L2 norm: Var(y) = Var(x) for iid inputs.
    np.testing.assert_allclose(np.sum(w_hat**2, axis=(0, 1, 2)), 1.0, rtol=1e-4)


def test_standardize_weight_epsilon_floors_fan_in_times_var():
    rng = np.random.default_rng(2)
    fan_in = 3 * 3 * 4
    w = rng.normal(size=(3, 3, 4, 3)).astype(np.float32)
    w[..., 0] = 0.7  # constant channel: variance 0 -> zeros, never NaN/inf
    tiny = (1e-3 * rng.normal(size=(3, 3, 4))).astype(np.float32)
    w[..., 1] = tiny  # fan_in * var ~ 3.6e-5 < 1e-4: divided by sqrt(1e-4), not by its own std
    assert fan_in * tiny.astype(np.float64).var() < 1e-4
    gain = np.array([1.0, 1.5, 0.5], np.float32)
    got = np.asarray(standardize_weight(jnp.asarray(w), jnp.asarray(gain)), np.float64)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got[..., 0], 0.0, atol=1e-4)  # only float32 rounding of the mean
    t = tiny.astype(np.float64)
    # 1e-3: float32 cancellation in W - mean(W) of a channel whose spread is ~1e-6 of its values
    np.testing.assert_allclose(got[..., 1], (t - t.mean()) * 1.5 / math.sqrt(1e-4), rtol=1e-3, atol=1e-7)
    # Floored, the channel is NOT rescaled to unit norm (sum of squares = fan_in*var/1e-4 * gain^2).
    assert np.sum(got[..., 1] ** 2) < 0.5 * 1.5**2
    np.testing.assert_allclose(got[..., 1:], np_standardize(w, gain)[..., 1:], rtol=1e-3, atol=1e-6)


def test_standardize_weight_stacked_kernels_independently():
    """Scanned stages hold kernels stacked on a leading axis; each member standardizes alone."""
    rng = np.random.default_rng(3)
    w = rng.normal(size=(3, 3, 3, 4, 5)).astype(np.float32) * np.array([1.0, 10.0, 0.1])[:, None, None, None, None]
    gain = rng.uniform(0.5, 2.0, (3, 5)).astype(np.float32)
    got = np.asarray(standardize_weight(jnp.asarray(w), jnp.asarray(gain)))
    for i in range(3):
        np.testing.assert_allclose(got[i], np_standardize(w[i], gain[i]), rtol=1e-4, atol=1e-6)


CONV_CASES = [
    # (hw, cin, cout, kernel, strides, padding, dilation, groups)
    pytest.param((8, 8), 6, 10, 3, 1, "SAME", 1, 1, id="3x3-same"),
    pytest.param((9, 7), 6, 10, 3, 2, "SAME", 1, 1, id="3x3-s2-same-odd"),
    pytest.param((10, 9), 8, 12, 3, 1, ((2, 1), (0, 3)), 2, 2, id="3x3-dil2-groups2-explicit"),
    pytest.param((9, 8), 8, 8, (5, 3), (2, 1), "VALID", 1, 4, id="5x3-s21-valid-groups4"),
    pytest.param((9, 9), 6, 10, 1, 2, "SAME", 1, 1, id="1x1-s2-same"),
    pytest.param((8, 8), 6, 10, 1, 1, ((1, 0), (2, 1)), 1, 2, id="1x1-explicit-groups2"),
    pytest.param((12, 11), 4, 6, (3, 2), 2, "SAME", (2, 3), 1, id="3x2-s2-dil23-same"),
]


def _leaf_name(path) -> str:
    return next(k.key for k in reversed(path) if isinstance(k, jax.tree_util.DictKey))


def with_values(cls, *args, values, **kwargs):
    """`cls(*args, **kwargs)` built abstractly (no init compiles), its params set from `values`."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: cls(*args, rngs=nnx.Rngs(0), **kwargs)))
    state = jax.tree_util.tree_map_with_path(lambda p, leaf: jnp.asarray(values[_leaf_name(p)], leaf.dtype), state)
    return nnx.merge(graphdef, state)


def apply(module, *args):
    """`module(*args)` under jit: one compile instead of one per eager op."""
    graphdef, state = nnx.split(module)
    return jax.jit(lambda s, *a: nnx.merge(graphdef, s)(*a))(state, *args)


@pytest.mark.parametrize("hw,cin,cout,kernel,strides,padding,dilation,groups", CONV_CASES)
def test_scaled_ws_conv_matches_numpy(hw, cin, cout, kernel, strides, padding, dilation, groups):
    rng = np.random.default_rng(4)
    kh, kw = _pair(kernel)
    w = rng.normal(0.5, 2.0, (kh, kw, cin // groups, cout)).astype(np.float32)
    gain = rng.uniform(0.5, 2.0, (cout,)).astype(np.float32)  # non-trivial gain and bias
    bias = rng.normal(size=(cout,)).astype(np.float32)
    conv = with_values(
        ScaledWSConv, cin, cout, kernel, strides=strides, padding=padding, dilation=dilation, groups=groups,
        values=dict(kernel=w, gain=gain, bias=bias),
    )  # fmt: skip
    x = rng.normal(size=(2, *hw, cin)).astype(np.float32)
    got = np.asarray(apply(conv, jnp.asarray(x)))
    want = np_conv(x, np_standardize(w, gain), strides, padding, dilation, groups) + bias
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_plain_conv_matches_numpy_without_standardization():
    rng = np.random.default_rng(5)
    w = rng.normal(size=(3, 3, 2, 6)).astype(np.float32)
    bias = rng.normal(size=(6,)).astype(np.float32)
    conv = with_values(Conv, 4, 6, 3, strides=2, padding=((1, 2), (0, 1)), groups=2, values=dict(kernel=w, bias=bias))
    x = rng.normal(size=(2, 7, 6, 4)).astype(np.float32)
    got = np.asarray(apply(conv, jnp.asarray(x)))
    want = np_conv(x, w, 2, ((1, 2), (0, 1)), 1, 2) + bias
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_ws_conv_after_gamma_relu_preserves_unit_variance_and_zero_mean():
    """Paper §4.2: for N(0,1) inputs, relu(x)*gamma has unit variance (but mean ~0.68); the WS conv's
    zero-mean rows remove the mean and its unit-norm rows keep the variance. A plain He conv
    does not remove the mean (mean shift)."""
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 18, 18, 64))
    h = scaled_activation("relu")(x)
    np.testing.assert_allclose(
        float(jnp.var(h)), 1.0, atol=0.02
    )  # sampling error of 330k draws, and gamma's own MC error
    assert abs(float(jnp.mean(h)) - GAMMA["relu"] / math.sqrt(2 * math.pi)) < 0.02
    ws = ScaledWSConv(64, 32, 3, padding="VALID", rngs=nnx.Rngs(1))  # VALID: no zero-padded borders
    # paper §4.2-4.3 init: raw W ~ N(0, 1/fan_in), gain 1, bias 0
    assert abs(float(jnp.std(ws.kernel[...])) * math.sqrt(3 * 3 * 64) - 1) < 0.05
    np.testing.assert_array_equal(np.asarray(ws.gain[...]), 1.0)
    np.testing.assert_array_equal(np.asarray(ws.bias[...]), 0.0)
    y = np.asarray(apply(ws, h), np.float64)
    channel_means = y.mean(axis=(0, 1, 2))
    assert abs(y.mean()) < 0.03
    assert np.mean(channel_means**2) < 0.01
    # sampling error: 32 channels' variances, each over one random kernel (its rows' norms are exact)
    np.testing.assert_allclose(np.mean(y.var(axis=(0, 1, 2))), 1.0, atol=0.06)
    plain = Conv(64, 32, 3, padding="VALID", rngs=nnx.Rngs(1))
    y_plain = np.asarray(apply(plain, h), np.float64)
    assert np.mean(y_plain.mean(axis=(0, 1, 2)) ** 2) > 0.2  # E ~ 0.47 = (0.68^2) * 2 (He gain)


# ---------------------------------------------------------------------------------------------
# Gamma
# ---------------------------------------------------------------------------------------------

# paper §4.2-4.3 (DeepMind's Monte-Carlo constants); the library must carry exactly these.
PAPER_GAMMA = {
    "relu": 1.7139588594436646,
    "gelu": 1.7015043497085571,
    "silu": 1.7881293296813965,
    "tanh": 1.5939117670059204,
}
INDEPENDENT_FNS = {
    "relu": lambda x: jnp.maximum(x, 0.0),
    "gelu": lambda x: 0.5 * x * (1 + jnp.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),  # tanh approx
    "silu": lambda x: x / (1 + jnp.exp(-x)),
    "tanh": jnp.tanh,
}


@pytest.mark.parametrize("name", sorted(PAPER_GAMMA))
def test_gamma_table_and_estimator(name):
    assert GAMMA[name] == PAPER_GAMMA[name]
    est = estimate_gamma(INDEPENDENT_FNS[name])
    assert abs(est / PAPER_GAMMA[name] - 1) < 0.005, (name, est)
    # and an independent numpy Monte-Carlo estimate with a different sampler
    x = np.random.default_rng(7).standard_normal(2_000_000).astype(np.float32)
    mc = 1.0 / np.std(np.asarray(INDEPENDENT_FNS[name](jnp.asarray(x)), np.float64))
    assert abs(mc / PAPER_GAMMA[name] - 1) < 0.005, (name, mc)


def test_gamma_relu_analytic():
    analytic = math.sqrt(2 / (1 - 1 / math.pi))  # Var[relu(x)] = 1/2 - 1/(2 pi)
    assert abs(analytic - 1.712859) < 1e-6
    assert abs(estimate_gamma(jax.nn.relu) / analytic - 1) < 0.005
    assert abs(GAMMA["relu"] / analytic - 1) < 0.005


def test_scaled_activation_user_callable_has_unit_variance():
    fn = lambda x: jnp.tanh(x) * 2  # not in the table: gamma is estimated (~1.594 / 2)
    act = scaled_activation(fn)
    x = jnp.asarray(np.random.default_rng(8).standard_normal(1_000_000).astype(np.float32))
    y = np.asarray(act(x), np.float64)
    assert abs(y.var() - 1.0) < 0.01
    np.testing.assert_allclose(y, np.tanh(np.asarray(x, np.float64)) * 2 * estimate_gamma(fn), rtol=1e-5, atol=1e-6)
    assert abs(estimate_gamma(fn) - PAPER_GAMMA["tanh"] / 2) < 0.005
    # table names use the table constant; an explicit gain overrides it
    np.testing.assert_allclose(np.asarray(scaled_activation("relu")(jnp.array([2.0]))), [2 * GAMMA["relu"]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(scaled_activation("relu", 3.0)(jnp.array([2.0]))), [6.0], rtol=1e-6)


def test_unknown_activation_lists_valid_names():
    with pytest.raises(ValueError, match="relu") as err:
        scaled_activation("rellu")
    msg = str(err.value)
    assert "rellu" in msg
    for name in ("gelu", "silu", "tanh", "elu", "softplus"):
        assert name in msg


# ---------------------------------------------------------------------------------------------
# Squeeze-Excite
# ---------------------------------------------------------------------------------------------


def np_squeeze_excite(se, x):
    x = np.asarray(x, np.float64)
    p = {
        k: np.asarray(v[...], np.float64)
        for k, v in (("w1", se.fc1.kernel), ("b1", se.fc1.bias), ("w2", se.fc2.kernel), ("b2", se.fc2.bias))
    }
    h = np.maximum(x.mean(axis=(1, 2)) @ p["w1"] + p["b1"], 0.0)
    gate = 1.0 / (1.0 + np.exp(-(h @ p["w2"] + p["b2"])))
    return gate[:, None, None, :] * x


@pytest.mark.parametrize("gain", [1.0, 2.0])
def test_squeeze_excite_matches_numpy_and_variance(gain):
    """The sigmoid gate sits near 0.5 at init, so SE halves the signal's magnitude (paper App. B.3:
    "reduce signal magnitude by a factor of 0.5") -- its variance drops to ~1/4 -- and the x2
    restores unit variance. (paper §4.4's "halves the variance" is loose: it is the std.)"""
    se = SqueezeExcite(64, 64, 0.25, gain=gain, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (64, 8, 8, 64))
    y = np.asarray(apply(se, x), np.float64)
    np.testing.assert_allclose(y, gain * np_squeeze_excite(se, x), rtol=1e-4, atol=1e-5)
    ratio = y.var() / float(jnp.var(x))
    if gain == 1.0:
        assert 0.2 < ratio < 0.3, ratio  # std halved, variance quartered: attenuates
        assert 0.45 < y.std() / float(jnp.std(x)) < 0.55
    else:
        assert 0.9 < ratio < 1.1, ratio  # preserved


# ---------------------------------------------------------------------------------------------
# Stochastic depth
# ---------------------------------------------------------------------------------------------


def test_stochastic_depth_drops_whole_examples_without_rescaling():
    x = jax.random.normal(jax.random.PRNGKey(0), (4000, 3, 3, 2)) + 5.0  # no exact zeros in x
    rate = 0.3
    y = np.asarray(stochastic_depth(x, rate, jax.random.PRNGKey(1)))
    xn = np.asarray(x)
    dropped = np.all(y == 0, axis=(1, 2, 3))
    kept = np.all(y == xn, axis=(1, 2, 3))  # bit-exact: no 1/keep rescaling
    assert np.all(dropped ^ kept)
    # binomial std is sqrt(0.3*0.7/4000) = 0.0072
    assert abs(dropped.mean() - rate) < 0.03, dropped.mean()
    # a traced rate (as inside the scanned stages) behaves the same
    y2 = np.asarray(jax.jit(stochastic_depth)(x, jnp.float32(rate), jax.random.PRNGKey(1)))
    d2 = np.all(y2 == 0, axis=(1, 2, 3))
    assert np.all(d2 ^ np.all(y2 == xn, axis=(1, 2, 3)))
    assert abs(d2.mean() - rate) < 0.03
    # different keys drop different examples
    y3 = np.asarray(stochastic_depth(x, rate, jax.random.PRNGKey(2)))
    assert not np.array_equal(np.all(y3 == 0, axis=(1, 2, 3)), dropped)


def test_stochastic_depth_identity_without_key():
    x = jax.random.normal(jax.random.PRNGKey(0), (16, 2, 2, 3))
    np.testing.assert_array_equal(np.asarray(stochastic_depth(x, 0.9, None)), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(stochastic_depth(x, 0.0, jax.random.PRNGKey(0))), np.asarray(x))
    np.testing.assert_array_equal(np.asarray(stochastic_depth(x, 1.0, jax.random.PRNGKey(0))), 0.0)


# ---------------------------------------------------------------------------------------------
# fold_ws
# ---------------------------------------------------------------------------------------------


def _materialize(abstract: nnx.Module, seed: int) -> nnx.Module:
    """Fill an eval_shape'd model with random non-trivial values (no per-shape init compiles):
    kernels ~ N(0.1, 1), WS gains in [0.5, 1.5], biases ~ N(0, 0.1), skip gains in [0.5, 1]."""
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(abstract)

    def fill(path, leaf):
        name = _leaf_name(path)
        if name == "gain":
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
        if name == "bias":
            return jnp.asarray(0.1 * rng.normal(size=leaf.shape), leaf.dtype)
        if name == "skip_gain":
            return jnp.asarray(rng.uniform(0.5, 1.0, leaf.shape), leaf.dtype)
        fan_in = int(np.prod(leaf.shape[-4:-1])) if leaf.ndim >= 4 else leaf.shape[-2]
        return jnp.asarray(rng.normal(0.1, 1.0, leaf.shape) / math.sqrt(fan_in), leaf.dtype)

    state = jax.tree_util.tree_map_with_path(fill, state)
    return nnx.merge(graphdef, state)


def test_fold_ws_matches_unfolded_and_leaves_original_untouched():
    abstract = nnx.eval_shape(
        lambda: create_model("nf_resnet26", widths=(32, 32, 32, 32), stem_width=16, num_classes=10)
    )
    model = _materialize(abstract, seed=0)
    convs = [node for _, node in nnx.iter_graph(model) if isinstance(node, ScaledWSConv)]
    assert len(convs) == 1 + 4 * (4 + 3)  # stem + per stage: transition (with shortcut) + stacked rest
    before = jax.tree.map(np.asarray, nnx.state(model))

    folded = fold_ws(model)

    # the original is untouched (values and flags)
    after = jax.tree.map(np.asarray, nnx.state(model))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    assert all(not c.folded for c in convs)
    # every WS conv of the copy is folded: kernel == numpy W_hat of the original, gain 1
    orig = {path: node for path, node in nnx.iter_graph(model) if isinstance(node, ScaledWSConv)}
    n_folded = 0
    for path, node in nnx.iter_graph(folded):
        if isinstance(node, ScaledWSConv):
            assert node.folded, path
            n_folded += 1
            k, g = np.asarray(orig[path].kernel[...]), np.asarray(orig[path].gain[...])
            if k.ndim == 5:
                want = np.stack([np_standardize(k[i], g[i]) for i in range(k.shape[0])])
            else:
                want = np_standardize(k, g)
            np.testing.assert_allclose(np.asarray(node.kernel[...]), want, rtol=1e-4, atol=1e-6)
            np.testing.assert_array_equal(np.asarray(node.gain[...]), 1.0)
            np.testing.assert_array_equal(np.asarray(node.bias[...]), np.asarray(orig[path].bias[...]))
    assert n_folded == len(convs)

    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    y, y_folded = np.asarray(apply(model, x)), np.asarray(apply(folded, x))
    assert np.all(np.isfinite(y)) and np.std(y) > 1e-3
    np.testing.assert_allclose(y_folded, y, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(y))))
    # folding twice is a no-op on an already folded model
    twice = fold_ws(folded)
    for (_, a), (_, b) in zip(nnx.iter_graph(folded), nnx.iter_graph(twice), strict=True):
        if isinstance(a, ScaledWSConv):
            np.testing.assert_array_equal(np.asarray(a.kernel[...]), np.asarray(b.kernel[...]))


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_conv_rejects_bad_input_shape():
    conv = nnx.eval_shape(lambda: ScaledWSConv(3, 4, 3, rngs=nnx.Rngs(0)))  # the check precedes any compute
    for shape in [(8, 8, 3), (1, 8, 8, 5), (1, 1, 8, 8, 3)]:
        with pytest.raises(ValueError, match=r"\(") as err:
            conv(jnp.zeros(shape))
        assert str(shape) in str(err.value), str(err.value)


def test_model_rejects_bad_input_shape():
    model = nnx.eval_shape(lambda: create_model("nf_resnet26", widths=(8, 8, 8, 8), stem_width=8))
    for shape in [(32, 32, 3), (2, 32, 32, 1), (2, 3, 32, 32)]:
        with pytest.raises(ValueError) as err:
            model(jnp.zeros(shape))
        assert str(shape) in str(err.value), str(err.value)


@pytest.mark.parametrize(
    "key,value",
    [
        ("widths", (64, 0, 256, 512)),
        ("num_classes", 0),
        ("stem_width", -8),
        ("depths", (2, 0, 2, 2)),
        ("in_channels", 0),
    ],
)
def test_non_positive_sizes_name_the_key(key, value):
    with pytest.raises(ValueError, match=key):
        nnx.eval_shape(lambda: create_model("nf_resnet26", **{key: value}))


def test_conv_rejects_non_positive_features():
    with pytest.raises(ValueError, match="out_features"):
        ScaledWSConv(3, 0, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="in_features"):
        Conv(6, 8, 3, groups=4, rngs=nnx.Rngs(0))  # 6 not a multiple of 4
