"""The convolution and max-pool ops the layers call, and the one choice of their kernels.

`impl` picks the kernels: "lax" is XLA's own `lax.conv_general_dilated` / `lax.reduce_window`
(the fast path on TPUs and GPUs, the only one with forward-mode `jax.jvp`, and the
formulation-independent jaxpr that `nf.models.stats` counts); "cpu" the XLA:CPU-tuned kernels of
`nf.layers.cpu_kernels`; "auto" (the default) chooses by `jax.default_backend()` when the op is
traced (`kernels`). A model's convs carry their choice (`Conv(conv_impl=...)`,
`nf.layers.set_conv_impl`, the trainer's `config.conv_impl`), so a trace for another backend
(an ahead-of-time TPU compile on a CPU host, a portable export) asks for "lax" explicitly.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from nf.layers import cpu_kernels
from nf.layers.cpu_kernels import GROUPED_FORMULATIONS, Pads, lax_conv

Padding = str | Sequence[tuple[int, int]]
CONV_IMPLS = ("auto", "lax", "cpu")


def kernels(impl: str = "auto") -> str:
    """The kernels `impl` asks for, "lax" or "cpu": "auto" takes the CPU kernels on XLA:CPU only.
    The one place the backend decides what a model traces."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl={impl!r} is unknown; valid: {CONV_IMPLS}")
    if impl == "auto":
        return "cpu" if jax.default_backend() == "cpu" else "lax"
    return impl


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _resolve_padding(padding: Padding, hw, khw, strides, dilation) -> Pads:
    """Explicit ((top, bottom), (left, right)) pads, as lax computes them for a string.

    'SYMMETRIC' is PyTorch's (timm's `get_padding`) `((s - 1) + d * (k - 1)) // 2` on both sides,
    independent of the input size; 'SAME' pads TensorFlow-style (the extra cell at the end)."""
    if padding == "SYMMETRIC":
        return tuple((p, p) for p in (((s - 1) + d * (k - 1)) // 2 for k, s, d in zip(khw, strides, dilation)))
    if isinstance(padding, str):
        window = tuple((k - 1) * d + 1 for k, d in zip(khw, dilation))
        return tuple(map(tuple, lax.padtype_to_pads(hw, window, strides, padding)))
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def conv2d(
    x: jax.Array,
    w: jax.Array,
    *,
    strides: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    impl: str = "auto",
) -> jax.Array:
    """NHWC x HWIO convolution; `padding` is 'SAME', 'VALID', 'SYMMETRIC' or ((top, bottom), (left, right))."""
    strides, dilation = _pair(strides), _pair(dilation)
    pads = _resolve_padding(padding, x.shape[1:3], tuple(w.shape[:2]), strides, dilation)
    if kernels(impl) == "lax":
        return lax_conv(x, w, strides, pads, dilation, groups)
    return cpu_kernels.conv2d(x, w, strides, pads, dilation, groups)


def grouped_conv(
    x: jax.Array, w: jax.Array, *, strides: int = 1, padding: Padding = "SAME", groups: int, method: str
) -> jax.Array:
    """A grouped conv by one named XLA:CPU formulation, whatever `conv2d` would pick (for
    benchmarks): 'per_group' (one conv per group, concatenated) or 'narrow' (multiply-adds)."""
    if method not in GROUPED_FORMULATIONS:
        raise ValueError(f"Unknown grouped formulation {method!r}; valid: {GROUPED_FORMULATIONS}")
    strides = _pair(strides)
    pads = _resolve_padding(padding, x.shape[1:3], tuple(w.shape[:2]), strides, (1, 1))
    return cpu_kernels.grouped_conv(x, w, strides, pads, groups, method)


def max_pool(x: jax.Array, window: int = 3, stride: int = 2, padding: str = "SAME", impl: str = "auto") -> jax.Array:
    """Max pooling (-inf padding), equal to `lax.reduce_window(x, -inf, lax.max, ...)`."""
    if padding not in ("SAME", "VALID", "SYMMETRIC"):
        raise ValueError(f"max_pool padding must be 'SAME', 'VALID' or 'SYMMETRIC', got {padding!r}")
    pads = _resolve_padding(padding, x.shape[1:3], (window, window), (stride, stride), (1, 1))
    if kernels(impl) == "lax":
        return lax.reduce_window(
            x, -jnp.inf, lax.max, (1, window, window, 1), (1, stride, stride, 1), ((0, 0), *pads, (0, 0))
        )
    return cpu_kernels.max_pool(x, window, stride, pads)
