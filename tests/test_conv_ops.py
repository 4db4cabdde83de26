"""conv2d / max_pool equal lax.conv_general_dilated / lax.reduce_window, values and gradients."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from nf.layers import conv_ops, cpu_kernels, set_conv_impl
from nf.layers.conv_ops import conv2d, max_pool

DN = ("NHWC", "HWIO", "NHWC")


def _ref_conv(x, w, *, strides, padding, dilation, groups):
    s = (strides, strides) if isinstance(strides, int) else strides
    d = (dilation, dilation) if isinstance(dilation, int) else dilation
    return lax.conv_general_dilated(x, w, s, padding, rhs_dilation=d, dimension_numbers=DN, feature_group_count=groups)


def _assert_close(got, want, rtol=1e-5):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * max(float(np.max(np.abs(want))), 1e-30))


CONV_CASES = [
    # (hw, cin, cout, k, strides, padding, dilation, groups)
    ((8, 8), 16, 24, 1, 1, "SAME", 1, 1),
    ((8, 8), 16, 24, 1, 2, "SAME", 1, 1),
    ((9, 7), 16, 24, 1, 2, "VALID", 1, 1),
    ((8, 8), 8, 8, 1, 1, ((1, 0), (2, 1)), 1, 1),
    ((8, 8), 16, 16, 3, 1, "SAME", 1, 1),
    ((8, 8), 16, 16, 3, 2, "SAME", 1, 1),
    ((8, 8), 16, 16, 3, 1, "VALID", 1, 1),
    ((8, 8), 16, 16, 3, 2, ((0, 2), (2, 0)), 1, 1),
    ((7, 7), 8, 16, 3, 2, "SAME", 1, 1),
    ((9, 9), 8, 16, 3, 2, "SAME", 1, 1),
    ((9, 9), 8, 16, 3, 2, "VALID", 1, 1),
    ((9, 7), 8, 16, 3, (2, 1), "SAME", 1, 1),
    ((16, 16), 3, 8, 7, 2, "SAME", 1, 1),
    ((15, 13), 3, 8, 7, 2, "SAME", 1, 1),
    ((9, 9), 4, 8, 5, 3, "SAME", 1, 1),
    ((8, 8), 8, 8, 3, 1, "SAME", 2, 1),
    ((9, 9), 8, 8, 3, 2, "SAME", 2, 1),
    ((8, 8), 8, 16, 3, 1, "SAME", 1, 2),
    ((8, 8), 16, 16, 3, 2, "SAME", 1, 4),
    ((8, 8), 16, 16, 1, 1, "SAME", 1, 4),
    ((6, 6), 4, 6, (1, 3), 1, "SAME", 1, 1),
    ((8, 8), 8, 8, 3, 1, ((-1, 2), (1, 0)), 1, 1),
    ((10, 9), 8, 8, 3, 1, "SAME", 3, 1),  # the FCN head's dilated convs
    ((6, 7), 8, 8, (3, 2), 1, ((1, 1), (0, 1)), 1, 1),  # a fast up-convolution phase
    # grouped: narrow and wide groups, channel multipliers, strides, odd sizes, pads, dilation
    ((9, 9), 32, 32, 3, 2, "SAME", 1, 4),
    ((8, 8), 24, 24, 3, 1, "VALID", 1, 3),
    ((9, 7), 16, 32, 3, (2, 1), ((0, 2), (2, 0)), 1, 4),
    ((7, 7), 16, 8, 3, 2, "SAME", 1, 2),
    ((8, 8), 16, 16, 3, 1, "SAME", 2, 2),
    ((9, 9), 8, 8, 3, 2, "SAME", (2, 1), 8),
    ((8, 8), 8, 8, 3, 1, ((-1, 2), (1, 0)), 1, 2),
    ((8, 8), 16, 16, 3, 1, ((3, 0), (0, 1)), 1, 4),  # stride 1, but no conv gives dx (pad > k - 1)
    ((10, 9), 16, 16, 3, 1, "SAME", 3, 4),  # stride 1, dilated: dx as the transposed conv
    ((9, 9), 16, 16, 1, 2, "SAME", 1, 4),  # stride > kernel: input pixels without gradient
]


def _normal(rng, shape):
    return jnp.asarray(rng.standard_normal(shape, dtype=np.float32))


# Compiling dominates this file's run time; LLVM's -O0 halves it and leaves the math alone.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _vjp_all(f, proj, *args):
    """f(*args) and the vjp of `proj` w.r.t. every argument, in one jit."""

    def body(proj, *args):
        y, vjp = jax.vjp(f, *args)
        return y, *vjp(proj)

    return jax.jit(body).lower(proj, *args).compile(_FAST_COMPILE)(proj, *args)


@functools.cache
def _conv_case(index):
    """Inputs, projection and lax's (y, dx, dw) for CONV_CASES[index]."""
    hw, cin, cout, k, strides, padding, dilation, groups = CONV_CASES[index]
    kh, kw = (k, k) if isinstance(k, int) else k
    rng = np.random.default_rng(index)
    x = _normal(rng, (2, *hw, cin))
    w = _normal(rng, (kh, kw, cin // groups, cout))
    opts = dict(strides=strides, padding=padding, dilation=dilation, groups=groups)
    ref = functools.partial(_ref_conv, **opts)
    proj = _normal(rng, jax.eval_shape(ref, x, w).shape)
    return opts, (x, w, proj), _vjp_all(ref, proj, x, w)


# Every k x k case runs through each of conv2d's k x k formulations (XLA's own conv, or one
# im2col matmul), whatever its size would pick; grouped cases
# through both grouped formulations (a dense conv per group, by either k x k formulation, or the
# narrow-group multiply-adds, kernel gradient in one batch chunk or one per image), whatever their
# group width would pick.
_PATHS = {
    "xla": dict(_LAX_MIN_PIXELS=0, _LAX_MIN_PATCH=0, _SPLIT_MIN_GROUP_WIDTH=0),
    "im2col": dict(_LAX_MIN_PIXELS=10**9, _SPLIT_MIN_GROUP_WIDTH=0),
    "narrow_groups": dict(_SPLIT_MIN_GROUP_WIDTH=10**9),
    "narrow_chunked": dict(_SPLIT_MIN_GROUP_WIDTH=10**9, _PATCH_CHUNK_BYTES=1),  # one image per chunk
}


def _set_path(monkeypatch, path):
    for name, value in _PATHS[path].items():
        monkeypatch.setattr(cpu_kernels, name, value)


def _has_path(case: tuple, path: str) -> bool:
    """Whether conv2d has formulation `path` for `case`: negative padding always goes to lax, the
    narrow-group formulations are for grouped convs only, and a 1x1 conv is always a matmul."""
    _, _, _, k, _, padding, _, groups = case
    to_lax = not isinstance(padding, str) and min(map(min, padding)) < 0
    if path != "xla" and (to_lax or (path.startswith("narrow") and groups == 1)):
        return False
    return not (path == "im2col" and k == 1)


_CASE_PATHS = [(i, path) for path in _PATHS for i, case in enumerate(CONV_CASES) if _has_path(case, path)]


@pytest.mark.parametrize("index,path", _CASE_PATHS, ids=[f"{path}-{CONV_CASES[i]}" for i, path in _CASE_PATHS])
def test_conv2d_matches_lax(index, path, monkeypatch):
    _set_path(monkeypatch, path)
    opts, (x, w, proj), want = _conv_case(index)
    got = _vjp_all(functools.partial(conv2d, **opts), proj, x, w)
    for g, r in zip(got, want):  # y, dx, dw
        _assert_close(g, r)


# bfloat16 (the NFNet recipes' compute dtype) through each formulation: a 3x3 strided conv,
# the 7x7 stem on odd sizes, a grouped one.
_BF16_CASES = [(i, path) for i, path in _CASE_PATHS if i in (5, 13, 24)]


@pytest.mark.parametrize("index,path", _BF16_CASES, ids=[f"{path}-{CONV_CASES[i]}" for i, path in _BF16_CASES])
def test_conv2d_bfloat16_matches_lax(index, path, monkeypatch):
    """Values and gradients in bf16, against lax in float32 on the same bf16-rounded operands.
    Tolerance 8e-3 of max|value| (two bf16 eps): the output and each gradient are rounded to bf16
    once (XLA:CPU: at most 5.6e-3, im2col's input gradient); sums must run in float32 (the narrow-group
    formulation summing in bf16 gives 1.6e-2)."""
    _set_path(monkeypatch, path)
    opts, (x, w, proj), _ = _conv_case(index)
    x, w, proj = (a.astype(jnp.bfloat16) for a in (x, w, proj))
    got = _vjp_all(functools.partial(conv2d, **opts), proj, x, w)
    ref = functools.partial(_ref_conv, **opts)
    want = _vjp_all(ref, *(a.astype(jnp.float32) for a in (proj, x, w)))
    for g, r in zip(got, want):  # y, dx, dw
        assert g.dtype == jnp.bfloat16
        _assert_close(np.asarray(g, np.float32), r, rtol=8e-3)


def _both_orders(conv, groups=1):
    """Gradients of a loss and of a gradient penalty (grad-of-grad) w.r.t. x and w."""
    rng = np.random.default_rng(7)
    x, w = _normal(rng, (2, 9, 9, 8)), _normal(rng, (3, 3, 8 // groups, 8)) / 9.0

    def loss(x, w):
        return jnp.sum(jnp.tanh(conv(x, w)))

    def penalty(x, w):
        return jnp.sum(jax.grad(loss, argnums=1)(x, w) ** 2)

    def body(x, w):
        return jax.grad(loss, argnums=(0, 1))(x, w), jax.grad(penalty, argnums=(0, 1))(x, w)

    return jax.jit(body).lower(x, w).compile(_FAST_COMPILE)(x, w)


@functools.cache
def _second_order_ref(groups, strides):
    conv = functools.partial(_ref_conv, strides=strides, padding="SAME", dilation=1, groups=groups)
    return _both_orders(conv, groups)


@pytest.mark.parametrize(
    "path,groups,strides",
    [
        ("xla", 1, 2),
        ("im2col", 1, 2),
        ("xla", 2, 2),
        ("narrow_groups", 2, 2),
        ("narrow_groups", 2, 1),
        ("narrow_chunked", 2, 1),
    ],
)
def test_conv2d_second_order(path, groups, strides, monkeypatch):
    """Grad-of-grad through the fast paths (e.g. for gradient penalties) matches lax."""
    _set_path(monkeypatch, path)
    got = _both_orders(functools.partial(conv2d, strides=strides, groups=groups), groups)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(_second_order_ref(groups, strides))):
        _assert_close(g, r, rtol=1e-4)


def _grouped_lax_convs(backend, monkeypatch, impl="auto"):
    """feature_group_count of each grouped lax conv in conv2d's jaxpr on `backend`."""
    monkeypatch.setattr(conv_ops.jax, "default_backend", lambda: backend)
    x, w = jnp.zeros((1, 8, 8, 16)), jnp.zeros((3, 3, 4, 16))
    eqns = jax.make_jaxpr(functools.partial(conv2d, groups=4, impl=impl))(x, w).jaxpr.eqns
    return [e.params["feature_group_count"] for e in eqns if e.primitive.name == "conv_general_dilated"]


def test_grouped_conv_dispatch(monkeypatch):
    """XLA:CPU runs groups without its (slow) grouped conv; accelerators keep lax's; asked for
    explicitly (what the MAC count and an accelerator's compile on a CPU host trace), "lax" is
    lax's on every backend and "cpu" the CPU kernels on every backend."""
    assert _grouped_lax_convs("cpu", monkeypatch) == []
    assert _grouped_lax_convs("gpu", monkeypatch) == [4]
    assert _grouped_lax_convs("cpu", monkeypatch, "lax") == [4]
    assert _grouped_lax_convs("tpu", monkeypatch, "cpu") == []
    assert [conv_ops.kernels(i) for i in conv_ops.CONV_IMPLS] == ["lax", "lax", "cpu"]  # on "tpu"
    with pytest.raises(ValueError, match="valid"):
        conv_ops.kernels("xla")


def _ref_pool(x, window, stride, padding):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), padding)


POOL_CASES = [
    # (hw, window, stride, padding)
    ((16, 16), 3, 2, "SAME"),
    ((9, 9), 3, 2, "SAME"),
    ((7, 10), 3, 2, "SAME"),
    ((9, 9), 3, 2, "VALID"),
    ((8, 8), 2, 2, "SAME"),
    ((8, 8), 3, 1, "SAME"),
    ((11, 11), 5, 3, "SAME"),
]


@pytest.mark.parametrize("case", POOL_CASES, ids=str)
def test_max_pool_matches_reduce_window(case):
    """Values and gradients equal; on ties each window's gradient goes to its first max."""
    hw, window, stride, padding = case
    rng = np.random.default_rng(100 + POOL_CASES.index(case))
    x = rng.standard_normal((2, *hw, 8), dtype=np.float32)
    if case == POOL_CASES[0]:  # post-ReLU zeros and constant rows: windows full of ties
        x = np.maximum(x, 0.0)
        x[:, :5] = 1.0
    x = jnp.asarray(x)
    ref = functools.partial(_ref_pool, window=window, stride=stride, padding=padding)
    proj = _normal(rng, jax.eval_shape(ref, x).shape)
    want = _vjp_all(ref, proj, x)
    got = _vjp_all(lambda x: max_pool(x, window, stride, padding), proj, x)
    for g, r in zip(got, want):  # y, dx
        _assert_close(g, r, rtol=1e-6)


def test_max_pool_rejects_unknown_padding():
    with pytest.raises(ValueError):
        max_pool(jnp.zeros((1, 4, 4, 1)), 3, 2, "FULL")


def _primitive_names(jaxpr) -> set[str]:
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for sub in jax.core.jaxprs_in_params(eqn.params):
            names |= _primitive_names(sub)
    return names


@pytest.mark.parametrize("name", ["nf_resnet26", "nf_regnet_b0"])
@pytest.mark.parametrize("backend", ["gpu", "cpu"])
def test_accelerator_route_is_lax_and_supports_jvp(name, backend, monkeypatch):
    """On a non-CPU backend, and wherever `set_conv_impl(model, "lax")` asks for it, the model's
    convs and pools are lax's own ops (no custom VJP, no im2col) and forward-mode autodiff runs
    through the whole model."""
    from flax import nnx

    from nf.models import create_model

    monkeypatch.setattr(conv_ops.jax, "default_backend", lambda: backend)
    model = create_model(name, widths=(16, 32, 32, 64), depths=(1, 2, 1, 1), num_classes=3)
    if backend == "cpu":
        model = set_conv_impl(model, "lax")
    graphdef, params = nnx.split(model)
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    f = lambda x: nnx.merge(graphdef, params)(x, train=False)
    names = _primitive_names(jax.make_jaxpr(jax.grad(lambda x: f(x).sum()))(x).jaxpr)
    assert "custom_vjp_call" not in names and "custom_vjp_call_jaxpr" not in names
    assert "conv_general_dilated" in names
    v = jax.random.normal(jax.random.PRNGKey(1), x.shape)
    tangent = jax.jit(lambda x, v: jax.jvp(f, (x,), (v,))[1])(x, v)
    reverse = jax.jit(lambda x, v: jnp.tensordot(jax.jacrev(f)(x), v, axes=v.ndim))(x, v)  # J v, reverse mode
    np.testing.assert_allclose(np.asarray(tangent), np.asarray(reverse), rtol=1e-4, atol=1e-5)


def test_set_conv_impl_reaches_every_conv_and_the_stem_pool():
    """`set_conv_impl` changes what the model traces (every conv, and the ResNet stem's max pool
    with its conv), not its parameters or its outputs; the original model keeps its choice."""
    from flax import nnx

    from nf.layers import Conv
    from nf.models import create_model

    model = create_model("nf_resnet26", widths=(16, 32, 32, 64), depths=(1, 1, 1, 1), num_classes=3)
    lax_model = set_conv_impl(model, "lax")
    impls = lambda m: {n.conv_impl for _, n in nnx.iter_graph(m) if isinstance(n, Conv)}
    assert impls(model) == {"auto"} and impls(lax_model) == {"lax"}
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 32, 32, 3))
    names = lambda m: _primitive_names(jax.make_jaxpr(lambda x: m(x, train=False))(x).jaxpr)
    assert "custom_vjp_call" in names(model) and "reduce_window_max" not in names(model)  # CPU kernels
    assert "custom_vjp_call" not in names(lax_model) and "reduce_window_max" in names(lax_model)
    _assert_close(lax_model(x, train=False), model(x, train=False), rtol=1e-4)
    assert jax.tree.all(jax.tree.map(lambda a, b: a is b, nnx.state(model), nnx.state(lax_model)))
    with pytest.raises(ValueError, match="valid"):
        set_conv_impl(model, "xla")


@pytest.mark.parametrize("method", conv_ops.GROUPED_FORMULATIONS)
def test_named_grouped_formulations_match_lax(method):
    """The public per-formulation entry (what tools/conv_microbench.py times) computes lax's conv."""
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 9, 16))
    w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 4, 16))
    want = lax.conv_general_dilated(
        x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=4
    )
    got = conv_ops.grouped_conv(x, w, strides=2, groups=4, method=method)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="valid"):
        conv_ops.grouped_conv(x, w, groups=4, method="im2col")
