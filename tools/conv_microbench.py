"""Micro-benchmark of conv / max-pool formulations on the NF-ResNet-50 shapes (128px, batch 16),
or on the grouped 3x3 convs of NF-RegNet-B0 / NFNet-F0 (192px, batch 16) with --family.

Times the jitted forward+backward (grads w.r.t. input and kernel) of several formulations of
each layer of ResNet-50 and prints GFLOP/s (2 * MACs * 3). `ops` is `nf.layers.conv_ops` as it
stands; the others are the candidates it was chosen from. Candidates run interleaved, round by
round, so background load hits them alike; the table shows the median and the best round.

    python tools/conv_microbench.py                 # every case
    python tools/conv_microbench.py --only 3x3 --rounds 15
    python tools/conv_microbench.py --net           # whole ResNet-50 conv stack: lax, base, ops
    python tools/conv_microbench.py --malloc-tune   # keep glibc from mmapping big buffers
    python tools/conv_microbench.py --family=regnet_b0 --rounds 5   # grouped: lax, per-group, narrow
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax
import jax.numpy as jnp
from jax import lax

from nf.layers import conv_ops

DN = ("NHWC", "HWIO", "NHWC")
CORES = len(os.sched_getaffinity(0))
METRICS = ("median", "best", "cpu")  # median wall, best wall, median CPU seconds / cores


# ----------------------------------------------------------------------------- candidates


def _groups(x, w):
    return x.shape[-1] // w.shape[2]


def lax_conv(x, w, s):
    g = _groups(x, w)
    return lax.conv_general_dilated(x, w, (s, s), "SAME", dimension_numbers=DN, feature_group_count=g)


def base_conv(x, w, s):
    """conv_ops.conv2d before this tuning: einsum for 1x1 (strided: slice first), lax otherwise."""
    if w.shape[:2] == (1, 1) and _groups(x, w) == 1:
        return jnp.einsum("nhwc,co->nhwo", x[:, ::s, ::s], w[0, 0])
    return lax_conv(x, w, s)


def ops_conv(x, w, s):
    return conv_ops.conv2d(x, w, strides=s, padding="SAME", groups=_groups(x, w))


def _grouped(method):
    """A conv_ops grouped formulation as (x, w, s)."""

    def f(x, w, s):
        return conv_ops.grouped_conv(x, w, strides=s, padding="SAME", groups=_groups(x, w), method=method)

    return f


per_group = _grouped("per_group")
narrow_groups = _grouped("narrow")


def _same(size, k, s):
    out = -(-size // s)
    p = max((out - 1) * s + k - size, 0)
    return out, (p // 2, p - p // 2)


def _taps(x, kh, kw, s):
    """The kh*kw shifted (strided) views of the SAME-padded input, each (n, oh, ow, c)."""
    n, h, w, c = x.shape
    oh, ph = _same(h, kh, s)
    ow, pw = _same(w, kw, s)
    xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
    return [
        lax.slice(xp, (0, i, j, 0), (n, i + (oh - 1) * s + 1, j + (ow - 1) * s + 1, c), (1, s, s, 1))
        for i in range(kh)
        for j in range(kw)
    ]


def matmul_1x1(x, w, s):
    x = x[:, ::s, ::s]
    n, h, ww, c = x.shape
    return (x.reshape(-1, c) @ w[0, 0]).reshape(n, h, ww, -1)


def s2d_matmul_1x1(x, w, s):
    """Subsample by reshape + index (its transpose is a plain pad) instead of a strided slice."""
    n, h, ww, c = x.shape
    x = x.reshape(n, h // s, s, ww // s, s * c)[:, :, 0, :, :c]
    return (x.reshape(-1, c) @ w[0, 0]).reshape(n, h // s, ww // s, -1)


def im2col(x, w, s):
    kh, kw, c, o = w.shape
    p = jnp.concatenate(_taps(x, kh, kw, s), -1)
    return (p.reshape(-1, kh * kw * c) @ w.reshape(-1, o)).reshape(*p.shape[:3], o)


def shifted_matmuls(x, w, s):
    kh, kw, c, o = w.shape
    out = 0
    for k, t in enumerate(_taps(x, kh, kw, s)):
        out = out + (t.reshape(-1, c) @ w[k // kw, k % kw]).reshape(*t.shape[:3], o)
    return out


def _s2d_kernel(w, s):
    kh, kw, c, o = w.shape
    kh2, kw2 = -(-kh // s), -(-kw // s)
    w = jnp.pad(w, ((0, kh2 * s - kh), (0, kw2 * s - kw), (0, 0), (0, 0)))
    return w.reshape(kh2, s, kw2, s, c, o).transpose(0, 2, 1, 3, 4, 5).reshape(kh2, kw2, s * s * c, o)


def _s2d_input(x, kh, kw, s):
    n, h, w, c = x.shape
    oh, ph = _same(h, kh, s)
    ow, pw = _same(w, kw, s)
    kh2, kw2 = -(-kh // s), -(-kw // s)
    hp, wp = (oh + kh2 - 1) * s, (ow + kw2 - 1) * s  # extent the padded kernel reads
    x = jnp.pad(x, ((0, 0), (ph[0], hp - h - ph[0]), (pw[0], wp - w - pw[0]), (0, 0)))
    return x.reshape(n, hp // s, s, wp // s, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, hp // s, wp // s, s * s * c)


def s2d_lax(x, w, s):
    kh, kw = w.shape[:2]
    return lax.conv_general_dilated(_s2d_input(x, kh, kw, s), _s2d_kernel(w, s), (1, 1), "VALID", dimension_numbers=DN)


def s2d_im2col(x, w, s):
    kh, kw, _, o = w.shape
    xs, ws = _s2d_input(x, kh, kw, s), _s2d_kernel(w, s)
    k2h, k2w = ws.shape[:2]
    n, hs, wss, _ = xs.shape
    oh, ow = hs - k2h + 1, wss - k2w + 1
    p = jnp.concatenate([xs[:, i : i + oh, j : j + ow] for i in range(k2h) for j in range(k2w)], -1)
    return (p.reshape(-1, p.shape[-1]) @ ws.reshape(-1, o)).reshape(n, oh, ow, o)


def _vjp_conv(dw_fn):
    """lax conv forward and input gradient; kernel gradient by `dw_fn(x, g, w, s)`."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
    def f(x, w, s):
        return lax_conv(x, w, s)

    def fwd(x, w, s):
        return lax_conv(x, w, s), (x, w)

    def bwd(s, res, g):
        x, w = res
        dx = jax.vjp(lambda x: lax_conv(x, w, s), x)[1](g)[0]
        return dx, dw_fn(x, g, w, s)

    f.defvjp(fwd, bwd)
    return f


