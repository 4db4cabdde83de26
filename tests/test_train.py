"""The trainer end to end on real files: `python -m nf.train` subprocesses on the digits data with a
tiny config derived from configs/quickstart.py (conftest.py), real orbax checkpoints, grain iterator
state, TensorBoard event files and metrics.jsonl. Checked against independent references: a
numpy evaluation of the restored checkpoint, the schedule formula, an uninterrupted run (resume
after SIGTERM must be bit-identical) and a one-device run (8 fake devices must agree)."""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from nf.train.metrics import LoopTimer

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 900  # seconds per trainer subprocess (compilation on a loaded 2-core machine is slow)
STEPS = 12  # conftest.TINY_OVERRIDES
SIGTERM_AFTER = 6  # the first eval step: the signal lands while the trainer evaluates
TIMING_KEYS = {"images_per_sec", "data_wait_fraction"}
EVAL_KEYS = {"top1", "top5", "loss", "ema_top1", "ema_top5", "ema_loss"}


# ------------------------------------------------------------------------------------- helpers


def _env(cache_dir: Path, devices: int | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        JAX_PLATFORMS="cpu",
        # Trainer subprocesses of one session share compiled programs (a warm cache changes
        # nothing but the compile time).
        JAX_COMPILATION_CACHE_DIR=str(cache_dir),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
    )
    xla = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    # Multi-threaded Eigen kernels on XLA:CPU are not bit-reproducible from run to run (the last bit
    # of some gradients changes); single-threaded ones are, and the resume test needs that.
    xla.append("--xla_cpu_multi_thread_eigen=false")
    if devices:
        xla.append(f"--xla_force_host_platform_device_count={devices}")
    env["XLA_FLAGS"] = " ".join(xla)
    return env


def _cmd(config, workdir, *flags) -> list[str]:
    return [sys.executable, "-m", "nf.train", f"--config={config}", f"--workdir={workdir}", *flags]


def _run(cmd, env, log: Path) -> tuple[int, str]:
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=TIMEOUT)
    return proc.returncode, log.read_text()


def _tail(text: str, n: int = 6000) -> str:
    return text[-n:]


def read_metrics(workdir: Path) -> list[dict]:
    """metrics.jsonl lines (an incomplete last line of a running trainer is skipped)."""
    path = Path(workdir) / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return out


def _train(metrics):
    return [m for m in metrics if m["split"] == "train"]


def _eval(metrics):
    return [m for m in metrics if m["split"] == "eval"]


def checkpoint_steps(workdir: Path) -> list[int]:
    d = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def _path(keys) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys)


