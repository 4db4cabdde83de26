"""The training loop: config -> mesh -> model, optimizer, data -> jitted steps -> metrics,
evaluation (raw and EMA) and checkpoints. It knows nothing about a particular model or task
beyond the task's loss and eval sums.

Read top to bottom: `train_and_evaluate` is the whole run; the helpers below it follow in the
order it calls them. The step and its setup are `nf.train.step`, the eval step
`nf.inference.evaluate`, the reporting after training `nf.train.report`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import ml_collections
from absl import logging
from etils import epath

from nf.inference.evaluate import evaluate_params, global_batch_fn, make_eval_step
from nf.models.pure import ModelFns
from nf.tasks import Task, TrainData, task_class
from nf.train import config_schema, guard, host_memory, transfer
from nf.train.checkpoint import Checkpoints
from nf.train.console import TrainConsole
from nf.train.distributed import StopSignal
from nf.train.report import report, write_model_card
from nf.train.sharding import batch_sharding, make_mesh
from nf.train.step import TrainSetup, make_train_step, optimizer_from_config, setup_training
from nf.train.workdir_lock import WorkdirLock

if TYPE_CHECKING:  # nf.train.metrics imports clu's writers (TensorFlow): loaded by the loop only
    from nf.train.metrics import LoopTimer, MetricLogger


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

    to_global = global_batch_fn(batch_sharding(mesh))
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


__all__ = [  # the trainer's API; the step and the reporting live in nf.train.step and nf.train.report
    "ModelFns",
    "TrainSetup",
    "evaluate",
    "evaluate_params",
    "make_eval_step",
    "make_train_step",
    "optimizer_from_config",
    "setup_training",
    "train_and_evaluate",
]