def _dw_im2col(x, g, w, s):
    kh, kw, c, o = w.shape
    p = jnp.concatenate(_taps(x, kh, kw, s), -1)
    return (p.reshape(-1, kh * kw * c).T @ g.reshape(-1, o)).reshape(w.shape)


def _dw_taps(x, g, w, s):
    kh, kw, c, o = w.shape
    g2 = g.reshape(-1, o)
    return jnp.stack([t.reshape(-1, c).T @ g2 for t in _taps(x, kh, kw, s)]).reshape(w.shape)


def _dw_im2col_chunked(x, g, w, s, chunk_bytes=4 << 20):
    """_dw_im2col over batch chunks whose patches (~chunk_bytes) stay in cache."""
    kh, kw, c, _ = w.shape
    per_image = g.shape[1] * g.shape[2] * kh * kw * c * x.dtype.itemsize
    step = max(1, min(x.shape[0], chunk_bytes // per_image))
    dw = 0
    for b in range(0, x.shape[0], step):
        dw = dw + _dw_im2col(x[b : b + step], g[b : b + step], w, s)
    return dw


vjp_lax_im2col = _vjp_conv(_dw_im2col)
vjp_lax_chunk = _vjp_conv(_dw_im2col_chunked)
vjp_lax_taps = _vjp_conv(_dw_taps)


def lax_pool(x):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "SAME")


def views_pool(x):
    """conv_ops.max_pool before this tuning: a jnp.maximum chain over the 9 strided views."""
    out = None
    for t in _taps_inf(x):
        out = t if out is None else jnp.maximum(out, t)
    return out


def _taps_inf(x):
    n, h, w, c = x.shape
    oh, ph = _same(h, 3, 2)
    ow, pw = _same(w, 3, 2)
    xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0)), constant_values=-jnp.inf)
    return [
        lax.slice(xp, (0, i, j, 0), (n, i + (oh - 1) * 2 + 1, j + (ow - 1) * 2 + 1, c), (1, 2, 2, 1))
        for i in range(3)
        for j in range(3)
    ]


def ops_pool(x):
    return conv_ops.max_pool(x, 3, 2, "SAME")


# ----------------------------------------------------------------------------- cases

CONV = {"lax": lax_conv, "base": base_conv, "ops": ops_conv}
CASES = []  # (name, kind, x_shape, w_shape, stride, {candidate: fn}, count in ResNet-50)