def restore_state(workdir: Path, step: int) -> dict[tuple[str, ...], np.ndarray]:
    """The saved train state as {path: numpy array}, read with plain orbax (no trainer code)."""
    import jax
    import orbax.checkpoint as ocp

    path = Path(workdir) / "checkpoints" / str(step) / "state"
    one_device = jax.sharding.SingleDeviceSharding(jax.devices()[0])  # whatever mesh saved it
    with ocp.StandardCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        meta = getattr(meta, "item_metadata", meta)
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one_device), meta)
        tree = ckptr.restore(path, target)
    return {_path(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file and folder under `directory`, but the
    workdir lock (every run takes it, then empties it)."""
    from nf.train.workdir_lock import LOCK_NAME

    out = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            if name == LOCK_NAME and Path(root) == Path(directory):
                continue
            p = Path(root) / name
            st = p.stat()
            out[str(p.relative_to(directory))] = (st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


def np_schedule(t: int, base: float, total: int, warmup: int, end: float = 0.0) -> float:
    """paper App. A: linear warmup from 0, cosine to `end`; runs shorter than the warmup ramp only."""
    if t < warmup:
        return base * t / warmup
    frac = min((t - warmup) / max(total - warmup, 1), 1.0)
    return end + (base - end) * 0.5 * (1 + math.cos(math.pi * frac))


def read_events(workdir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from the TensorBoard event files."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    files = glob.glob(str(Path(workdir) / "events.out.tfevents*"))
    assert files, f"no TensorBoard event file in {workdir}"
    out: dict[str, dict[int, float]] = {}
    for f in files:
        for event in EventFileLoader(f).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "scalars":
                    continue
                out.setdefault(value.tag, {})[event.step] = float(tensor_util.make_ndarray(value.tensor))
    return out


def assert_same_as_reference(workdir: Path, reference_run: Path) -> None:
    """The final checkpoint bit-identical to the uninterrupted run's and metrics.jsonl holding
    exactly its lines (timing aside; an interrupted run also saved at its stop step)."""
    want, got = restore_state(reference_run, STEPS), restore_state(workdir, STEPS)
    assert set(got) == set(want)
    assert {k[0] for k in got} == {"step", "params", "opt_state", "ema"}  # model_state is empty
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=str(k))

    def comparable(metrics):
        return [{k: v for k, v in m.items() if k not in TIMING_KEYS} for m in metrics if m["split"] != "checkpoint"]

    assert comparable(read_metrics(workdir)) == comparable(read_metrics(reference_run))


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def reference_run(tiny_config_file, jax_cache_dir, tmp_path_factory) -> Path:
    """One uninterrupted tiny run to STEPS: the reference for the other tests."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    rc, out = _run(_cmd(tiny_config_file, workdir), _env(jax_cache_dir), workdir.parent / "train.log")
    assert rc == 0, _tail(out)
    return workdir


# ------------------------------------------------------------------------------------- tests


def test_loop_timer_counts_only_idle_waits_and_skips_the_compiling_step():
    timer = LoopTimer()
    timer.step(0.0, 5.0, 30.0, previous_done=True)  # first step: compile, excluded
    timer.step(30.0, 30.5, 31.0, previous_done=True)  # device idle while waiting: 0.5 s lost
    timer.step(31.0, 31.4, 32.0, previous_done=False)  # the wait overlapped the previous step
    assert timer.total == pytest.approx(2.0) and timer.waited == pytest.approx(0.5)
    assert timer.data_wait_fraction == pytest.approx(0.25)
    timer.checkpoint_stalls += [0.01, 0.03]
    assert timer.summary() == pytest.approx({"data_wait_fraction": 0.25, "max_checkpoint_stall_seconds": 0.03})


def test_loop_timer_step_time_between_synchronization_points():
    # Async dispatch: the host's per-iteration time says nothing about the device; only the
    # intervals between log steps (where the loop waits for the metrics) measure steps.
    timer = LoopTimer()
    assert timer.synced(5, 40.0) is None  # steps 1-5 contain the compile: no clean interval
    assert timer.synced(10, 45.0) == pytest.approx(1.0)  # 5 steps in 5 s
    timer.restart(10, 60.0)  # an evaluation and a save ran after step 10
    assert timer.synced(15, 62.5) == pytest.approx(0.5)
    assert timer.synced(20, 65.5) == pytest.approx(0.6)
    assert timer.synced(20, 70.0) is None  # the same step again (a save-only log): no interval
    assert timer.summary()["median_step_seconds"] == pytest.approx(0.6)


def test_end_to_end_artifacts(reference_run, tiny_config):
    config = tiny_config()
    # orbax checkpoints: periodic every 4 steps, the final one, keep 2 (quickstart)
    assert checkpoint_steps(reference_run) == [8, 12]
    for step in (8, 12):
        d = reference_run / "checkpoints" / str(step)
        assert (d / "state").is_dir() and (d / "data").is_dir()
    # the grain iterator state next to the train state: 12 batches consumed
    data_state = json.loads((reference_run / "checkpoints" / "12" / "data" / "process_0-of-1.json").read_text())
    assert data_state["next_batch"] == STEPS
    state = restore_state(reference_run, 12)
    assert int(state[("step",)]) == STEPS

    # metrics.jsonl: a train line per step, eval lines (raw and EMA) at 6 and 12
    metrics = read_metrics(reference_run)
    train, evals = _train(metrics), _eval(metrics)
    assert [m["step"] for m in train] == list(range(1, STEPS + 1))
    for m in train:
        assert {"step", "split", "loss", "accuracy", "grad_norm", "learning_rate"} <= set(m)
        assert math.isfinite(m["loss"]) and 0 <= m["accuracy"] <= 1
    assert [m["step"] for m in evals] == [6, 12]
    # every save reports how long it blocked the loop (async: only the device-to-host copy)
    stalls = [m for m in metrics if m["split"] == "checkpoint"]
    assert [m["step"] for m in stalls] == [4, 8, 12] and all(m["stall_seconds"] >= 0 for m in stalls)
    for m in evals:
        assert set(m) == {"step", "split"} | EVAL_KEYS
        for prefix in ("", "ema_"):
            assert 0 <= m[prefix + "top1"] <= m[prefix + "top5"] <= 1

    # the learning rate of step k is the schedule at update count k - 1 (paper App. A formula)
    opt = config.optimizer
    for m in train:
        want = np_schedule(m["step"] - 1, opt.lr, config.total_steps, opt.warmup_steps, opt.end_lr)
        assert m["learning_rate"] == pytest.approx(want, rel=1e-5, abs=1e-9), m["step"]

    # TensorBoard event files hold the same scalars
    events = read_events(reference_run)
    for m in train:
        assert events["train/loss"][m["step"]] == pytest.approx(m["loss"], rel=1e-6)
        assert events["train/learning_rate"][m["step"]] == pytest.approx(m["learning_rate"], rel=1e-6, abs=1e-12)
    for m in evals:
        for k in EVAL_KEYS:
            assert events[f"eval/{k}"][m["step"]] == pytest.approx(m[k], rel=1e-6), k

    # the final eval line, recomputed from the restored checkpoint with numpy metrics
    final = evals[-1]
    for prefix, part in (("", "params"), ("ema_", "ema")):
        got = independent_eval(config, state, part)
        assert got["count"] == 300
        assert got["top1"] == pytest.approx(final[prefix + "top1"], abs=1.01 / 300), prefix
        assert got["top5"] == pytest.approx(final[prefix + "top5"], abs=1.01 / 300), prefix
        assert got["loss"] == pytest.approx(final[prefix + "loss"], rel=1e-4), prefix


def independent_eval(config, state: dict[str, np.ndarray], part: str) -> dict[str, float]:
    """Evaluate `state[part]` on the whole test split: model forward in JAX, metrics in numpy."""
    import jax
    from flax import nnx

    from nf import data as nf_data
    from nf.models import create_model

    options = {k: v for k, v in config.model.items() if k not in ("name", "dtype")}
    abstract = nnx.eval_shape(lambda: create_model(config.model.name, num_classes=10, **options))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    pure = nnx.to_pure_dict(params)
    paths = jax.tree_util.tree_flatten_with_path(pure)[0]
    values = [state[(part, *_path(p))] for p, _ in paths]
    nnx.replace_by_pure_dict(params, jax.tree.unflatten(jax.tree.structure(pure), values))
    model_graph, model_state = nnx.split(nnx.merge(graphdef, params, rest))
    forward = jax.jit(lambda s, x: nnx.merge(model_graph, s)(x, train=False))

    train_source = nf_data.open_source(config.data.train)
    source = nf_data.open_source(config.data.eval, classes=train_source.classes)
    # The eval preprocessing written out from the config keys (not the task's own builder).
    preprocessing = nf_data.Preprocessing.nf(config.data.image_size, config.data.eval_crop, config.data.crop_padding)
    loader = nf_data.LoaderSettings(batch_size=config.batch_size)
    it = nf_data.make_pipeline(source, nf_data.ClassificationEval(preprocessing, num_classes=10), loader)
    logits, labels = [], []
    for batch in it:
        out = np.asarray(forward(model_state, batch["image"]), np.float64)
        logits.append(out[batch["mask"]])
        labels.append(batch["label"][batch["mask"]])
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    assert np.bincount(labels, minlength=10).tolist() == [30] * 10  # every test image exactly once
    order = np.argsort(-logits, axis=1)
    lse = np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1)) + logits.max(1)
    return {
        "count": len(labels),
        "top1": float(np.mean(order[:, 0] == labels)),
        "top5": float(np.mean(np.any(order[:, :5] == labels[:, None], axis=1))),
        "loss": float(np.mean(lse - logits[np.arange(len(labels)), labels])),
    }


