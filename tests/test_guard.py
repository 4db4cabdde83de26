"""The per-step non-finite guard on a toy SGD step whose batches can be poisoned three ways (NaN
loss, NaN gradient, overflowing update with finite loss and gradient). Reference: the same steps in
numpy with the poisoned batches left out."""

from __future__ import annotations

import numpy as np
import pytest

LR = 0.1


def _toy_step(state, batch):
    """SGD on 0.5 * |w - x|^2 * scale with EMA; `poison` picks what goes non-finite."""
    import jax.numpy as jnp

    w = state["params"]["w"]
    grad = (w - batch["x"]) * batch["grad_scale"]
    loss = 0.5 * jnp.sum((w - batch["x"]) ** 2) + batch["loss_add"]
    new_w = (w - LR * grad) * batch["param_scale"]
    new_state = {
        "step": state["step"] + 1,
        "params": {"w": new_w},
        "opt_state": {"count": state["opt_state"]["count"] + 1.0},
        "ema": {"w": 0.5 * state["ema"]["w"] + 0.5 * new_w},
        "model_state": {},
    }
    return new_state, {"loss": loss, "grad_norm": jnp.linalg.norm(grad)}


def _batch(i: int, poison: str | None) -> dict:
    x = np.linspace(-1, 1, 4, dtype=np.float32) * (i + 1)
    b = {"x": x, "grad_scale": np.float32(1), "loss_add": np.float32(0), "param_scale": np.float32(1)}
    if poison == "loss":
        b["loss_add"] = np.float32(np.nan)
    elif poison == "grad":
        b["grad_scale"] = np.float32(np.inf)
    elif poison == "params":  # loss and gradient finite, the update overflows float32
        b["param_scale"] = np.float32(3e38)
        b["x"] = np.full(4, 2.0, np.float32)
    return b


def _run(poisoned: dict[int, str], steps: int, max_bad_steps: int):
    import jax
    import jax.numpy as jnp

    from nf.train import guard

    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": {"w": jnp.ones(4)},
        "opt_state": {"count": jnp.zeros(())},
        "ema": {"w": jnp.ones(4)},
        "model_state": {},
    }
    step_fn = jax.jit(guard.guarded(_toy_step, max_bad_steps), donate_argnums=(0, 2))
    counters = guard.init_counters()
    saw_nonfinite = False
    for i in range(steps):
        state, metrics, counters = step_fn(state, _batch(i, poisoned.get(i + 1)), counters)
        saw_nonfinite |= not all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state))
    assert not saw_nonfinite  # not one step's state held a NaN or inf
    return jax.device_get(state), jax.device_get(metrics), jax.device_get(counters)


def _reference(skipped: set[int], steps: int):
    w, ema, count = np.ones(4, np.float32), np.ones(4, np.float32), 0.0
    for i in range(steps):
        if i + 1 in skipped:
            continue
        x = _batch(i, None)["x"]
        w = w - np.float32(LR) * (w - x)
        ema = 0.5 * ema + 0.5 * w
        count += 1
    return w, ema, count


@pytest.mark.parametrize("poison", ["loss", "grad", "params"])
def test_a_bad_step_is_skipped_and_counted(poison):
    from nf.train import guard

    state, metrics, counters = _run({3: poison}, steps=6, max_bad_steps=1)
    w, ema, count = _reference({3}, 6)
    np.testing.assert_allclose(state["params"]["w"], w, rtol=1e-6)
    np.testing.assert_allclose(state["ema"]["w"], ema, rtol=1e-6)
    assert float(state["opt_state"]["count"]) == count == 5
    assert int(state["step"]) == 6  # the counter advances: loop, schedule and checkpoints agree
    assert int(counters["skipped"]) == int(metrics["skipped_steps"]) == 1
    assert int(counters["stop_step"]) == 3 and int(counters["consecutive"]) == 0
    # read three steps later (a log interval larger than the failing step): names step 3
    want = {"loss": "Loss became nan", "grad": "Gradient norm became inf", "params": "updated parameters"}[poison]
    with pytest.raises(guard.NonFiniteLossError, match=f"{want}.* at step 3;"):
        guard.check(counters, 1, last_checkpoint=lambda: None, directory="ckpt")


def test_isolated_bad_steps_are_tolerated_below_the_limit():
    from nf.train import guard

    state, _, counters = _run({2: "grad", 4: "loss", 5: "loss"}, steps=8, max_bad_steps=3)
    w, _, _ = _reference({2, 4, 5}, 8)
    np.testing.assert_allclose(state["params"]["w"], w, rtol=1e-6)
    assert int(counters["skipped"]) == 3 and int(counters["stop_step"]) == 0
    guard.check(counters, 3, last_checkpoint=lambda: 4, directory="ckpt")  # no error

    _, _, counters = _run({2: "grad", 3: "loss", 4: "params", 6: "loss"}, steps=8, max_bad_steps=3)
    assert int(counters["stop_step"]) == 4 and int(counters["skipped"]) == 4
    with pytest.raises(guard.NonFiniteLossError, match=r"3 consecutive .* at step 4;.*step 2\) in ckpt is intact"):
        guard.check(counters, 3, last_checkpoint=lambda: 2, directory="ckpt")


def test_max_bad_steps_must_be_positive():
    from nf.train import guard

    with pytest.raises(ValueError, match="max_bad_steps=0"):
        guard.guarded(_toy_step, 0)