GROUPED = {"per_group": per_group, "narrow": narrow_groups}
# family -> [(name, input px, channels, groups, stride, count in the network)], 192px batch 16
GROUPED_FAMILIES = {
    "regnet_b0": [
        ("s1 3x3s2 32 g4 @96", 96, 32, 4, 2, 1),
        ("s2 3x3s2 80 g10 @48", 48, 80, 10, 2, 1),
        ("s2 3x3 168 g21 @24", 24, 168, 21, 1, 2),
        ("s3 3x3s2 168 g21 @24", 24, 168, 21, 2, 1),
        ("s3 3x3 344 g43 @12", 12, 344, 43, 1, 5),
        ("s4 3x3s2 344 g43 @12", 12, 344, 43, 2, 1),
        ("s4 3x3 736 g92 @6", 6, 736, 92, 1, 5),
    ],
    "nfnet_f0": [
        ("s2 3x3s2 256 g2 @48", 48, 256, 2, 2, 1),
        ("s2 3x3 256 g2 @24", 24, 256, 2, 1, 3),
        ("s3 3x3s2 768 g6 @24", 24, 768, 6, 2, 1),
        ("s3 3x3 768 g6 @12", 12, 768, 6, 1, 11),
        ("s4 3x3s2 768 g6 @12", 12, 768, 6, 2, 1),
        ("s4 3x3 768 g6 @6", 6, 768, 6, 1, 5),
    ],
}