def test_resume_after_sigterm_is_bit_exact(reference_run, tiny_config_file, jax_cache_dir, tmp_path):
    """SIGTERM mid-run: the trainer saves at the next step boundary and exits 0; the same command
    then finishes the run with params, EMA and optimizer state bit-identical to an uninterrupted
    run, and metrics.jsonl holds exactly the uninterrupted run's lines."""
    workdir = tmp_path / "run"
    env, cmd = _env(jax_cache_dir), _cmd(tiny_config_file, workdir)
    log = tmp_path / "first.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + TIMEOUT
            while max([m["step"] for m in _train(read_metrics(workdir))], default=0) < SIGTERM_AFTER:
                assert proc.poll() is None, "trainer exited before the signal:\n" + _tail(log.read_text())
                assert time.monotonic() < deadline, f"timed out waiting for step {SIGTERM_AFTER}"
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    out = log.read_text()
    assert rc == 0, _tail(out)
    assert "SIGTERM received" in out
    stopped = max(m["step"] for m in _train(read_metrics(workdir)))
    assert SIGTERM_AFTER <= stopped < STEPS, "the interrupted run did not stop early"
    # the step it stopped at is the step it saved (nothing trained or logged past the checkpoint)
    assert max(checkpoint_steps(workdir)) == stopped
    assert int(restore_state(workdir, stopped)[("step",)]) == stopped

    rc, out = _run(cmd, env, tmp_path / "second.log")
    assert rc == 0, _tail(out)
    assert f"Resuming from {workdir / 'checkpoints'}/{stopped}" in out

    assert_same_as_reference(workdir, reference_run)


