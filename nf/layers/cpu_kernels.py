"""Convolution and max-pool kernels tuned for XLA:CPU (`nf.layers.conv_ops` chooses them).

`conv2d` routes each case to the fastest formulation measured by `tools/conv_microbench.py`
(forward+backward on ResNet-50 shapes, and with --family on NF-RegNet-B0 / NFNet-F0's grouped
3x3 convs) and by whole train steps (`tools/benchmark.py`); the figures and the machines they
were measured on are in docs/performance.md:

  1x1 (any stride/padding)        one 2-D matmul on the (sub-sampled) pixels
  k x k, >= 64 output pixels      XLA's own conv (forward and both gradients)
  and >= 64 patch channels
  k x k, fewer output pixels      im2col: concatenated taps, one matmul
  or narrow patches (RGB stems)
  groups, >= 32 channels/group    one of the above per group, outputs concatenated
  groups, narrower                forward and input gradient (strided: one stride-1 conv per
                                  phase) as kh*kw*c broadcast multiply-adds, a scan over kernel
                                  rows; kernel gradient as group-major im2col patches and one
                                  batched matmul per cache-sized batch chunk, a scan
  negative pads, mixed dtypes     lax.conv_general_dilated itself

Dilated k x k convs take the same paths (the taps are spaced by the dilation). For narrow groups
the scans are what makes the multiply-adds fast inside a network: a loop is a fusion boundary, so
XLA neither recomputes x's producers per term nor duplicates the sum into y's consumers
(optimization barriers are dropped before fusion on XLA:CPU). XLA counts a loop body once:
`nf.models.stats.unrolled_scans` unrolls these scans too when the FLOPs are counted. The im2col
paths also multiply the zero padding, which XLA's cost analysis counts and lax's conv does not.

Every path computes `lax.conv_general_dilated` (NHWC, HWIO) up to float rounding. The custom VJPs
(narrow groups, max pool) support reverse mode (also grad-of-grad) but not forward mode
(`jax.jvp`/`jacfwd`): accelerators, and lax-only traces, use lax's own ops.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

Pair = tuple[int, int]
Pads = tuple[tuple[int, int], tuple[int, int]]
GROUPED_FORMULATIONS = ("per_group", "narrow")

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
# k x k convs with at least this many output pixels per image run as XLA's own conv; smaller
# spatial extents (NF-ResNet-50's last stage at 128px: 4x4) are faster as one im2col matmul.
_LAX_MIN_PIXELS = 64
# ... unless their patches are narrower than this (kh * kw * cin; a 3x3 stem on RGB: 27), where
# im2col is faster: forward + kernel gradient of NF-RegNet-B0's stem (192px, 3 -> 36, batch 16)
# 57 vs 66 ms, of NFNet-F0's (3 -> 16) 37 vs 50 ms.
_LAX_MIN_PATCH = 64
# Grouped kernel-gradient patches are built this many bytes at a time, so they stay in cache.
_PATCH_CHUNK_BYTES = 4 << 20
# Grouped convs with at least this many input channels per group run as one dense conv per
# group; narrower ones by `_grouped_conv` (kh * kw * c multiply-adds per output). Measured
# forward+backward at 192px (tools/conv_microbench.py --family): 128-wide (NFNet) groups per
# group ~1.1x faster than batched-matmul patches, 8-wide (NF-RegNet) groups 1.5-5x slower; the
# switch point between is a guess.
_SPLIT_MIN_GROUP_WIDTH = 32


def lax_conv(
    x: jax.Array, w: jax.Array, strides: Pair, pads: Pads, dilation: Pair = (1, 1), groups: int = 1
) -> jax.Array:
    """XLA's own conv: the reference op, every backend's but XLA:CPU's, and the CPU route for
    shapes it runs fastest."""
    return lax.conv_general_dilated(
        x, w, strides, pads, rhs_dilation=dilation, dimension_numbers=DIMENSION_NUMBERS, feature_group_count=groups
    )


def conv2d(x: jax.Array, w: jax.Array, strides: Pair, pads: Pads, dilation: Pair, groups: int) -> jax.Array:
    """NHWC x HWIO convolution with explicit pads, by the fastest XLA:CPU formulation (module docstring)."""
    khw = tuple(w.shape[:2])
    matmul_ok = x.dtype == w.dtype and min(min(p) for p in pads) >= 0
    if groups > 1 and matmul_ok:
        if w.shape[2] >= _SPLIT_MIN_GROUP_WIDTH:
            return _per_group_conv(x, w, strides, pads, dilation, groups)
        return _grouped_conv(x, w, strides, pads, dilation, groups)
    if not (matmul_ok and groups == 1):
        return lax_conv(x, w, strides, pads, dilation, groups)
    if khw == (1, 1):
        return _conv_1x1(x, w, strides, pads)
    span = tuple((k - 1) * d + 1 for k, d in zip(khw, dilation))  # the dilated kernel's extent
    oh, ow = (_out_size(x.shape[i + 1] + sum(pads[i]), span[i], strides[i]) for i in range(2))
    if oh * ow >= _LAX_MIN_PIXELS and khw[0] * khw[1] * x.shape[3] >= _LAX_MIN_PATCH:
        return lax_conv(x, w, strides, pads, dilation)
    return _im2col_conv(x, w, strides, pads, dilation)


GROUPED_FORMULATIONS = ("per_group", "narrow")


def grouped_conv(x: jax.Array, w: jax.Array, strides: Pair, pads: Pads, groups: int, method: str) -> jax.Array:
    """A grouped conv by one named formulation (GROUPED_FORMULATIONS), whatever `conv2d` would pick."""
    impl = _per_group_conv if method == "per_group" else _grouped_conv
    return impl(x, w, strides, pads, (1, 1), groups)


def _pad(x: jax.Array, pads: Pads, value=0.0) -> jax.Array:
    """Spatial padding; a no-op (no copy) when all pads are zero."""
    if not any(lo or hi for lo, hi in pads):
        return x
    return jnp.pad(x, ((0, 0), *pads, (0, 0)), constant_values=value)


def _out_size(size: int, k: int, s: int) -> int:
    """Output length of a VALID window of k with stride s over an (already padded) axis."""
    return (size - k) // s + 1


def _matmul_nhwc(x: jax.Array, w2d: jax.Array) -> jax.Array:
    """(n, h, w, k) @ (k, o) as one 2-D matmul: XLA:CPU's fastest product, also in backward."""
    n, h, wd, k = x.shape
    return (x.reshape(n * h * wd, k) @ w2d).reshape(n, h, wd, w2d.shape[-1])


