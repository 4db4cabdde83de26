"""The training loop: config -> mesh -> model, optimizer, data -> jitted steps -> metrics,
evaluation (raw and EMA) and checkpoints. It knows nothing about a particular model or task
beyond the task's loss and eval sums.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from etils import epath
from flax import nnx

from nf.inference.card import CARD_FILE
from nf.tasks import Task, TrainData, task_class
from nf.train import config_schema, guard, host_memory, transfer
from nf.train.checkpoint import Checkpoints
from nf.train.console import TrainConsole
from nf.train.distributed import StopSignal, host_copy
from nf.train.optim import LeafInfo, ema_update, leaf_info, learning_rate_schedule, make_optimizer
from nf.train.sharding import FSDP_MIN_SIZE, batch_sharding, make_mesh, replicated, train_state_shardings
from nf.train.workdir_lock import WorkdirLock

if TYPE_CHECKING:  # nf.train.metrics imports clu's writers (TensorFlow): loaded by the loop only
    from nf.train.metrics import LoopTimer, MetricLogger


def _from_pure(template: nnx.State, pure: Any) -> nnx.State:
    state = jax.tree.map(lambda x: x, template)  # fresh Variables; the template is not mutated
    nnx.replace_by_pure_dict(state, pure)
    return state


class ModelFns:
    """Pure functions of (params, model_state) around an NNX model's graph definition."""

    def __init__(self, model: nnx.Module):
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.params_template, self.rest_template = nnx.eval_shape(lambda: (params, rest))
        self.info = leaf_info(params)

    def init_values(self, model: nnx.Module) -> tuple[Any, Any]:
        _, params, rest = nnx.split(model, nnx.Param, ...)
        return nnx.to_pure_dict(params), nnx.to_pure_dict(rest)

    def apply(self, params, model_state, images, *, train: bool, key=None, collect_stats: bool = False):
        model = nnx.merge(
            self.graphdef, _from_pure(self.params_template, params), _from_pure(self.rest_template, model_state)
        )
        out = model(images, train=train, key=key, collect_stats=collect_stats)
        return out, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))

    def merged(self, params, model_state) -> nnx.Module:
        return nnx.merge(
            self.graphdef, _from_pure(self.params_template, params), _from_pure(self.rest_template, model_state)
        )


