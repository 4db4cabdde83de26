"""Activations with their variance-preserving gains gamma (paper §4.3, Appendix D).

`gamma = 1 / sqrt(Var[g(x)])` for `x ~ N(0, 1)`, applied as `g(x) * gamma` so that the
activation maps unit-variance inputs to unit-variance outputs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

Activation = Callable[[jax.Array], jax.Array]

# name -> (function, gamma). The gammas are DeepMind's Monte-Carlo constants (paper §4.2-4.3);
# pretrained weights depend on exactly these values, so they are not recomputed.
ACTIVATIONS: dict[str, tuple[Activation, float]] = {
    "relu": (jax.nn.relu, 1.7139588594436646),
    "gelu": (jax.nn.gelu, 1.7015043497085571),  # tanh approximation (jax default)
    # erf GELU (PyTorch's default, so timm's dm_nfnet ports) with the tanh version's gamma, as timm has it
    "gelu_exact": (functools.partial(jax.nn.gelu, approximate=False), 1.7015043497085571),
    "silu": (jax.nn.silu, 1.7881293296813965),
    "swish": (jax.nn.silu, 1.7881293296813965),
    "tanh": (jnp.tanh, 1.5939117670059204),
    "elu": (jax.nn.elu, 1.2716004848480225),
    "selu": (jax.nn.selu, 1.0008515119552612),
    "sigmoid": (jax.nn.sigmoid, 4.803835391998291),
    "softplus": (jax.nn.softplus, 1.9203323125839233),
    "leaky_relu": (jax.nn.leaky_relu, 1.70590341091156),
    "relu6": (jax.nn.relu6, 1.7131484746932983),
    "celu": (jax.nn.celu, 1.270926833152771),
    "soft_sign": (jax.nn.soft_sign, 2.338853120803833),
    "log_sigmoid": (jax.nn.log_sigmoid, 1.9193484783172607),
}

GAMMA: dict[str, float] = {name: gamma for name, (_, gamma) in ACTIVATIONS.items()}


def estimate_gamma(fn: Activation, seed: int = 2, shape: tuple[int, int] = (1024, 256)) -> float:
    """Paper Appendix D: `mean(var(g(x), axis=1)) ** -0.5` over a (1024, 256) N(0,1) sample."""
    x = jax.random.normal(jax.random.PRNGKey(seed), shape, jnp.float32)
    return float(jnp.mean(jnp.var(fn(x), axis=1)) ** -0.5)


def _scaled(x: jax.Array, fn: Activation, gain: float) -> jax.Array:
    return fn(x) * gain


def get_activation(activation: str | Activation) -> tuple[Activation, float]:
    """Return `(g, gamma)` for a table name or any callable (gamma estimated for callables)."""
    if callable(activation):
        return activation, estimate_gamma(activation)
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"Unknown activation {activation!r}; valid names: {sorted(ACTIVATIONS)} "
            "(or pass any callable, whose gamma is then estimated)."
        )
    return ACTIVATIONS[activation]


@functools.cache  # one object per (activation, gain): equal models get equal graphdefs (no jit recompiles)
def scaled_activation(activation: str | Activation, gain: float | None = None) -> Activation:
    """`x -> g(x) * gain`; `gain=None` uses the activation's gamma (variance preserving)."""
    fn, gamma = get_activation(activation)
    return functools.partial(_scaled, fn=fn, gain=gamma if gain is None else float(gain))