def _start(cmd, env, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _wait_until(condition, proc: subprocess.Popen, log: Path, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert proc.poll() is None, f"trainer exited before {what}:\n" + _tail(log.read_text())
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def _last_train_step(workdir: Path) -> int:
    return max([m["step"] for m in _train(read_metrics(workdir))], default=0)


def test_sigint_saves_and_a_second_one_exits_at_once(tiny_config_file, jax_cache_dir, tmp_path):
    """Ctrl-C: save at the next step boundary, exit 0; Ctrl-C twice: exit at once (130), nothing
    saved past the last completed checkpoint."""
    workdir = tmp_path / "run"
    env, cmd = _env(jax_cache_dir), _cmd(tiny_config_file, workdir)
    log = tmp_path / "first.log"
    proc = _start(cmd, env, log)
    try:
        _wait_until(lambda: _last_train_step(workdir) >= 2, proc, log, "step 2")
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=TIMEOUT)
    finally:
        proc.kill() if proc.poll() is None else None
    out = log.read_text()
    assert rc == 0, _tail(out)
    stopped = _last_train_step(workdir)
    assert "SIGINT received: saving a checkpoint" in out and f"Saved step {stopped} after SIGINT" in out, _tail(out)
    assert 2 <= stopped < STEPS and max(checkpoint_steps(workdir)) == stopped

    log = tmp_path / "second.log"
    proc = _start(cmd, env, log)
    try:
        _wait_until(lambda: _last_train_step(workdir) >= stopped + 1, proc, log, "the resumed run's first step")
        proc.send_signal(signal.SIGINT)  # the second only after the first was handled (signals coalesce)
        _wait_until(lambda: "SIGINT received" in log.read_text(), proc, log, "the first SIGINT")
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        rc = proc.wait(timeout=TIMEOUT)
        took = time.monotonic() - t0
    finally:
        proc.kill() if proc.poll() is None else None
    out = log.read_text()
    assert rc == 130 and "Second SIGINT: exiting now without saving" in out, _tail(out)
    assert took < 10, took
    assert max(checkpoint_steps(workdir)) < STEPS


def test_sigterm_while_starting_saves_at_the_first_step(tiny_config_file, jax_cache_dir, tmp_path):
    """A SIGTERM that arrives before the training loop (here: right after the JAX devices are up,
    while data, model and the step are built) no longer kills the run unsaved."""
    workdir = tmp_path / "run"
    log = tmp_path / "log"
    proc = _start(_cmd(tiny_config_file, workdir), _env(jax_cache_dir), log)
    try:
        _wait_until(lambda: "JAX devices" in log.read_text(), proc, log, "start-up")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=TIMEOUT)
    finally:
        proc.kill() if proc.poll() is None else None
    out = log.read_text()
    assert rc == 0, _tail(out)
    assert "SIGTERM received while starting" in out and "Saved step 1 after SIGTERM" in out, _tail(out)
    assert checkpoint_steps(workdir) == [1] and int(restore_state(workdir, 1)[("step",)]) == 1


def test_a_second_trainer_on_the_same_workdir_fails_fast(tiny_config_file, jax_cache_dir, tmp_path):
    """While one run trains, a second `nf-train` on its workdir exits with an error naming the
    first (its process id); the first finishes untouched, each step logged once."""
    workdir = tmp_path / "run"
    env, cmd = _env(jax_cache_dir), _cmd(tiny_config_file, workdir)
    log = tmp_path / "first.log"
    first = _start(cmd, env, log)
    try:
        _wait_until(lambda: _last_train_step(workdir) >= 1, first, log, "step 1")
        first.send_signal(signal.SIGSTOP)  # the tiny run would finish before the second one starts
        t0 = time.monotonic()
        rc, out = _run(cmd, env, tmp_path / "second.log")
        detect = time.monotonic() - t0
        first.send_signal(signal.SIGCONT)
        assert rc != 0 and f"is in use by another nf-train run: process {first.pid} on host" in out, _tail(out)
        print(f"second trainer refused after {detect:.1f} s (process start to exit)")
        assert detect < 60
        assert first.wait(timeout=TIMEOUT) == 0, _tail(log.read_text())
    finally:
        first.kill() if first.poll() is None else None
    assert [m["step"] for m in _train(read_metrics(workdir))] == list(range(1, STEPS + 1))


def test_metrics_file_is_cut_back_to_the_restored_step(tmp_path):
    """After a kill -9 the file holds lines past the last checkpoint (and maybe half a line); the
    resumed run writes those steps again, so they go first."""
    from nf.train.metrics import MetricLogger

    lines = [
        json.dumps({"step": s, "split": split, "loss": s / 10}) + "\n" for s in range(1, 9) for split in ("train",)
    ]
    lines.insert(6, json.dumps({"step": 6, "split": "eval", "top1": 0.5}) + "\n")
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(lines) + '{"step": 9, "spl')
    logger = MetricLogger(str(tmp_path))
    assert logger.truncate_after(6) == 3  # steps 7 and 8, and the cut line
    logger.write(7, "train", {"loss": 0.7})
    logger.close()
    got = read_metrics(tmp_path)
    assert [(m["step"], m["split"]) for m in got] == [(s, "train") for s in range(1, 7)] + [(6, "eval"), (7, "train")]
    path.write_text("".join(lines))
    logger = MetricLogger(str(tmp_path))
    assert logger.truncate_after(0) == len(lines) and path.read_text() == ""  # no checkpoint: start over
    logger.close()