def make_train_step(fns: ModelFns, tx: optax.GradientTransformation, schedule, config, task: Task):
    opt = config.optimizer
    accum = int(opt.get("accum_steps", 1))

    def grads_of(params, model_state, batch, key):
        def loss_fn(p):
            outputs, new_state = fns.apply(p, model_state, batch["image"], train=True, key=key)
            loss, task_metrics = task.loss(outputs, batch)
            return loss, (task_metrics, new_state)

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

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
                body, (zeros, 0.0, state["model_state"]), (micro, jnp.arange(accum))
            )
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
    shardings, enough to lower and compile the step (`tools/benchmark.py --compile_only_models`)."""
    model = nnx.eval_shape(task.build_model) if abstract else task.build_model()
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


def make_eval_step(fns: ModelFns, task: Task):
    def eval_step(params, model_state, batch):
        outputs, _ = fns.apply(params, model_state, batch["image"], train=False)
        return task.eval_sums(outputs, batch)

    return eval_step


def evaluate_params(eval_step, params, model_state, eval_batches, to_global, task: Task) -> dict[str, float]:
    """The task's metrics of one set of weights over one pass of the eval set (every example
    once): per-batch sums added up on the host in float64 and finalized once."""
    totals = None
    for batch in eval_batches():
        sums = eval_step(params, model_state, to_global(batch))
        sums = jax.tree.map(lambda x: np.asarray(x).astype(np.float64), sums)
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    return task.finalize(totals)


def evaluate(eval_step, state, eval_batches, to_global, task: Task) -> dict[str, float]:
    """Raw and EMA metrics (`evaluate_params`), the EMA ones prefixed `ema_`."""
    results = {}
    for prefix, params in (("", state["params"]), ("ema_", state["ema"])):
        metrics = evaluate_params(eval_step, params, state["model_state"], eval_batches, to_global, task)
        results.update({f"{prefix}{k}": v for k, v in metrics.items()})
    return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Train `config` in `workdir` (resuming from its latest checkpoint); returns the final eval.
    One run per workdir: process 0 holds its lock (`nf.train.workdir_lock`) throughout."""
    config_schema.validate(config)  # before anything is written
    with WorkdirLock(workdir, enabled=jax.process_index() == 0):
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    from nf.train.metrics import LoopTimer, MetricLogger

    epath.Path(workdir).mkdir(parents=True, exist_ok=True)  # local or gs://
    mesh = make_mesh(config.mesh)
    check_batch_size(config.batch_size, mesh)
    task, data = build_task(config, workdir)
    if config.get("init_from"):
        transfer.check_init_from(config.init_from, workdir)
    setup = setup_training(config, task, mesh)
    ckpt = open_checkpoints(config, workdir)
    train_iter = data.train_iter()
    state = initial_state(config, setup, ckpt, train_iter)
    start = int(state["step"])
    if jax.process_index() == 0:  # after the checkpoint checks
        write_model_card(config, task, data, workdir)

    to_global = global_batch_fn(mesh)
    train_step, counters = setup.train_step, setup.counters
    eval_step = jax.jit(make_eval_step(setup.fns, task))

    def run_eval(state):
        results = evaluate(eval_step, state, data.eval_batches, to_global, task)
        host_memory.release_freed_memory()  # the eval step's compile (first time) leaves freed heap
        return results

    console = TrainConsole(
        config.total_steps, config.batch_size, start, checkpoints=ckpt.directory, enabled=jax.process_index() == 0
    )
    logger = MetricLogger(workdir, console=console.write)
    hooks = start_logging(config, logger, workdir, start)
    preempted = StopSignal()
    last_eval: dict[str, float] = {}
    if start >= config.total_steps:  # a finished run: nothing to train, evaluate what it holds
        logging.info("%s finished at step %d (total_steps=%d): evaluating only", workdir, start, config.total_steps)
        last_eval = run_eval(state)
    clock = StepClock(LoopTimer())
    try:
        for step in range(start + 1, config.total_steps + 1):
            batch = clock.fetch(train_iter)
            with jax.profiler.StepTraceAnnotation("train", step_num=step):
                state, metrics, counters = train_step(state, to_global(batch), counters)
            clock.dispatched(metrics["loss"])
            if step == start + 1:  # compiling the step freed ~2 GB of heap (NF-ResNet-50): give it back
                host_memory.release_freed_memory()
            for hook in hooks:
                hook(step)
            # Read the flag once per step: a SIGTERM arriving later in this step (logging, eval) is
            # handled at the next boundary, so the step we stop at is always the step we save.
            due = Due.at(step, config, ckpt, stop=preempted.should_stop(step))  # agreed by every process
            if due.log:
                metrics, seen = jax.device_get((metrics, counters))
                # Every step skipped its non-finite updates on the device; stop before any save.
                guard.check(seen, config.get("max_bad_steps", 1), ckpt.latest_step, ckpt.directory)
                logger.write(step, "train", metrics | clock.end_step(step, config.batch_size, synced=True))
            else:
                clock.end_step(step, config.batch_size, synced=False)
            if due.eval:
                last_eval = run_eval(state)
                logger.write(step, "eval", last_eval)
            saved = save_checkpoint(ckpt, step, state, train_iter, due, clock.timer, logger)
            if due.eval or saved:  # not part of any step's time
                clock.restart(step)
            if due.stop:
                ckpt.wait()
                logging.warning("Saved step %d after %s; exiting.", step, preempted.reason)
                break
    finally:
        preempted.restore()
        ckpt.close()
        logger.flush()
        logger.close()
    summary = last_eval | {"step": int(state["step"])} | clock.timer.summary()
    report(config, task, setup.fns, state, data, train_iter, summary, ckpt.directory, workdir, preempted.flag)
    return summary


def check_batch_size(batch_size: int, mesh: jax.sharding.Mesh) -> None:
    """The global batch splits evenly over the mesh's devices, or a clear error."""
    if batch_size % mesh.size:
        raise ValueError(
            f"batch_size={batch_size} is not divisible by the {mesh.size} devices of mesh "
            f"{dict(mesh.shape)} ({jax.process_count()} process(es)); use a multiple of {mesh.size}."
        )


def build_task(config: ml_collections.ConfigDict, workdir: str) -> tuple[Task, TrainData]:
    """The task `config.task` names, made for the classes of the data it builds."""
    cls = task_class(config)
    data = cls.build_data(config, workdir)
    return cls(config, data.num_classes), data