def _conv_1x1(x, w, strides, pads):
    """A 1x1 conv is a matmul over channels; padding and striding just select input pixels."""
    x = _pad(x, pads)
    if strides != (1, 1):
        x = x[:, :: strides[0], :: strides[1], :]
    return _matmul_nhwc(x, w[0, 0])


def _taps(xp: jax.Array, khw, strides, out_hw, dilation=(1, 1)) -> list[jax.Array]:
    """The kh*kw (strided) views of the padded input that each kernel tap multiplies."""
    n, _, _, c = xp.shape
    (kh, kw), (sh, sw), (oh, ow), (dh, dw) = khw, strides, out_hw, dilation
    return [
        lax.slice(
            xp, (0, i * dh, j * dw, 0), (n, i * dh + (oh - 1) * sh + 1, j * dw + (ow - 1) * sw + 1, c), (1, sh, sw, 1)
        )
        for i in range(kh)
        for j in range(kw)
    ]


def _im2col_conv(x, w, strides, pads, dilation=(1, 1)):
    """Concatenate the taps on the channel axis, then one matmul (backward: two matmuls)."""
    kh, kw, c, o = w.shape
    xp = _pad(x, pads)
    out_hw = tuple(
        _out_size(xp.shape[i + 1], (k - 1) * d + 1, s) for i, (k, d, s) in enumerate(zip((kh, kw), dilation, strides))
    )
    return _matmul_nhwc(_patches(xp, (kh, kw), strides, out_hw, dilation), w.reshape(kh * kw * c, o))


def _patches(xp, khw, strides, out_hw, dilation=(1, 1)):
    """im2col: the taps concatenated on the channel axis, (n, oh, ow, kh * kw * c)."""
    return jnp.concatenate(_taps(xp, khw, strides, out_hw, dilation), axis=-1)