@pytest.mark.slow  # ~1-2 min: its own compilation for 8 devices
def test_eight_devices_match_one_device(reference_run, tiny_config_file, jax_cache_dir, tmp_path):
    """Same global batch on 8 fake CPU devices: the same losses as one device. The run also
    checks command-line overrides: --config.total_steps=3 and --config.eval_every_steps=2."""
    workdir = tmp_path / "run"
    flags = ("--config.total_steps=3", "--config.eval_every_steps=2")
    rc, out = _run(_cmd(tiny_config_file, workdir, *flags), _env(jax_cache_dir, devices=8), tmp_path / "log")
    assert rc == 0, _tail(out)
    assert "CpuDevice(id=7)" in out
    metrics = read_metrics(workdir)
    assert [m["step"] for m in _train(metrics)] == [1, 2, 3]
    assert [m["step"] for m in _eval(metrics)] == [2, 3]
    assert checkpoint_steps(workdir) == [3]
    assert int(restore_state(workdir, 3)[("step",)]) == 3

    # The learning rates of the first 3 steps do not depend on total_steps (warmup is 3 steps),
    # so the 12-step one-device reference run is the one-device baseline.
    ref = {m["step"]: m for m in _train(read_metrics(reference_run))}
    for m in _train(metrics):
        r = ref[m["step"]]
        assert m["learning_rate"] == pytest.approx(r["learning_rate"], rel=1e-6, abs=1e-12)
        # float32 rounding: 8 devices sum the batch's gradients in another order than one
        assert m["loss"] == pytest.approx(r["loss"], rel=1e-4), m["step"]
        assert m["accuracy"] == pytest.approx(r["accuracy"], abs=1.01 / 16)  # at most a near-tie flip
        assert m["grad_norm"] == pytest.approx(r["grad_norm"], rel=1e-3), m["step"]


def _kill_when(kind: str, proc: subprocess.Popen, workdir: Path, rng) -> str:
    """SIGKILL the trainer at a moment of `kind`; returns what happened ("killed", "killed in a save"
    or "finished" when the run ended first)."""
    ckpt_dir = workdir / "checkpoints"
    first = _last_train_step(workdir)
    deadline = time.monotonic() + TIMEOUT
    if kind == "start":  # anywhere from Python start-up to the first steps (restore, compile, ...)
        end = time.monotonic() + rng.uniform(0.5, 4.0)
        while time.monotonic() < end and proc.poll() is None:
            time.sleep(0.01)
    elif kind == "save":  # while orbax writes a step (its temporary folder exists)
        while proc.poll() is None and time.monotonic() < deadline:
            if ckpt_dir.exists() and any("tmp" in p.name for p in ckpt_dir.iterdir()):
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return "killed in a save"
            time.sleep(0.0005)
    else:  # "step": a random moment shortly after one to three more steps
        target = first + rng.randint(1, 3)
        while _last_train_step(workdir) < target and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.3))
    if proc.poll() is not None:
        return "finished"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return "killed"


@pytest.fixture(scope="module")
def killed_and_resumed(reference_run, tiny_config_file, jax_cache_dir, tmp_path_factory) -> Path:
    """The reference command with the post-training SPP on, killed with SIGKILL after its step-4
    checkpoint (inside step 5 or later, no chance to save), then run again to the end."""
    workdir = tmp_path_factory.mktemp("killed") / "run"
    env, cmd = _env(jax_cache_dir), _cmd(tiny_config_file, workdir, "--config.spp_after_training=True")
    log = workdir.parent / "first.log"
    proc = _start(cmd, env, log)
    try:
        _wait_until(lambda: _last_train_step(workdir) >= 5 and 4 in checkpoint_steps(workdir), proc, log, "step 5")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = _last_train_step(workdir)
    assert killed_at < STEPS and not (workdir / "spp").exists()
    rc, out = _run(cmd, env, workdir.parent / "second.log")
    assert rc == 0, _tail(out)
    assert f"Resuming from {workdir / 'checkpoints'}/" in out
    return workdir


def test_kill_9_once_resumes_bit_identically(killed_and_resumed, reference_run):
    """The README's promise in the default run: kill -9, rerun the same command, get the
    uninterrupted run (the long fault injection below is `slow`)."""
    assert_same_as_reference(killed_and_resumed, reference_run)