def _build_grouped_cases(family):
    for name, hw, c, g, s, count in GROUPED_FAMILIES[family]:
        CASES.append((name, "conv", (16, hw, hw, c), (3, 3, c // g, c), s, dict(GROUPED), count))


def _build_cases():
    n = 16
    one = {"matmul": matmul_1x1}
    one_s2 = {"slice_matmul": matmul_1x1, "s2d_matmul": s2d_matmul_1x1}
    three = {
        "im2col": im2col,
        "shift9": shifted_matmuls,
        "vjp_im2col": vjp_lax_im2col,
        "vjp_taps": vjp_lax_taps,
        "vjp_chunk": vjp_lax_chunk,
    }
    three_s2 = dict(three, s2d_lax=s2d_lax, s2d_im2col=s2d_im2col)
    stem = {
        "im2col": im2col,
        "s2d_lax": s2d_lax,
        "s2d_im2col": s2d_im2col,
        "vjp_im2col": vjp_lax_im2col,
        "vjp_chunk": vjp_lax_chunk,
        "vjp_taps": vjp_lax_taps,
    }
    CASES.append(("stem 7x7s2 3->64 @128", "conv", (n, 128, 128, 3), (7, 7, 3, 64), 2, stem, 1))
    CASES.append(("maxpool 3x3s2 64ch @64", "pool", (n, 64, 64, 64), None, 2, {}, 1))
    depths, mids, sizes = (3, 4, 6, 3), (64, 128, 256, 512), (32, 16, 8, 4)
    cin = 64
    for st, (d, mid, hw) in enumerate(zip(depths, mids, sizes)):
        out = 4 * mid
        first = hw if st == 0 else 2 * hw  # spatial size entering the stage
        s = 1 if st == 0 else 2
        tag = f"s{st + 1}"

        def add(name, x_hw, cin_, cout, k, stride, cands, count):
            CASES.append((f"{tag} {name}", "conv", (n, x_hw, x_hw, cin_), (k, k, cin_, cout), stride, cands, count))

        add(f"1x1 {cin}->{mid} @{first}", first, cin, mid, 1, 1, one, 1)
        if s == 2:
            add(f"3x3s2 {mid} @{first}", first, mid, mid, 3, 2, three_s2, 1)
        add(f"3x3 {mid} @{hw}", hw, mid, mid, 3, 1, three, d - (s == 2))
        add(f"1x1 {mid}->{out} @{hw}", hw, mid, out, 1, 1, one, d)
        add(f"short 1x1s{s} {cin}->{out} @{first}", first, cin, out, 1, s, one_s2 if s == 2 else one, 1)
        if d > 1:
            add(f"1x1 {out}->{mid} @{hw}", hw, out, mid, 1, 1, one, d - 1)
        cin = out


def _flops(kind, xs, ws, s):
    n, h, w, c = xs.shape if hasattr(xs, "shape") else xs
    oh, ow = -(-h // s), -(-w // s)
    if kind == "pool":
        return 9 * n * oh * ow * c * 2  # compares, fwd+bwd: only to put the pool on the same scale
    kh, kw, _, o = ws
    return 2 * n * oh * ow * kh * kw * c * o * 3


def _timer(fn):
    """Runs fn once; returns (wall seconds, process CPU seconds / cores).

    The second is a load-robust estimate of the wall time on an idle machine: when other
    processes share the cores, wall time stretches but the CPU time a run needs barely does.
    """

    def run():
        t, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        return time.perf_counter() - t, (time.process_time() - c) / CORES

    return run


def _grad_fn(kind, f, s):
    """jit(grad of <f(x, w), proj>) w.r.t. x (and w); proj is an argument so XLA can't fold it."""
    if kind == "pool":
        return jax.jit(jax.grad(lambda x, proj: jnp.vdot(f(x), proj)))
    return jax.jit(jax.grad(lambda x, w, proj: jnp.vdot(f(x, w, s), proj), argnums=(0, 1)))


def bench_case(name, kind, xs, ws, s, cands, rounds, warmup):
    key = jax.random.PRNGKey(0)
    x = jax.random.normal(key, xs, jnp.float32)
    impls = dict(CONV) if kind == "conv" else {"lax": lax_pool, "base": views_pool, "ops": ops_pool}
    impls.update(cands)
    if kind == "conv":
        w = jax.random.normal(jax.random.fold_in(key, 1), ws, jnp.float32) / np.sqrt(np.prod(ws[:3]))
        ref = lax_conv(x, w, s)
        args = (x, w)
    else:
        ref = lax_pool(x)
        args = (x,)
    proj = jax.random.normal(jax.random.fold_in(key, 2), ref.shape, jnp.float32)
    runs, errs = {}, {}
    args = (*args, proj)
    ref_g = _grad_fn(kind, impls["lax"], s)(*args)
    for nm, f in impls.items():
        g = _grad_fn(kind, f, s)
        out = g(*args)
        fwd = f(x, w, s) if kind == "conv" else f(x)
        errs[nm] = max(
            float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
            for a, b in zip(jax.tree.leaves((fwd, out)), jax.tree.leaves((ref, ref_g)))
        )
        for _ in range(warmup):
            jax.block_until_ready(g(*args))
        runs[nm] = _timer(functools.partial(g, *args))
    times = _interleave(runs, rounds)
    return {nm: (_stats(t), errs[nm]) for nm, t in times.items()}


def _interleave(runs, rounds):
    """Times each candidate once per round, round after round, so load drifts hit all alike."""
    times = {nm: [] for nm in runs}
    for _ in range(rounds):
        for nm, r in runs.items():
            times[nm].append(r())
    return times


def _stats(t):
    """Seconds: (median wall, best wall, median CPU-time/cores)."""
    wall, cpu = np.array(t).T
    return float(np.median(wall)), float(np.min(wall)), float(np.median(cpu))


def matmul_peak(rounds):
    a = jax.random.normal(jax.random.PRNGKey(0), (2048, 2048), jnp.float32)
    f = jax.jit(lambda a, b: a @ b)
    for _ in range(3):
        jax.block_until_ready(f(a, a))
    t = _stats([_timer(functools.partial(f, a, a))() for _ in range(rounds)])
    return tuple(2 * 2048**3 / v / 1e9 for v in t)


# ----------------------------------------------------------------------------- whole network


def resnet50_loss(params, x, conv, pool):
    """ResNet-50-shaped conv stack (conv + relu + residual, no norm) for an end-to-end timing."""
    h = jax.nn.relu(conv(x, params["stem"], 2))
    h = pool(h)
    for st, blocks in enumerate(params["stages"]):
        for b, p in enumerate(blocks):
            s = 2 if (st > 0 and b == 0) else 1
            y = jax.nn.relu(conv(h, p["a"], 1))
            y = jax.nn.relu(conv(y, p["b"], s))
            y = conv(y, p["c"], 1)
            sc = conv(h, p["short"], s) if "short" in p else h
            h = jax.nn.relu(y + sc)
    return jnp.mean(jnp.mean(h, axis=(1, 2)) ** 2)


def resnet50_params(key):
    def init(k, shape):
        return jax.random.normal(k, shape) / np.sqrt(np.prod(shape[:3]))

    keys = iter(jax.random.split(key, 200))
    params = {"stem": init(next(keys), (7, 7, 3, 64)), "stages": []}
    cin, macs = 64, 16 * 64 * 64 * 49 * 3 * 64
    for st, (d, mid) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512))):
        blocks, hw = [], 32 // 2**st
        for b in range(d):
            p = {
                "a": init(next(keys), (1, 1, cin, mid)),
                "b": init(next(keys), (3, 3, mid, mid)),
                "c": init(next(keys), (1, 1, mid, 4 * mid)),
            }
            hin = hw * 2 if (st > 0 and b == 0) else hw
            macs += 16 * (hin * hin * cin * mid + hw * hw * 9 * mid * mid + hw * hw * mid * 4 * mid)
            if b == 0:
                p["short"] = init(next(keys), (1, 1, cin, 4 * mid))
                macs += 16 * hw * hw * cin * 4 * mid
            blocks.append(p)
            cin = 4 * mid
        params["stages"].append(blocks)
    return params, 6 * macs


def bench_net(rounds, warmup):
    params, flops = resnet50_params(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 128, 128, 3))
    variants = (("lax", lax_conv, lax_pool), ("base", base_conv, views_pool), ("ops", ops_conv, ops_pool))
    fns = {
        nm: jax.jit(jax.grad(functools.partial(resnet50_loss, conv=conv, pool=pool), argnums=(0, 1)))
        for nm, conv, pool in variants
    }
    runs = {}
    for nm, f in fns.items():
        for _ in range(warmup):
            jax.block_until_ready(f(params, x))
        runs[nm] = _timer(functools.partial(f, params, x))
    times = _interleave(runs, rounds)
    return {nm: _stats(t) for nm, t in times.items()}, flops