def open_checkpoints(config: ml_collections.ConfigDict, workdir: str) -> Checkpoints:
    """`workdir/checkpoints`, saved every `checkpoint_every_steps` (in the background with one process)."""
    return Checkpoints(
        os.path.join(workdir, "checkpoints"),
        save_every=config.checkpoint_every_steps,
        max_to_keep=config.get("keep_checkpoints", 3),
        background=jax.process_count() == 1,
    )


def initial_state(config: ml_collections.ConfigDict, setup: TrainSetup, ckpt: Checkpoints, train_iter: Any) -> dict:
    """The newest intact checkpoint's state (and data position), else the backbone (or
    fine-tuned classifier) of `config.init_from`, else the fresh initialization."""
    abstract = jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), setup.state, setup.state_shard
    )
    restored = ckpt.restore_latest(abstract, train_iter)
    if restored is not None:
        return restored
    if config.get("init_from"):
        source = config.get("init_from_params", "ema")
        logging.info("Initializing the backbone from %s (%s weights)", config.init_from, source)
        return transfer.restore_backbone(config.init_from, source, setup.state, abstract, setup.fns.info)
    return setup.state


def global_batch_fn(mesh: jax.sharding.Mesh) -> Callable[[dict], dict]:
    """This process's batch -> global arrays sharded over the mesh's batch axes."""
    shard = batch_sharding(mesh)
    return lambda batch: jax.tree.map(lambda x: jax.make_array_from_process_local_data(shard, np.asarray(x)), batch)


def start_logging(
    config: ml_collections.ConfigDict, logger: MetricLogger, workdir: str, start: int
) -> list[Callable[[int], None]]:
    """Cut metrics.jsonl back to the restored step (lines of a killed run's later steps go), write
    the hyperparameters of a fresh run; the per-step hooks: progress reports and the profiler."""
    from clu import periodic_actions  # imports TensorFlow: not needed by evaluation-only users

    from nf.train.metrics import flatten_config

    logger.truncate_after(start)
    if start == 0:
        logger.write_hparams(flatten_config(config.to_dict()))
    hooks = [
        periodic_actions.ReportProgress(
            num_train_steps=config.total_steps, writer=logger.writer, every_steps=config.log_every_steps
        )
    ]
    if config.get("profile_steps", 0) and jax.process_index() == 0:
        hooks.append(
            periodic_actions.Profile(logdir=workdir, num_profile_steps=config.profile_steps, first_profile=start + 5)
        )
    return hooks


class Due(NamedTuple):
    """What the loop does after a step: log it (a synchronization point), evaluate, save."""

    log: bool
    eval: bool
    save: bool
    final: bool  # the last step of this run (total_steps or a stop): the save is forced
    stop: bool  # a stop signal: save this step and exit

    @classmethod
    def at(cls, step: int, config: ml_collections.ConfigDict, ckpt: Checkpoints, stop: bool) -> Due:
        final = step == config.total_steps or stop
        save = final or ckpt.due(step)
        log = step % config.log_every_steps == 0 or save  # the guard checks every step before a save
        evaluate = step % config.eval_every_steps == 0 or step == config.total_steps
        return cls(log, evaluate, save, final, stop)


class StepClock:
    """The loop's timing bookkeeping around a `LoopTimer`: when each step asked for its batch and
    got it, and whether the device had finished the previous step by then."""

    def __init__(self, timer: LoopTimer):
        self.timer = timer
        self._previous = None  # the previous step's loss: is the device still busy when a batch arrives?

    def fetch(self, train_iter: Iterator[dict]) -> dict:
        self._t0 = time.perf_counter()
        batch = next(train_iter)
        self._t1 = time.perf_counter()
        self._previous_done = self._previous is None or self._previous.is_ready()
        return batch

    def dispatched(self, output: jax.Array) -> None:
        self._previous = output

    def end_step(self, step: int, batch_size: int, *, synced: bool) -> dict[str, float]:
        """Account this step's host time. `synced`: its outputs are on the host (a log step), so
        also the throughput since the last synchronization point and the data-wait fraction."""
        now = time.perf_counter()
        self.timer.step(self._t0, self._t1, now, self._previous_done)
        if not synced:
            return {}
        out = {}
        if (per_step := self.timer.synced(step, now)) is not None:
            out["images_per_sec"] = batch_size / per_step
        out["data_wait_fraction"] = self.timer.data_wait_fraction
        return out

    def restart(self, step: int) -> None:
        """Evaluation or a save ran after `step`: the next interval starts now."""
        self.timer.restart(step, time.perf_counter())


