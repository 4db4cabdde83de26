"""Convolution primitives tuned for XLA:CPU (and fine on accelerators).

XLA:CPU runs some convolution backward passes far slower than the equivalent matmul
(REFERENCE §9): a 1x1 conv through `conv_general_dilated` reaches ~9 GFLOP/s forward+backward,
the same product as a matmul ~60. `conv2d` therefore routes each case to the fastest
formulation; every path computes exactly `lax.conv_general_dilated` (NHWC, HWIO).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

Padding = str | Sequence[tuple[int, int]]


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def conv2d(
    x: jax.Array,
    w: jax.Array,
    *,
    strides: int | Sequence[int] = 1,
    padding: Padding = "SAME",
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
) -> jax.Array:
    """NHWC x HWIO convolution; `padding` is 'SAME', 'VALID' or ((top, bottom), (left, right))."""
    strides, dilation = _pair(strides), _pair(dilation)
    kh, kw = w.shape[:2]
    if (kh, kw) == (1, 1) and groups == 1 and padding in ("SAME", "VALID"):
        # A 1x1 conv is a matmul over channels; strides subsample first (SAME adds no padding).
        if strides != (1, 1):
            x = x[:, :: strides[0], :: strides[1], :]
        return jnp.einsum("nhwc,co->nhwo", x, w[0, 0])
    return lax.conv_general_dilated(
        x,
        w,
        window_strides=strides,
        padding=padding if isinstance(padding, str) else tuple(map(tuple, padding)),
        rhs_dilation=dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=groups,
    )


def max_pool(x: jax.Array, window: int = 3, stride: int = 2, padding: str = "SAME") -> jax.Array:
    """Max pooling as a max over strided shifted views (its backward is elementwise selects)."""
    n, h, w, c = x.shape
    if padding == "SAME":
        out_h, out_w = -(-h // stride), -(-w // stride)
        ph = max((out_h - 1) * stride + window - h, 0)
        pw = max((out_w - 1) * stride + window - w, 0)
        pads = ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0))
        x = jnp.pad(x, pads, constant_values=-jnp.inf)
    elif padding == "VALID":
        out_h, out_w = (h - window) // stride + 1, (w - window) // stride + 1
    else:
        raise ValueError(f"max_pool padding must be 'SAME' or 'VALID', got {padding!r}")
    views = [
        x[:, i : i + (out_h - 1) * stride + 1 : stride, j : j + (out_w - 1) * stride + 1 : stride, :]
        for i in range(window)
        for j in range(window)
    ]
    out = views[0]
    for v in views[1:]:
        out = jnp.maximum(out, v)
    return out