def _per_group_conv(x, w, strides, pads, dilation, groups):
    """Wide groups: each group is a dense conv on its channel slice (conv2d's fast paths)."""
    cg, og = w.shape[2], w.shape[3] // groups
    return jnp.concatenate(
        [
            conv2d(x[..., g * cg : (g + 1) * cg], w[..., g * og : (g + 1) * og], strides, pads, dilation, 1)
            for g in range(groups)
        ],
        axis=-1,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _grouped_conv(x, w, strides, pads, dilation, groups):
    """Narrow groups: the conv as kh * kw * c broadcast multiply-adds (custom VJP).

    Each output `y[..., g, o]` accumulates `x_tap[..., g, i] * w[tap, i, g, o]` over taps and the
    group's input channels i, kw * c terms per fused loop (one per kernel row). Forward of an
    NF-RegNet-B0 conv (168 channels, 8-wide groups, 24px, batch 16): 16 ms, against 57-73 ms for
    im2col patches + batched matmul (the patches' 8-float chunks are slow to build) and 51 ms for
    XLA's own (YNNPACK) grouped conv. XLA's cost analysis counts exactly the conv's multiply-adds.
    """
    return _grouped_taps(x, w, strides, pads, dilation, groups)


def _grouped_taps(x, w, strides, pads, dilation, groups):
    n = x.shape[0]
    kh, kw, cg, o = w.shape
    (sh, sw), (dh, dw), og = strides, dilation, o // groups
    acc = jnp.promote_types(x.dtype, jnp.float32)  # the sum runs in f32 (bf16 inputs: as a dot would)
    xp = _pad(x, pads).astype(acc)
    oh, ow = (
        _out_size(xp.shape[i + 1], (k - 1) * d + 1, s) for i, (k, d, s) in enumerate(zip((kh, kw), dilation, strides))
    )
    xp = xp.reshape(*xp.shape[:3], groups, cg)
    wg = w.astype(acc).reshape(kh, kw, cg, groups, og)

    # One scan step per kernel row: the loop is a fusion boundary, so XLA neither fuses x's
    # producers into the kw * cg term sum (recomputing them per term) nor duplicates the sum
    # into each consumer of y; optimization barriers are dropped before fusion on XLA:CPU.
    def row(y, inputs):
        i, w_row = inputs
        rows = lax.dynamic_slice_in_dim(xp, i * dh, (oh - 1) * sh + 1, axis=1)[:, ::sh]
        for j in range(kw):
            view = lax.slice_in_dim(rows, j * dw, j * dw + (ow - 1) * sw + 1, sw, axis=2)
            for k in range(cg):
                y = y + view[..., k, None] * w_row[j, k]
        return y, None

    y0 = jnp.zeros((n, oh, ow, groups, og), acc)
    y, _ = lax.scan(row, y0, (jnp.arange(kh), wg))
    return y.reshape(n, oh, ow, o).astype(x.dtype)


def _grouped_conv_fwd(x, w, strides, pads, dilation, groups):
    return _grouped_taps(x, w, strides, pads, dilation, groups), (x, w)


def _group_major(x: jax.Array, groups: int) -> jax.Array:
    """(n, h, w, groups * c) -> (groups, n, h, w, c): channel `g * c + i` is in group g."""
    n, h, wd, c = x.shape
    return x.reshape(n, h, wd, groups, c // groups).transpose(3, 0, 1, 2, 4)


def _channels_last(xg: jax.Array) -> jax.Array:
    """(groups, n, h, w, c) -> (n, h, w, groups * c), the inverse of `_group_major`."""
    g, n, h, wd, c = xg.shape
    return xg.transpose(1, 2, 3, 0, 4).reshape(n, h, wd, g * c)


def _group_patches(xg, khw, strides, pads, dilation) -> jax.Array:
    """im2col per group: (g, n, h, w, c) -> (g, n * oh * ow, kh * kw * c), tap-major."""
    g, n, _, _, c = xg.shape
    xp = jnp.pad(xg, ((0, 0), (0, 0), *pads, (0, 0))) if any(lo or hi for lo, hi in pads) else xg
    (kh, kw), (sh, sw), (dh, dw) = khw, strides, dilation
    oh, ow = (_out_size(xp.shape[i + 2], (khw[i] - 1) * dilation[i] + 1, strides[i]) for i in range(2))
    hp = xp.shape[2]
    # Column taps first (kw views, all rows), then the kh row views of that: fewer, larger copies.
    cols = jnp.stack(
        [
            lax.slice(xp, (0, 0, 0, j * dw, 0), (g, n, hp, j * dw + (ow - 1) * sw + 1, c), (1, 1, 1, sw, 1))
            for j in range(kw)
        ],
        axis=-2,
    )
    rows = [
        lax.slice(cols, (0, 0, i * dh, 0, 0, 0), (g, n, i * dh + (oh - 1) * sh + 1, ow, kw, c), (1, 1, sh, 1, 1, 1))
        for i in range(kh)
    ]
    return jnp.stack(rows, axis=-3).reshape(g, n * oh * ow, kh * kw * c)


def _group_kernel(w: jax.Array, groups: int) -> jax.Array:
    """(kh, kw, c, groups * o) -> (groups, kh * kw * c, o), rows in `_group_patches`' order."""
    kh, kw, c, o = w.shape
    return w.reshape(kh * kw, c, groups, o // groups).transpose(2, 0, 1, 3).reshape(groups, kh * kw * c, o // groups)


_BATCHED = (((2,), (1,)), ((0,), (0,)))  # (g, m, k) @ (g, k, n) -> (g, m, n)


def _transposed_pads(pads, khw, dilation) -> Pads | None:
    """Pads of the stride-1 conv whose output is the input gradient (None if one is negative)."""
    tp = tuple(((k - 1) * d - lo, (k - 1) * d - hi) for (lo, hi), k, d in zip(pads, khw, dilation))
    return tp if min(min(p) for p in tp) >= 0 else None


def _phase_input_grad(dy, w_t, x_shape, strides, pads, groups):
    """Input gradient of a strided (undilated) grouped conv as stride-1 convs, one per phase.

    Per axis, padded input row `q = s * a + r` gets `sum_m dy[a - m] * w[r + s * m]`: a stride-1
    conv of dy with the taps `w[r::s]` (reversed), so phase (r_h, r_w) is `_grouped_conv` on dy
    with a sub-kernel; the phases are interleaved and the padding cropped. `w_t` is the per-group
    transposed kernel (kh, kw, o / g, groups * c), not flipped.
    """
    n, oh, ow, _ = dy.shape
    kh, kw = w_t.shape[:2]
    hp, wp = (x_shape[i + 1] + sum(pads[i]) for i in range(2))
    (sh, sw), out = strides, (oh, ow)
    a_hw = (-(-hp // sh), -(-wp // sw))  # rows / columns of each phase
    c = x_shape[3]
    phases = []
    for rh in range(sh):
        for rw in range(sw):
            mh, mw = len(range(rh, kh, sh)), len(range(rw, kw, sw))
            if mh == 0 or mw == 0:  # stride > kernel: these input pixels get no gradient
                phases.append(jnp.zeros((n, *a_hw, c), dy.dtype))
                continue
            sub = w_t[rh::sh, rw::sw][::-1, ::-1]
            sub_pads = tuple((m - 1, a - o) for m, a, o in zip((mh, mw), a_hw, out))
            phases.append(_grouped_conv(dy, sub, (1, 1), sub_pads, (1, 1), groups))
    dxp = jnp.stack(phases, axis=3).reshape(n, *a_hw, sh, sw, c).transpose(0, 1, 3, 2, 4, 5)
    dxp = dxp.reshape(n, a_hw[0] * sh, a_hw[1] * sw, c)
    (top, _), (left, _) = pads
    return dxp[:, top : top + x_shape[1], left : left + x_shape[2]]


def _grouped_conv_bwd(strides, pads, dilation, groups, res, dy):
    """dx: at stride 1 the same conv of dy with the flipped, per-group transposed kernel;
    strided, one such conv per phase of the stride (`_phase_input_grad`); strided and dilated,
    dy @ w^T per group put back through the patches' transpose.
    dw: dy^T @ patches per group in group-major layout (the small dy is the operand that gets
    transposed; per-tap batched matmuls and reductions over pixels measured slower)."""
    x, w = res
    kh, kw, c, _ = w.shape
    g = groups
    n, oh, ow, _ = dy.shape
    og = w.shape[3] // g
    tpads = _transposed_pads(pads, (kh, kw), dilation)
    w_t = w.reshape(kh, kw, c, g, og).transpose(0, 1, 4, 3, 2).reshape(kh, kw, og, g * c)
    if strides == (1, 1) and tpads is not None:
        dx = _grouped_conv(dy, w_t[::-1, ::-1], strides, tpads, dilation, g)
    elif dilation == (1, 1):
        dx = _phase_input_grad(dy, w_t, x.shape, strides, pads, g)
    else:  # strided and dilated (rare): dy @ w^T per group through the patches' transpose
        dyg = _group_major(dy, g).reshape(g, n * oh * ow, og)
        _, patches_vjp = jax.vjp(lambda xg: _group_patches(xg, (kh, kw), strides, pads, dilation), _group_major(x, g))
        (dxg,) = patches_vjp(lax.dot_general(dyg, _group_kernel(w, g), (((2,), (2,)), ((0,), (0,)))))
        dx = _channels_last(dxg)
    return dx, _grouped_kernel_grad(x, dy, (kh, kw), strides, pads, dilation, g).astype(w.dtype)


def _grouped_kernel_grad(x, dy, khw, strides, pads, dilation, groups) -> jax.Array:
    """HWIO kernel gradient (f32): the sum over batch chunks of dy^T @ patches per group.

    The chunks' patches stay in cache and are built under a scan (unrolled, XLA fused x's
    producers into every chunk's patches: 9x recomputed): B0's kernel gradients 1.3-1.5x faster.
    Each chunk is transposed to group-major inside the loop, where it is in cache."""
    (kh, kw), g = khw, groups
    n, oh, ow, o = dy.shape
    c, og = x.shape[3] // g, o // g
    target = max(1, _PATCH_CHUNK_BYTES // (oh * ow * kh * kw * g * c * x.dtype.itemsize))
    step = max(d for d in range(1, n + 1) if n % d == 0 and d <= target) if n else 1

    def chunk(dw, inputs):
        xc, dyc = inputs
        if step == 1:  # scanned over the images themselves (see below)
            xc, dyc = xc[None], dyc[None]
        patches = _group_patches(_group_major(xc, g), khw, strides, pads, dilation)
        dyc = _group_major(dyc, g).reshape(g, -1, og)
        # (g, og, P) @ (g, P, taps * c): dy transposed explicitly, so the dot is in canonical form
        return dw + lax.dot_general(dyc.transpose(0, 2, 1), patches, _BATCHED, preferred_element_type=jnp.float32), None

    # One image per chunk scans x itself: a (n, 1, h, w, c) view made XLA:CPU copy x into another
    # layout of the same bytes (NF-RegNet-B0's first block at 192px: 16 ms per step).
    xs, dys = (x, dy) if step == 1 else (x.reshape(-1, step, *x.shape[1:]), dy.reshape(-1, step, oh, ow, o))
    dw, _ = lax.scan(chunk, jnp.zeros((g, og, kh * kw * c), jnp.float32), (xs, dys))
    return dw.reshape(g, og, kh * kw, c).transpose(2, 3, 0, 1).reshape(kh, kw, c, o)  # (g, o, taps, c) -> HWIO


_grouped_conv.defvjp(_grouped_conv_fwd, _grouped_conv_bwd)


# ----------------------------------------------------------------------------- max pooling


def max_pool(x: jax.Array, window: int, stride: int, pads: Pads) -> jax.Array:
    """Max pooling with explicit (-inf) pads: a max over the window's strided views; the backward
    routes each output's gradient to the first maximal element of its window (as reduce_window's
    does) with elementwise selects, instead of XLA:CPU's ~20x slower select-and-scatter."""
    return _max_pool(x, window, stride, pads, tuple(x.shape))


def _pool_views(x, window, stride, pads):
    """The window's strided views of the -inf padded input."""
    xp = _pad(x, pads, -jnp.inf)
    out_hw = (_out_size(xp.shape[1], window, stride), _out_size(xp.shape[2], window, stride))
    return _taps(xp, (window, window), (stride, stride), out_hw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3, 4))
def _max_pool(x, window, stride, pads, x_shape):
    views = _pool_views(x, window, stride, pads)
    return functools.reduce(jnp.maximum, views)


def _max_pool_fwd(x, window, stride, pads, x_shape):
    views = _pool_views(x, window, stride, pads)
    out = functools.reduce(jnp.maximum, views)
    # Index of the first view attaining the max; int8 keeps the residual 4x smaller than x.
    dtype = jnp.int8 if len(views) <= 127 else jnp.int32
    first = jnp.zeros(out.shape, dtype)
    for k in range(len(views) - 1, -1, -1):
        first = jnp.where(views[k] == out, jnp.asarray(k, dtype), first)
    return out, first


def _max_pool_bwd(window, stride, pads, x_shape, first, g):
    (top, bottom), (left, right) = pads
    hp, wp = x_shape[1] + top + bottom, x_shape[2] + left + right
    _, oh, ow, _ = g.shape
    zero = jnp.zeros((), g.dtype)
    dxp = None
    for k in range(window * window):
        i, j = divmod(k, window)
        contrib = jnp.where(first == k, g, zero)
        # Put the view's gradient back where the view was read: an interior (strided) pad.
        rows = (i, hp - i - (oh - 1) * stride - 1, stride - 1)
        cols = (j, wp - j - (ow - 1) * stride - 1, stride - 1)
        spread = lax.pad(contrib, zero, ((0, 0, 0), rows, cols, (0, 0, 0)))
        dxp = spread if dxp is None else dxp + spread
    return (lax.slice(dxp, (0, top, left, 0), (x_shape[0], top + x_shape[1], left + x_shape[2], x_shape[3])),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)