def tune_malloc():
    """Keep big buffers on glibc's heap: on this VM a fresh mmap'd page costs ~4us to fault in."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 2**31 - 1)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="substring filter on case names")
    ap.add_argument("--rounds", type=int, default=9, help="timed runs per candidate (median and best reported)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--candidates", default="", help="comma list of candidate names to keep (lax, ops always run)")
    ap.add_argument("--net", action="store_true", help="time a whole ResNet-50 conv stack: lax, base, ops")
    ap.add_argument(
        "--family", choices=("resnet50", *GROUPED_FAMILIES), default="resnet50", help="whose conv shapes to time"
    )
    ap.add_argument("--metric", choices=METRICS, default="median", help="which timing the totals use")
    ap.add_argument("--malloc-tune", action="store_true", help="raise glibc's mmap/trim thresholds first")
    args = ap.parse_args()
    if args.malloc_tune:
        tune_malloc()
    peak = matmul_peak(max(args.rounds, 5))
    pk = peak[METRICS.index(args.metric)]
    print(
        "matmul 2048^3 f32 GFLOP/s: "
        + ", ".join(f"{m} {p:.1f}" for m, p in zip(METRICS, peak))
        + f"   ({CORES} cores; using '{args.metric}')"
    )

    def gf(flops, t):
        return " / ".join(f"{flops / v / 1e9:.1f}" for v in t)

    if args.net:
        res, flops = bench_net(args.rounds, args.warmup)
        for nm, t in res.items():
            v = flops / t[METRICS.index(args.metric)] / 1e9
            print(
                f"net {nm:4s}: {t[0] * 1e3:8.1f} ms median wall; GFLOP/s {'/'.join(METRICS)} = {gf(flops, t)}"
                f"  -> {v / pk:.1%} of peak   [{flops / 1e9:.1f} GFLOP fwd+bwd]"
            )
        return
    _build_cases() if args.family == "resnet50" else _build_grouped_cases(args.family)
    keep = set(filter(None, args.candidates.split(",")))
    total = {}
    print(f"{'case':34s} {'n':>3s}  candidate=GFLOP/s {'/'.join(METRICS)} (max rel err vs lax)")
    for name, kind, xs, ws, s, cands, count in CASES:
        if args.only not in name:
            continue
        if keep:
            cands = {k: v for k, v in cands.items() if k in keep}
        res = bench_case(name, kind, xs, ws, s, cands, args.rounds, args.warmup)
        fl = _flops(kind, xs, ws, s)
        cells = "  ".join(f"{nm}={gf(fl, t)}({e:.0e})" for nm, (t, e) in res.items())
        print(f"{name:34s} x{count:<2d} {cells}", flush=True)
        for nm, (t, _) in res.items():
            tot = total.setdefault(nm, [0.0, 0.0, 0])
            tot[0] += count * (fl if kind == "conv" else 0.0)
            tot[1] += count * t[METRICS.index(args.metric)]
            tot[2] += 1
    if not args.only and not keep:
        for nm in ("lax", "base", "ops"):
            fl, t, _ = total[nm]
            print(
                f"FLOP-weighted network, {nm}: {fl / t / 1e9:.1f} GFLOP/s = {fl / t / 1e9 / pk:.1%} of matmul peak "
                f"({fl / 1e9:.1f} GFLOP of conv in {t * 1e3:.0f} ms incl. max-pool)"
            )


if __name__ == "__main__":
    main()
