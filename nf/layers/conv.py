"""Convolutions: a plain conv and the Scaled Weight Standardized conv (paper §4.2, paper §4.2-4.3)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from nf.layers.conv_ops import CONV_IMPLS, Padding, conv2d

Initializer = Callable[..., jax.Array]

WS_EPS = 1e-4  # floors fan_in * var, as DeepMind's reference does (timm differs)
TIMM_WS_EPS = 1e-5  # added to var, as timm's ScaledStdConv2d does (its NfCfg.std_conv_eps)
WS_FORMULAS = ("deepmind", "timm")


def he_normal() -> Initializer:
    """Gaussian He init, variance 2 / fan_in (the paper's baselines)."""
    return nnx.initializers.variance_scaling(2.0, "fan_in", "normal")


HE_NORMAL = he_normal()


def standardize_weight(kernel: jax.Array, gain: jax.Array, eps: float = WS_EPS) -> jax.Array:
    """Scaled WS: `(W - mean) * gain / sqrt(max(fan_in * var, eps))` per output channel.

    Reduces over (kh, kw, cin) as one flattened fan-in axis, so a stacked (scanned) kernel of shape
    (n, kh, kw, cin, cout) standardizes each member independently. Mean and mean square come from
    one pass over the weights (`var = E[w^2] - mean^2`): on XLA:CPU this halves the backward's cost
    against two-pass `jnp.var`. Precision holds because |mean| stays below std: the output ignores
    the kernel's mean, so its gradient has zero mean over fan-in and training (SGD, weight decay,
    AGC) only ever shrinks the mean it had at init.
    """
    shape = kernel.shape
    fan_in = shape[-4] * shape[-3] * shape[-2]
    w = kernel.reshape(*shape[:-4], fan_in, shape[-1])
    mean = jnp.mean(w, axis=-2, keepdims=True)
    var = jnp.maximum(jnp.mean(w * w, axis=-2, keepdims=True) - mean * mean, 0.0)
    scale = jax.lax.rsqrt(jnp.maximum(var * fan_in, eps)) * jnp.expand_dims(gain, -2)
    return (w * scale - mean * scale).reshape(shape)


def standardize_weight_timm(
    kernel: jax.Array, gain: jax.Array, gamma: float = 1.0, eps: float = TIMM_WS_EPS
) -> jax.Array:
    """timm's Scaled WS: `(W - mean) / sqrt(var + eps) * gain * gamma / sqrt(fan_in)`.

    A batch norm over each output channel's fan-in (timm's `ScaledStdConv2d`); `gamma` is the
    activation's gain when timm folds it into the conv instead of the activation. Against
    DeepMind's formula it adds `fan_in * eps` to `fan_in * var` instead of flooring it.
    """
    shape = kernel.shape
    fan_in = shape[-4] * shape[-3] * shape[-2]
    w = kernel.reshape(*shape[:-4], fan_in, shape[-1])
    mean = jnp.mean(w, axis=-2, keepdims=True)
    var = jnp.mean(jnp.square(w - mean), axis=-2, keepdims=True)
    scale = jax.lax.rsqrt(var + eps) * jnp.expand_dims(gain, -2) * (gamma * fan_in**-0.5)
    return ((w - mean) * scale).reshape(shape)


def ws_kernel(kernel: jax.Array, gain: jax.Array, formula: str = "deepmind", gamma: float = 1.0) -> jax.Array:
    """The standardized kernel under DeepMind's or timm's formula (`gamma` scales the result)."""
    if formula == "timm":
        return standardize_weight_timm(kernel, gain, gamma)
    w_hat = standardize_weight(kernel, gain)
    return w_hat if gamma == 1.0 else w_hat * gamma


class Conv(nnx.Module):
    """NHWC conv with HWIO kernel; `padding` is 'SAME', 'VALID' or explicit pairs; `conv_impl`
    the kernels it traces to (nf.layers.conv_ops: "auto", "lax" or "cpu")."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        *,
        strides: int | Sequence[int] = 1,
        padding: Padding = "SAME",
        dilation: int | Sequence[int] = 1,
        groups: int = 1,
        use_bias: bool = True,
        kernel_init: Initializer = HE_NORMAL,
        dtype: jnp.dtype | None = None,
        conv_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        if conv_impl not in CONV_IMPLS:
            raise ValueError(f"{type(self).__name__}: conv_impl={conv_impl!r} is unknown; valid: {CONV_IMPLS}")
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if value <= 0 or value % groups:
                raise ValueError(
                    f"{type(self).__name__}: {name}={value} must be a positive multiple of groups={groups}"
                )
        self.in_features, self.out_features, self.groups = in_features, out_features, groups
        self.strides, self.padding, self.dilation, self.dtype = strides, padding, dilation, dtype
        self.conv_impl = conv_impl
        shape = (kh, kw, in_features // groups, out_features)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None

    def effective_kernel(self) -> jax.Array:
        """The kernel the convolution applies."""
        return self.kernel[...]

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4 or x.shape[-1] != self.in_features:
            raise ValueError(
                f"{type(self).__name__} expects NHWC input with {self.in_features} channels, got shape {x.shape}"
            )
        w = self.effective_kernel()
        if self.dtype is not None:
            x, w = x.astype(self.dtype), w.astype(self.dtype)
        y = conv2d(
            x,
            w,
            strides=self.strides,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            impl=self.conv_impl,
        )
        return y if self.bias is None else y + self.bias[...].astype(y.dtype)


class ScaledWSConv(Conv):
    """Conv whose kernel is standardized in every forward pass, with a learnable gain and bias.

    Outputs have zero mean and the input's variance at init for zero-mean unit-variance inputs;
    `fold_ws` bakes the standardized kernel in for inference. `ws_formula` picks DeepMind's or
    timm's standardization; `gamma` multiplies the kernel (timm's activation gain folded into the
    conv, for its non-`dm_` models).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int],
        *,
        ws_formula: str = "deepmind",
        gamma: float = 1.0,
        **kwargs,
    ):
        if ws_formula not in WS_FORMULAS:
            raise ValueError(f"Unknown ws_formula {ws_formula!r}; valid: {WS_FORMULAS}")
        self.ws_formula, self.gamma = ws_formula, float(gamma)
        kwargs.setdefault("kernel_init", nnx.initializers.variance_scaling(1.0, "fan_in", "normal"))
        if not kwargs.pop("use_bias", True):
            raise ValueError("ScaledWSConv always carries a bias (paper §4.2-4.3); use Conv for a bias-free conv")
        kwargs["use_bias"] = True
        super().__init__(in_features, out_features, kernel_size, **kwargs)
        self.gain = nnx.Param(jnp.ones((out_features,), jnp.float32))
        self.folded = False  # set by fold_ws: the kernel already holds W_hat

    def effective_kernel(self) -> jax.Array:
        if self.folded:
            return self.kernel[...]
        return ws_kernel(self.kernel[...], self.gain[...], self.ws_formula, self.gamma)


_standardize_jit = jax.jit(ws_kernel, static_argnums=(2, 3))  # one compile per kernel shape and formula


def fold_ws(model: nnx.Module) -> nnx.Module:
    """A copy of `model` whose Scaled WS convs hold W_hat: same outputs, no standardization cost."""
    model = nnx.clone(model)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, ScaledWSConv) and not node.folded:
            node.kernel[...] = _standardize_jit(node.kernel[...], node.gain[...], node.ws_formula, node.gamma)
            node.gain[...] = jnp.ones_like(node.gain[...])  # W_hat already includes the gain
            node.folded = True
    return model


def set_conv_impl(model: nnx.Module, impl: str) -> nnx.Module:
    """A copy of `model` whose convs (and the pools that follow their choice) trace to `impl`'s
    kernels (nf.layers.conv_ops): "lax" for a trace meant for another backend than this one's
    (an accelerator's compile on a CPU host, a portable export, the MAC count)."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl={impl!r} is unknown; valid: {CONV_IMPLS}")
    model = nnx.clone(model)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, Conv):
            node.conv_impl = impl
    return model