def save_checkpoint(
    ckpt: Checkpoints, step: int, state: Any, train_iter: Any, due: Due, timer: LoopTimer, logger: MetricLogger
) -> bool:
    """Save `step` when due (forced on the final step); the stall (how long the loop waits while
    the asynchronous save snapshots the state) is logged. Returns whether a save started."""
    if due.save:  # time the save alone, not the rest of this (asynchronously dispatched) step
        jax.block_until_ready(state)
    t_save = time.perf_counter()
    saved = ckpt.save(step, state, train_iter, force=due.final)
    if saved:
        stall = time.perf_counter() - t_save
        timer.checkpoint_stalls.append(stall)
        logger.write(step, "checkpoint", {"stall_seconds": stall})
    return saved


def report(
    config: ml_collections.ConfigDict,
    task: Task,
    fns: ModelFns,
    state: dict[str, Any],
    data: TrainData,
    train_iter: Any,
    summary: dict[str, float],
    ckpt_dir: str,
    workdir: str,
    stopped: bool,
) -> None:
    """After training: the trained model's SPP (`spp_after_training`, not after a stop) and the
    summary lines (process 0)."""
    spp_state = None
    if config.get("spp_after_training") and not stopped:
        spp_state = host_copy(state)  # a collective (FSDP shards live on every process): all take part
    if jax.process_index() != 0:
        return
    spp_path = None
    if spp_state is not None:
        spp_path = draw_trained_spp(fns, spp_state, data.eval_batches, config.model.name, workdir)
    input_line = train_iter.input_summary() if hasattr(train_iter, "input_summary") else None
    print_summary(workdir, ckpt_dir, summary, spp_path, task.summary_line(summary), input_line)


def write_model_card(config: ml_collections.ConfigDict, task: Task, data: TrainData, workdir: str) -> None:
    """`workdir/nf_model.json` (nf.inference.card), unless there or the task has none: the model,
    classes and the eval preprocessing, so nf-eval / nf-predict / nf-export / init_from need no config."""
    if (epath.Path(workdir) / CARD_FILE).exists():
        return
    source = {"kind": "nf-train"}
    if config.get("init_from"):
        source.update(init_from=config.init_from, init_from_params=config.get("init_from_params", "ema"))
    card = task.model_card(data.class_names, source)
    if card is not None:
        card.save(workdir)


def draw_trained_spp(fns: ModelFns, state, eval_batches, name: str, workdir: str) -> str:
    """SPP of the trained (EMA) model on one batch of evaluation images: workdir/spp/spp.{png,json}."""
    import json

    from nf.signal import compute_spp, plot_spp

    images = next(iter(eval_batches()))["image"]
    model = fns.merged(jax.device_get(state["ema"]), jax.device_get(state["model_state"]))
    stats = {f"{name} (trained, EMA)": compute_spp(model, images, train=False)}
    out = epath.Path(workdir) / "spp"  # local or gs://
    out.mkdir(parents=True, exist_ok=True)
    (out / "spp.json").write_text(json.dumps(stats, indent=1))
    return plot_spp(stats, os.fspath(out / "spp.png"))


def print_summary(
    workdir: str,
    ckpt_dir: str,
    summary: dict,
    spp_path: str | None,
    eval_line: str | None = None,
    input_line: str | None = None,
) -> None:
    lines = [f"Finished at step {summary['step']}."]
    if eval_line:
        lines.append(eval_line)
    if "median_step_seconds" in summary:
        stall = summary.get("max_checkpoint_stall_seconds")
        lines.append(
            f"  median step {summary['median_step_seconds'] * 1e3:.0f} ms, waiting for data "
            f"{summary['data_wait_fraction']:.1%} of the loop"
            + (f", checkpoint saves stalled it at most {stall * 1e3:.0f} ms" if stall is not None else "")
        )
    if input_line:
        lines.append(input_line)
    lines += [
        f"  metrics:     {os.path.join(workdir, 'metrics.jsonl')}",
        f"  checkpoints: {ckpt_dir}",
        f"  TensorBoard: tensorboard --logdir {workdir}",
    ]
    if spp_path:
        lines.append(f"  SPP of the trained model: {spp_path}")
    print("\n".join(lines), flush=True)