def test_spp_after_training_is_the_saved_ema_models(killed_and_resumed, tiny_config):
    """workdir/spp/spp.json: `compute_spp` of the final checkpoint's EMA weights on the first
    evaluation batch (not the raw weights', which differ)."""
    from absl import flags

    from nf.inference import load_model
    from nf.signal import compute_spp
    from nf.train.trainer import build_task

    if not flags.FLAGS.is_parsed():  # grain reads absl flags
        flags.FLAGS.mark_as_parsed()
    workdir = killed_and_resumed
    assert (workdir / "spp" / "spp.png").stat().st_size > 0
    saved = json.loads((workdir / "spp" / "spp.json").read_text())
    assert list(saved) == ["nf_resnet26 (trained, EMA)"]
    _, data = build_task(tiny_config(), str(workdir))
    images = next(iter(data.eval_batches()))["image"]
    ema, raw = (load_model(str(workdir), weights=w)[0] for w in ("ema", "raw"))
    want, other = compute_spp(ema, images, train=False), compute_spp(raw, images, train=False)
    got = saved["nf_resnet26 (trained, EMA)"]
    assert got.keys() == want.keys() and len(got["stage_ends"]) == 1
    for stat in want:
        np.testing.assert_allclose(got[stat], want[stat], rtol=1e-6, err_msg=stat)
    assert any(not np.allclose(other[s], want[s], rtol=1e-4) for s in want if s != "stage_ends")


@pytest.mark.slow  # ~10 trainer starts from the compilation cache
def test_kill_9_at_random_moments_resumes_bit_identically(reference_run, tiny_config_file, jax_cache_dir, tmp_path):
    """Fault injection: SIGKILL at random moments (start-up, between steps, inside async saves) and,
    once, a damaged newest checkpoint on top; rerun until done. The result must be bit-identical
    to the uninterrupted run (saving every 2 steps changes no value), with each step logged once."""
    import random

    workdir = tmp_path / "run"
    env = _env(jax_cache_dir)
    cmd = _cmd(tiny_config_file, workdir, "--config.checkpoint_every_steps=2", "--config.keep_checkpoints=3")
    rng = random.Random(int(os.environ.get("NF_FAULT_SEED", "0")))
    plan = ["save", "step", "start", "save", "step", "save", "step", "save", "step", "save"]
    outcomes, damaged = [], None
    for i, kind in enumerate(plan):
        log = tmp_path / f"round{i}.log"
        proc = _start(cmd, env, log)
        try:
            outcome = _kill_when(kind, proc, workdir, rng)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if outcome == "finished":
            assert proc.returncode == 0, _tail(log.read_text())
            break
        outcomes.append(outcome)
        # once, as early as possible, while an older intact step remains to resume from (with none
        # left the trainer rightly refuses to start: CheckpointDamagedError)
        if damaged is None and i >= 1 and len(checkpoint_steps(workdir)) >= 2:
            damaged = max(checkpoint_steps(workdir))
            sharding = workdir / "checkpoints" / str(damaged) / "state" / "_sharding"
            sharding.write_bytes(sharding.read_bytes()[:10])
    print(f"kill -9 rounds: {outcomes}")
    rc, out = _run(cmd, env, tmp_path / "final.log")
    assert rc == 0, _tail(out)
    logs = "".join(p.read_text() for p in sorted(tmp_path.glob("*.log")))
    # the damaged step was named, set aside (never deleted), and skipped
    assert damaged is not None, "no checkpoint to damage"
    assert f"checkpoints/{damaged} is damaged: " in logs
    assert f"checkpoints/{damaged}/state cannot be read: " in logs and f"{damaged}/state/_sharding" in logs
    assert [p.name for p in (workdir / "checkpoints").iterdir() if p.name.startswith(f"{damaged}.damaged-")]
    assert len(outcomes) >= 4 and "killed in a save" in outcomes, outcomes  # a fast machine finishes sooner

    assert_same_as_reference(workdir, reference_run)


def test_batch_not_divisible_by_devices(tiny_config_file, jax_cache_dir, tmp_path):
    workdir = tmp_path / "run"
    rc, out = _run(
        _cmd(tiny_config_file, workdir, "--config.batch_size=12"), _env(jax_cache_dir, devices=8), tmp_path / "log"
    )
    assert rc != 0
    assert "ValueError: batch_size=12 is not divisible by the 8 devices" in out, _tail(out)
    assert checkpoint_steps(workdir) == [] and not (workdir / "metrics.jsonl").exists()


def test_unknown_config_key_fails(jax_cache_dir, tmp_path):
    workdir = tmp_path / "run"
    rc, out = _run(
        _cmd("configs/quickstart.py", workdir, "--config.optimizer.lrr=0.1"), _env(jax_cache_dir), tmp_path / "log"
    )
    assert rc != 0
    assert "lrr" in out and 'Did you mean "lr"' in out, _tail(out)
    assert not workdir.exists()


