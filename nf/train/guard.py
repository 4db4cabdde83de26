"""The non-finite guard: every step, on the device, without a host synchronization.

`guarded(train_step, max_bad_steps)` wraps a `(state, batch) -> (state, metrics)` step. Inside the
same jitted program it decides whether the step is finite (loss, gradient norm and every updated
parameter) and, when it is not, keeps the previous values of every state leaf: the batch is skipped
(only the step counter advances, so loop, schedule and checkpoints keep counting steps). Small
device counters (`GuardCounters`) are carried from step to step; the loop reads them with the
metrics at log and save steps (`check`) and stops once `max_bad_steps` consecutive steps were
skipped. Because a bad step never reaches the state, no checkpoint can hold a non-finite value,
whatever the log interval.

Each check is one sum per leaf (fused by XLA into the step's last pass over the leaf): a NaN or an
inf anywhere makes the sum non-finite (finite values so large that their sum overflows float32
count as bad too, which is what they are about to become).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

GuardCounters = dict[str, jax.Array]


class NonFiniteLossError(FloatingPointError):
    pass


def init_counters() -> GuardCounters:
    """Consecutive and total skipped steps; the step, loss and gradient norm of the first run of
    `max_bad_steps` consecutive skipped steps (step 0: none yet)."""
    return {
        "consecutive": jnp.zeros((), jnp.int32),
        "skipped": jnp.zeros((), jnp.int32),
        "stop_step": jnp.zeros((), jnp.int32),
        "stop_loss": jnp.zeros((), jnp.float32),
        "stop_grad_norm": jnp.zeros((), jnp.float32),
    }


def tree_is_finite(*trees: Any) -> jax.Array:
    """True when every floating-point leaf of `trees` is finite (one fused sum per leaf)."""
    ok = jnp.ones((), bool)
    for leaf in jax.tree.leaves(trees):
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            ok = ok & jnp.isfinite(jnp.sum(leaf, dtype=jnp.float32))
    return ok


def keep_finite(state: dict, new_state: dict, loss: jax.Array, grad_norm: jax.Array) -> tuple[dict, jax.Array]:
    """(`new_state` if the step is finite else `state` with the new step counter, the finite flag)."""
    # The optimizer and EMA states are finite when the gradients (their norm) and the updated
    # parameters are: checking those two is enough, and a third of the reads.
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & tree_is_finite(new_state["params"])
    changed = {k: v for k, v in new_state.items() if k != "step"}
    kept = jax.tree.map(lambda new, old: jnp.where(ok, new, old), changed, {k: state[k] for k in changed})
    kept["step"] = new_state["step"]
    return kept, ok


def guarded(train_step: Callable, max_bad_steps: int) -> Callable:
    """`(state, batch, counters) -> (state, metrics, counters)`: `train_step` that skips non-finite
    steps (see the module docstring). `metrics` gains `skipped_steps` (total so far)."""
    if max_bad_steps < 1:
        raise ValueError(f"max_bad_steps={max_bad_steps} must be >= 1 (1: stop at the first non-finite step)")

    def step(state, batch, counters: GuardCounters):
        new_state, metrics = train_step(state, batch)
        loss, grad_norm = metrics["loss"], metrics["grad_norm"]
        kept, ok = keep_finite(state, new_state, loss, grad_norm)
        consecutive = jnp.where(ok, 0, counters["consecutive"] + 1)
        first_stop = (consecutive == max_bad_steps) & (counters["stop_step"] == 0)
        new_counters = {
            "consecutive": consecutive,
            "skipped": counters["skipped"] + (~ok).astype(jnp.int32),
            "stop_step": jnp.where(first_stop, state["step"] + 1, counters["stop_step"]),
            "stop_loss": jnp.where(first_stop, loss.astype(jnp.float32), counters["stop_loss"]),
            "stop_grad_norm": jnp.where(first_stop, grad_norm.astype(jnp.float32), counters["stop_grad_norm"]),
        }
        return kept, {**metrics, "skipped_steps": new_counters["skipped"]}, new_counters

    return step


def check(
    counters: dict[str, Any], max_bad_steps: int, last_checkpoint: Callable[[], int | None], directory: str
) -> None:
    """At a log or save step, with `counters` on the host: raise `NonFiniteLossError` naming the step
    where `max_bad_steps` consecutive steps had been skipped (`last_checkpoint()` is only asked then:
    it waits for a save in flight)."""
    stop = int(counters["stop_step"])
    if not stop:
        return
    last_checkpoint = last_checkpoint()
    loss, grad_norm = float(counters["stop_loss"]), float(counters["stop_grad_norm"])
    if not np.isfinite(loss):
        what = f"Loss became {loss}"
    elif not np.isfinite(grad_norm):
        what = f"Gradient norm became {grad_norm}"
    else:
        what = "The updated parameters became non-finite"
    if max_bad_steps > 1:
        what += f" ({max_bad_steps} consecutive non-finite steps, skipped)"
    kept = (
        f"The last good checkpoint (step {last_checkpoint}) in {directory} is intact."
        if last_checkpoint
        else "No checkpoint had been written yet."
    )
    raise NonFiniteLossError(
        f"{what} at step {stop}; stopping. {kept} No non-finite update reached the saved state. Lower the "
        "learning rate or enable AGC (optimizer.agc_clip); config.max_bad_steps > 1 skips isolated bad batches."
    )
