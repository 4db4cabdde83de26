"""The optimizer recipe as one optax chain: AGC -> coupled weight decay -> SGD (Nesterov) on a
linear-warmup + cosine schedule, and the parameter EMA of the NF papers.

Parameters are selected by structure, never by name: a leaf's *unit rank* is its rank minus the
leading axes stacked by scanned stages (`stack_axes` metadata), so a stacked conv kernel is still
a rank-4 kernel. Gains, biases and skip gains (unit rank <= 1) get no weight decay; the classifier
(variables the model tags `classifier=True`) is exempt from AGC.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from nf.models.pure import LeafInfo

PyTree = Any


def decay_mask(info: PyTree) -> PyTree:
    """True where weight decay applies: kernels (unit rank >= 2); not gains, biases, skip gains."""
    return jax.tree.map(lambda i: i.unit_rank >= 2, info, is_leaf=lambda x: isinstance(x, LeafInfo))


def unit_norm(x: jax.Array, info: LeafInfo) -> jax.Array:
    """L2 norm per unit (NFNet paper): whole tensor for scalars/vectors, over all but the output
    axis for kernels (linear: input axis; HWIO conv: axes 0,1,2); stacked block axes kept."""
    last = x.ndim if info.unit_rank <= 1 else x.ndim - 1
    axes = tuple(range(info.stack_axes, last))
    return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axes, keepdims=True))


def adaptive_grad_clip(clipping: float, info: PyTree, eps: float = 1e-3) -> optax.GradientTransformation:
    """AGC: scale a unit's gradient to `clipping * max(||W||, eps)` when it is larger."""

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("adaptive_grad_clip needs the parameters: call tx.update(grads, state, params)")

        def clip(g, p, i):
            if i.classifier:
                return g
            g_norm, max_norm = unit_norm(g, i), clipping * jnp.maximum(unit_norm(p, i), eps)
            return jnp.where(g_norm > max_norm, g * (max_norm / jnp.maximum(g_norm, 1e-6)), g)

        # `info` holds a LeafInfo tuple at each leaf position of `updates`.
        return jax.tree.map(clip, updates, params, info), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


SCHEDULES = ("cosine", "piecewise")


def learning_rate_schedule(
    base_lr: float,
    total_steps: int,
    warmup_steps: int,
    end_lr: float = 0.0,
    *,
    kind: str = "cosine",
    boundaries: Sequence[float] = (0.7, 0.9),
    decay_factor: float = 0.1,
) -> optax.Schedule:
    """Linear warmup from 0 to `base_lr`, then cosine decay to `end_lr` (`kind="cosine"`), or
    `base_lr` multiplied by `decay_factor` at each fraction of `total_steps` in `boundaries`
    (`kind="piecewise"`: the FCN recipe's x0.1 at 70% and 90%).

    A run no longer than its warmup (e.g. a short smoke run of a long config) keeps the warmup
    ramp: the same learning rates as the first steps of the full run."""
    if kind not in SCHEDULES:
        raise ValueError(f"Unknown learning-rate schedule {kind!r}; valid: {SCHEDULES}")
    warmup_steps, total_steps = max(warmup_steps, 0), max(total_steps, 1)
    if kind == "piecewise":
        # the decay schedule counts from the end of the warmup (optax.join_schedules)
        steps = {max(round(b * total_steps) - warmup_steps, 0): decay_factor for b in boundaries}
        decay = optax.piecewise_constant_schedule(base_lr, steps)
        if not warmup_steps:
            return decay
        return optax.join_schedules([optax.linear_schedule(0.0, base_lr, warmup_steps), decay], [warmup_steps])
    if warmup_steps >= total_steps:  # optax's cosine part would need a positive number of steps
        return optax.linear_schedule(0.0, base_lr, warmup_steps)
    return optax.warmup_cosine_decay_schedule(0.0, base_lr, warmup_steps, total_steps, end_lr)


def make_optimizer(
    info: PyTree,
    *,
    learning_rate: optax.ScalarOrSchedule,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    agc_clip: float | None = None,
    update_scales: PyTree | None = None,
) -> optax.GradientTransformation:
    """AGC (optional) -> coupled weight decay (masked) -> SGD with (Nesterov) momentum -> per-leaf
    update scales (optional: a tree of floats like the params, e.g. 0 for a frozen backbone or
    0.1 for a lower backbone learning rate; nf.train.transfer.backbone_scales)."""
    chain = []
    if agc_clip:
        chain.append(adaptive_grad_clip(agc_clip, info))
    if weight_decay:
        chain.append(optax.add_decayed_weights(weight_decay, mask=decay_mask(info)))
    chain.append(optax.sgd(learning_rate, momentum=momentum or None, nesterov=nesterov and bool(momentum)))
    if update_scales is not None:
        chain.append(scale_updates(update_scales))
    return optax.chain(*chain)


def scale_updates(scales: PyTree) -> optax.GradientTransformation:
    """Multiply each leaf's update by its (Python float) scale; a scale of 0 gives exact zeros,
    so those parameters stay bit-identical (a learning-rate multiplier: the momentum buffers
    before it are unscaled, the step after it is)."""

    def scale(u, s):
        if s == 0.0:
            return jnp.zeros_like(u)
        return u if s == 1.0 else u * jnp.asarray(s, u.dtype)

    def update(updates, state, params=None):
        del params
        return jax.tree.map(scale, updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def ema_decay(step: jax.Array, decay: float) -> jax.Array:
    """Warm-up EMA decay `min(decay, (1 + t) / (10 + t))` (NF-RegNet / NFNet recipes)."""
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def ema_update(ema: PyTree, params: PyTree, step: jax.Array, decay: float) -> PyTree:
    """`ema = d_t * ema + (1 - d_t) * params`."""
    d = ema_decay(step, decay)
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