def test_checkpoint_of_another_model_is_refused(reference_run, tiny_config_file, jax_cache_dir, tmp_path):
    """A workdir holding another architecture's checkpoints: the error names the differing
    parameters and not one file of the workdir changes."""
    workdir = tmp_path / "run"
    shutil.copytree(reference_run, workdir)
    before = snapshot(workdir)
    rc, out = _run(
        _cmd(tiny_config_file, workdir, "--config.model.widths=(24,)"), _env(jax_cache_dir), tmp_path / "log"
    )
    assert rc != 0
    assert "holds a different model" in out, _tail(out)
    assert "['head']['kernel'] (16, 10) vs (24, 10)" in out, _tail(out)
    assert "['stages']['0']['first']['conv_out']['kernel'] (1, 1, 4, 16) vs (1, 1, 6, 24)" in out, _tail(out)
    assert snapshot(workdir) == before
    np.testing.assert_array_equal(restore_state(workdir, 12)[("step",)], STEPS)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_config_file, jax_cache_dir, tmp_path):
    """lr=1e6 (warmup 3: lr 1e6/3 at the second update): step 3's gradient overflows (its loss is
    still finite) and the loss after it is NaN. With a checkpoint every step, the run must stop at
    step 3 without saving it, naming the step; every checkpoint left restores finite values."""
    workdir = tmp_path / "run"
    flags = ("--config.optimizer.lr=1e6", "--config.checkpoint_every_steps=1", "--config.keep_checkpoints=5")
    rc, out = _run(_cmd(tiny_config_file, workdir, *flags), _env(jax_cache_dir), tmp_path / "log")
    assert rc != 0
    assert "NonFiniteLossError" in out and "at step 3;" in out, _tail(out)
    assert "last good checkpoint (step 2)" in out and "is intact" in out, _tail(out)
    train = _train(read_metrics(workdir))
    assert [m["step"] for m in train] == [1, 2]
    assert train[1]["learning_rate"] == pytest.approx(1e6 / 3, rel=1e-6)  # the --config overrides reached the run
    assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2"]  # no later (or half-written) checkpoint
    for step in (1, 2):
        state = restore_state(workdir, step)
        assert int(state[("step",)]) == step
        for k, v in state.items():
            assert np.all(np.isfinite(v)), (step, k)


def test_non_finite_step_is_caught_between_log_steps(tiny_config_file, jax_cache_dir, tmp_path):
    """Logging every 10 steps, no periodic checkpoint: step 3's overflow is skipped on the device,
    the run stops at its first read (step 10) naming step 3, and nothing non-finite is saved."""
    workdir = tmp_path / "run"
    flags = ("--config.optimizer.lr=1e6", "--config.log_every_steps=10", "--config.checkpoint_every_steps=100")
    rc, out = _run(_cmd(tiny_config_file, workdir, *flags), _env(jax_cache_dir), tmp_path / "log")
    assert rc != 0
    assert "NonFiniteLossError: Gradient norm became inf at step 3;" in out, _tail(out)
    assert "No checkpoint had been written yet." in out, _tail(out)
    assert checkpoint_steps(workdir) == [] and _train(read_metrics(workdir)) == []

    # Tolerating them: the run finishes, skipping every bad step; every checkpoint is finite.
    workdir = tmp_path / "tolerant"
    flags = ("--config.optimizer.lr=1e6", "--config.log_every_steps=100", "--config.max_bad_steps=100")
    rc, out = _run(_cmd(tiny_config_file, workdir, *flags), _env(jax_cache_dir), tmp_path / "log2")
    assert rc == 0, _tail(out)
    train = _train(read_metrics(workdir))
    assert [m["step"] for m in train] == [4, 8, 12]  # read at the save steps only
    assert train[0]["skipped_steps"] >= 1 and train[-1]["skipped_steps"] >= train[0]["skipped_steps"]
    for step in checkpoint_steps(workdir):
        for k, v in restore_state(workdir, step).items():
            assert np.all(np.isfinite(v)), (step, k)


