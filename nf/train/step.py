"""One training step and what it needs: config -> model functions, optimizer, sharded train
state and the jitted, guarded step (the state is donated). The loop (nf.train.trainer) calls it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from nf.layers import set_conv_impl
from nf.models.pure import LeafInfo, ModelFns
from nf.tasks import Task
from nf.tasks.base import model_images
from nf.train import guard, transfer
from nf.train.optim import ema_update, learning_rate_schedule, make_optimizer
from nf.train.sharding import FSDP_MIN_SIZE, replicated, train_state_shardings


def make_grads_fn(fns: ModelFns, task: Task) -> Callable:
    """`(params, model_state, batch, key) -> ((loss, (task_metrics, model_state)), grads)` of one
    (micro-)batch: the forward and backward pass of the train step."""

    def grads_of(params, model_state, batch, key):
        def loss_fn(p):
            outputs, new_state = fns.apply(p, model_state, model_images(batch), train=True, key=key)
            loss, task_metrics = task.loss(outputs, batch)
            return loss, (task_metrics, new_state)

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    return grads_of


def make_train_step(fns: ModelFns, tx: optax.GradientTransformation, schedule, config, task: Task):
    opt = config.optimizer
    accum = int(opt.get("accum_steps", 1))
    grads_of = make_grads_fn(fns, task)

    def train_step(state, batch):
        step = state["step"]
        key = jax.random.fold_in(jax.random.key(config.seed), step)  # resumable: no RNG state
        if accum == 1:
            (loss, (task_metrics, model_state)), grads = grads_of(state["params"], state["model_state"], batch, key)
        else:
            # Micro-batch i takes examples i, i+accum, ...: every device contributes to every micro-batch.
            micro = jax.tree.map(lambda x: x.reshape((x.shape[0] // accum, accum, *x.shape[1:])).swapaxes(0, 1), batch)

            def body(carry, xs):
                g_sum, l_sum, ms = carry
                mb, i = xs
                (loss_i, (m, ms)), g = grads_of(state["params"], ms, mb, jax.random.fold_in(key, i))
                return (jax.tree.map(jnp.add, g_sum, g), l_sum + loss_i, ms), m

            zeros = jax.tree.map(jnp.zeros_like, state["params"])
            (grads, loss, model_state), task_metrics = jax.lax.scan(
                body, (zeros, 0.0, state["model_state"]), (micro, jnp.arange(accum)), unroll=1
            )  # a loop, also when costed: the planner adds the other micro-batches' cost (nf.plan)
            grads = jax.tree.map(lambda g: g / accum, grads)
            loss, task_metrics = loss / accum, jax.tree.map(lambda m: jnp.mean(m, axis=0), task_metrics)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        new_state = {
            "step": step + 1,
            "params": params,
            "opt_state": opt_state,
            "ema": ema_update(state["ema"], params, step, opt.ema_decay),
            "model_state": model_state,
        }
        metrics = {
            "loss": loss,
            **task_metrics,
            "grad_norm": optax.global_norm(grads),
            "learning_rate": schedule(step),
        }
        return new_state, metrics

    return train_step


class TrainSetup(NamedTuple):
    """What `setup_training` builds: the trainer's model functions, optimizer and sharded state,
    and its train step, plain (`step_fn`, for cost analysis) and jitted (`train_step`)."""

    fns: ModelFns
    schedule: optax.Schedule
    tx: optax.GradientTransformation
    state: dict[str, Any]  # device arrays placed by `state_shard`, or ShapeDtypeStructs (abstract)
    state_shard: dict[str, Any]
    step_fn: Callable
    train_step: Callable  # (state, batch, guard counters) -> (state, metrics, counters)
    counters: Any  # the guard's initial counters, replicated


def optimizer_from_config(config: ml_collections.ConfigDict, info: Any) -> tuple[optax.Schedule, Any]:
    """`(schedule, tx)` of `config.optimizer`: the recipe of `nf.train.optim` (AGC, masked weight
    decay, SGD with Nesterov momentum on a warmup + cosine/piecewise schedule)."""
    opt = config.optimizer
    base_lr = opt.lr * (config.batch_size / 256 if opt.get("scale_lr_by_batch", False) else 1.0)
    schedule = learning_rate_schedule(
        base_lr,
        config.total_steps,
        opt.warmup_steps,
        opt.get("end_lr", 0.0),
        kind=opt.get("schedule", "cosine"),
        boundaries=tuple(opt.get("boundaries", (0.7, 0.9))),
        decay_factor=opt.get("decay_factor", 0.1),
    )
    tx = make_optimizer(
        info,
        learning_rate=schedule,
        momentum=opt.momentum,
        nesterov=opt.nesterov,
        weight_decay=opt.weight_decay,
        agc_clip=opt.get("agc_clip") or None,
        update_scales=transfer.backbone_scales(  # fine-tuning: frozen or slower backbone
            info, freeze=config.get("freeze_backbone", False), lr_mult=config.get("backbone_lr_mult", 1.0)
        ),
    )
    return schedule, tx


def setup_training(
    config: ml_collections.ConfigDict, task: Task, mesh: jax.sharding.Mesh, *, abstract: bool = False
) -> TrainSetup:
    """config -> model, optimizer, sharded train state and the jitted train step (the state is
    donated). `abstract=True` builds nothing in memory: the state is ShapeDtypeStructs with their
    shardings, enough to lower and compile the step (`tools/compile_time.py`)."""
    model = nnx.eval_shape(task.build_model) if abstract else task.build_model()
    if config.get("conv_impl", "auto") != "auto":  # e.g. "lax": a TPU's compile on a CPU host
        model = set_conv_impl(model, config.conv_impl)
    fns = ModelFns(model)
    params, model_state = fns.init_values(model)
    del model
    schedule, tx = optimizer_from_config(config, fns.info)

    def init_state(params, model_state):
        return {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "opt_state": tx.init(params),
            "ema": jax.tree.map(jnp.copy, params),  # its own buffers: the step donates the state
            "model_state": model_state,
        }

    # Shardings: parameter-shaped trees follow the FSDP rule; everything else is replicated.
    stack_axes = jax.tree.map(lambda i: i.stack_axes, fns.info, is_leaf=lambda x: isinstance(x, LeafInfo))
    state_shard = train_state_shardings(
        mesh, tx, params, stack_axes, model_state, min_size=config.get("fsdp_min_size", FSDP_MIN_SIZE)
    )
    if abstract:
        shapes = jax.eval_shape(init_state, params, model_state)
        state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, state_shard)
    else:
        state = jax.device_put(init_state(params, model_state), state_shard)
    step_fn = make_train_step(fns, tx, schedule, config, task)
    train_step = jax.jit(  # skips non-finite steps on the device; `guard.check` reads the counters
        guard.guarded(step_fn, config.get("max_bad_steps", 1)),
        donate_argnums=(0, 2),
        out_shardings=(state_shard, replicated(mesh), replicated(mesh)),
    )
    counters = guard.init_counters()
    if not abstract:
        counters = jax.device_put(counters, replicated(mesh))
    return TrainSetup(fns, schedule, tx, state, state_shard, step_fn, train_step, counters)