@pytest.mark.parametrize("split", ["train", "eval"])
def test_missing_data_directory(tiny_config, tmp_path, split):
    """In process: the error names the missing folder before anything is built or written."""
    from nf.train.trainer import train_and_evaluate

    missing = tmp_path / "no_such_data" / split
    config = tiny_config({f"data.{split}": str(missing)})
    with pytest.raises(ValueError, match=re.escape(str(missing))):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_gradient_accumulation_equals_the_full_batch_step(tiny_config):
    """No batch coupling in an NF network: the mean of micro-batch gradients is the full-batch
    gradient, so accum_steps=4 takes the same optimizer step as one batch (up to float rounding)."""
    import jax
    import jax.numpy as jnp

    from nf.tasks import get_task
    from nf.train.optim import learning_rate_schedule, make_optimizer
    from nf.train.trainer import ModelFns, make_train_step

    config = tiny_config({"model.stochastic_depth": 0.0, "model.dropout": 0.0})
    task = get_task(config, num_classes=10)
    model = task.build_model()
    fns = ModelFns(model)
    params, model_state = fns.init_values(model)
    opt = config.optimizer
    schedule = learning_rate_schedule(opt.lr, config.total_steps, 0, 0.0)
    tx = make_optimizer(fns.info, learning_rate=schedule, momentum=0.9, nesterov=True, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.normal(size=(16, 16, 16, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, 16)),
    }
    results = {}
    for accum in (1, 4):
        config.optimizer.accum_steps = accum
        state = {
            "step": jnp.zeros((), jnp.int32),
            "params": params,
            "opt_state": tx.init(params),
            "ema": params,
            "model_state": model_state,
        }
        results[accum] = jax.jit(make_train_step(fns, tx, schedule, config, task))(state, batch)
    (s1, m1), (s4, m4) = results[1], results[4]
    assert float(m4["loss"]) == pytest.approx(float(m1["loss"]), rel=1e-5)
    # float32 rounding: the mean of 4 micro-batch means against one mean over the batch
    assert float(m4["grad_norm"]) == pytest.approx(float(m1["grad_norm"]), rel=1e-4)
    for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(s4["params"])):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
    moved = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(s1["params"]), jax.tree.leaves(params)))
    assert moved > 1e-4  # the step did something


@pytest.mark.parametrize("background", [True, False])
def test_checkpoint_holds_the_state_at_save_time(tmp_path, background):
    # The loop goes on right after `save`: the next step donates the state's buffers and the
    # iterator advances. The checkpoint must hold the saved step's values and iterator position.
    import grain
    import jax
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    from nf.train.checkpoint import Checkpoints

    step_fn = jax.jit(lambda s: jax.tree.map(lambda x: x * 2.0 + 1.0, s), donate_argnums=0)
    dataset = grain.MapDataset.range(100).to_iter_dataset()
    state = {"w": jnp.arange(1000.0).reshape(10, 100), "b": jnp.ones(7)}
    expected = {k: np.array(v, copy=True) for k, v in state.items()}  # no view may pin the buffers
    data_iter = iter(dataset)
    assert [next(data_iter) for _ in range(3)] == [0, 1, 2]

    ckpt = Checkpoints(str(tmp_path / "ckpt"), save_every=1, background=background)
    gate = threading.Event()
    if background:  # hold the worker: orbax runs only after the loop has moved on (the worst case)
        ckpt._worker.submit(gate.wait)
    assert ckpt.save(1, state, data_iter)
    state = step_fn(state)  # donates the saved buffers
    assert next(data_iter) == 3  # the live iterator moves on
    gate.set()
    assert ckpt.save(2, state, data_iter)
    ckpt.close()

    ckpt = Checkpoints(str(tmp_path / "ckpt"), save_every=1)
    assert ckpt.latest_step() == 2
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), expected)
    restored_iter = iter(dataset)
    args = ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=grain.checkpoint.CheckpointRestore(restored_iter)
    )
    restored = ckpt.manager.restore(1, args=args)
    ckpt.close()
    for key, value in expected.items():
        np.testing.assert_array_equal(np.asarray(restored["state"][key]), value)
    assert next(restored_iter) == 3  # the position at step 1's save, not the live one


def test_a_failed_background_save_is_raised_at_the_next_save(tmp_path):
    """A real failure in the background worker (the checkpoint folder replaced by a file after the
    first save, as when a disk is unmounted): the save that fails returns at once, the next save
    raises its error naming the step's path, and closing does not hang."""
    import shutil

    import grain
    import jax.numpy as jnp

    from nf.train.checkpoint import Checkpoints

    directory = tmp_path / "ckpt"
    ckpt = Checkpoints(str(directory), save_every=1, background=True)
    state, data_iter = {"w": jnp.arange(10.0)}, iter(grain.MapDataset.range(10).to_iter_dataset())
    assert ckpt.save(1, state, data_iter)
    ckpt.wait()  # the first save is written and committed
    assert ckpt.latest_step() == 1
    shutil.rmtree(directory)
    directory.write_text("not a folder any more")
    assert ckpt.save(2, state, data_iter)  # the failure happens in the worker

    outcome: dict = {}

    def third_save():  # in a daemon thread: a hang fails the test instead of blocking it forever
        try:
            outcome["saved"] = ckpt.save(3, state, data_iter)
        except Exception as e:  # the error under test
            outcome["error"] = e

    thread = threading.Thread(target=third_save, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the save after a failed background save hangs"
    assert isinstance(outcome.get("error"), NotADirectoryError), outcome
    assert f"{directory}/2." in str(outcome["error"])  # names step 2's folder
    ckpt.close()
