"""Clear failures on real files and processes: a disk that fills during a checkpoint save (a
size-limited tmpfs: a real ENOSPC), a workdir that cannot be written, and a worker of a
multi-process JAX cluster that dies."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_train import _env, _run, _tail

from nf.train.disk_space import DISK_FULL_EXIT_CODE
from nf.train.watchdog import WORKER_LOST_EXIT_CODE

REPO = Path(__file__).resolve().parents[1]
STEP_LINE = re.compile(r"^step +(\d+)/\d+  loss (\S+)")
SHUTDOWN_NOISE = ("Traceback", "Event loop is closed", "sys.meta_path is None", "Exception ignored")


def du_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def free_now(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.fixture
def small_disk(tmp_path):
    """A 300 KB tmpfs at tmp_path/disk (root only): room for one tiny-model checkpoint, not two."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _train(config, workdir, *flags):
    return [sys.executable, "-m", "nf.train", f"--config={config}", f"--workdir={workdir}", *flags]


def test_checkpoints_on_a_full_disk_raise_one_disk_full_error(small_disk, caplog):
    """In-process, orbax's real background save on a 300 KB tmpfs: step 1 (~190 KB) fits, step 2
    does not. The save of step 2 is warned about beforehand and fails with one `DiskFullError`
    naming the bytes needed (step 1's size) and free and step 1 as the last intact step; closing
    the manager afterwards raises nothing more."""
    import jax.numpy as jnp

    from nf.train.checkpoint import Checkpoints
    from nf.train.disk_space import DiskFullError

    directory = small_disk / "run" / "checkpoints"
    ckpt = Checkpoints(str(directory), save_every=1, max_to_keep=2, background=True)
    noise = np.random.default_rng(0).standard_normal(50_000).astype(np.float32)  # 200 KB, barely compressible
    state = {"w": jnp.asarray(noise)}
    assert ckpt.save(1, state, None)
    ckpt.wait()
    size = du_bytes(directory / "1")
    with pytest.raises(DiskFullError) as raised:
        ckpt.save(2, {"w": state["w"] + 1}, None)
        ckpt.wait()
    ckpt.close()
    message = raised.value.strerror
    assert f"saving the checkpoint of step 2 in {small_disk / 'run'} failed" in message
    assert f"({size:,} bytes and a 20% margin)" in message and "The last intact checkpoint is step 1" in message
    assert f"({free_now(small_disk):,} bytes) are free" in message
    assert any("Low disk space: the checkpoint of step 2" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in directory.iterdir()) == ["1"]


@pytest.mark.slow  # two tiny trainer processes: ~60 s (160 s on a loaded 2-core machine)
def test_full_disk_during_a_save_is_one_error_then_resumes(small_disk, tiny_config_file, jax_cache_dir, tmp_path):
    """Checkpoints at steps 4 and 8 of 8 on a disk with room for one: the save of step 8 hits
    ENOSPC. The run warns before it, then ends with exactly one error (exit 28) naming the workdir,
    the bytes needed (the size of step 4 on disk) and free, step 4 as the last intact one; no
    traceback at all. With space freed, the same command resumes from step 4 and trains steps 5-8
    exactly as before."""
    workdir = small_disk / "run"
    cmd = _train(tiny_config_file, workdir, "--config.total_steps=8", "--config.eval_every_steps=100")
    rc, out = _run(cmd, _env(jax_cache_dir), tmp_path / "full.log")
    assert rc == DISK_FULL_EXIT_CODE, _tail(out)
    for noise in SHUTDOWN_NOISE:
        assert noise not in out, _tail(out)
    errors = [line for line in out.splitlines() if line.startswith("error:") or line.startswith("E1")]
    assert len(errors) == 1 and errors[0] == out.splitlines()[-1], _tail(out)
    error = errors[0]
    step4 = workdir / "checkpoints" / "4"
    needed = int(re.search(r"\(([\d,]+) bytes and a", error).group(1).replace(",", ""))
    free = int(re.search(r"\(([\d,]+) bytes\) are free", error).group(1).replace(",", ""))
    assert needed == du_bytes(step4)  # the last checkpoint's size is the estimate
    assert abs(free - free_now(small_disk)) <= 8192  # one or two tmpfs pages (the lock file was emptied)
    assert f"saving the checkpoint of step 8 in {workdir} failed (No space left on device)" in error
    assert "The last intact checkpoint is step 4" in error and "it resumes from step 4." in error
    assert re.search(r"Low disk space: the checkpoint of step 8 needs about .* only .* are free", out), _tail(out)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4"]  # the failed save's tmp removed
    first = {int(m.group(1)): m.group(2) for line in out.splitlines() if (m := STEP_LINE.match(line))}

    subprocess.run(["mount", "-o", "remount,size=2m", str(small_disk)], check=True)  # space freed
    rc, out = _run(cmd, _env(jax_cache_dir), tmp_path / "resumed.log")
    assert rc == 0, _tail(out)
    assert f"Resuming from {workdir / 'checkpoints'}/4: step 4 of 8." in out
    second = {int(m.group(1)): m.group(2) for line in out.splitlines() if (m := STEP_LINE.match(line))}
    assert sorted(second) == [5, 6, 7, 8] and all(second[s] == first[s] for s in second)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["4", "8"]


@pytest.mark.parametrize("where", ["under_a_file", "read_only_mount"])
def test_unwritable_workdir_is_refused_before_anything_compiles(where, tiny_config_file, jax_cache_dir, tmp_path):
    if where == "under_a_file":
        (tmp_path / "a_file").write_text("not a directory")
        workdir, why = tmp_path / "a_file" / "run", "Not a directory"
    else:
        mount = tmp_path / "ro"
        mount.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(mount)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()}): needs root")
        workdir, why = mount / "run", "Read-only file system"
    cache = tmp_path / "cache"  # an empty compilation cache: anything compiled would land here
    try:
        rc, out = _run(_train(tiny_config_file, workdir), _env(cache), tmp_path / "log")
    finally:
        if where == "read_only_mount":
            subprocess.run(["umount", "-l", str(mount)], check=False)
    assert rc != 0
    assert out.splitlines()[-1].startswith(f"error: --workdir={workdir} cannot be written ({why}"), _tail(out)
    assert "Traceback" not in out and "Nothing ran." in out
    assert not cache.exists() or not any(cache.iterdir())  # no program was compiled


# ------------------------------------------------------------------- a worker of a cluster dies

CLUSTER_PROBE = """
import os, signal, sys, time
from absl import flags
flags.FLAGS.mark_as_parsed()
from nf.train import distributed, watchdog
workdir, n, i, port, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
distributed.initialize("auto", f"127.0.0.1:{port}", n, i, 120)
with watchdog.watch_workers(workdir, timeout_s=3, coordinator_address=f"127.0.0.1:{port}"):
    if (mode, i) in {("die", 1), ("die0", 0)}:
        time.sleep(2)
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(1 if (mode, i) == ("finish", 1) else 9)  # "finish": worker 1 ends long before worker 0
print(f"worker {i} done", flush=True)
"""


@pytest.mark.parametrize("mode", ["die", "die0", "finish"])
def test_watchdog_names_the_dead_worker_and_ignores_one_that_finished(mode, tmp_path):
    """Two real processes of one JAX cluster. `die`: worker 1 is SIGKILLed; worker 0's last line
    names worker 1 within the timeout and it exits with WORKER_LOST_EXIT_CODE (JAX alone would
    wait for its 100 s heartbeat timeout). `die0`: worker 0 (the coordinator) is SIGKILLed; JAX's
    runtime aborts worker 1 at once, and its last line (from its coordinator guard) still names
    worker 0. `finish`: worker 1 ends normally long before worker 0, which is not alarmed."""
    from test_multihost import free_port

    script = tmp_path / "probe.py"
    script.write_text(CLUSTER_PROBE)
    port = str(free_port())
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path), "2", str(i), port, mode],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    last0, last1 = ((out.strip().splitlines() or [""])[-1] for out in outs)
    if mode == "die":
        assert procs[1].returncode == -signal.SIGKILL
        assert procs[0].returncode == WORKER_LOST_EXIT_CODE, outs[0]
        assert last0.startswith("error: worker 1 of 2 stopped answering (no heartbeat for "), outs[0]
        assert f"no checkpoint was saved yet in {tmp_path / 'checkpoints'}" in last0
    elif mode == "die0":
        assert procs[0].returncode == -signal.SIGKILL
        assert procs[1].returncode == -signal.SIGABRT, outs[1]  # JAX's runtime: nothing can change it
        assert last1.startswith("error: worker 0 of 2 stopped answering (its coordination service closed"), outs[1]
        assert f"start from step 0 (no checkpoint was saved yet in {tmp_path / 'checkpoints'})" in last1
    else:
        assert [p.returncode for p in procs] == [0, 0], outs
        assert last0 == "worker 0 done" and "stopped answering" not in outs[0]


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_survivor_of_a_killed_trainer_worker_names_it_and_the_resume_step(
    victim, tiny_config_file, jax_cache_dir, tmp_path
):
    """nf-train on 2 processes; one is SIGKILLed after the step-4 checkpoint: the survivor's last
    line names it and an intact step >= 4, well before JAX's own 100 s heartbeat timeout. Worker 1
    killed: worker 0's watchdog reports and exits with WORKER_LOST_EXIT_CODE. Worker 0 (the
    coordinator) killed: JAX aborts worker 1 at once, and its coordinator guard writes the line."""
    from test_multihost import free_port

    sys.path.insert(0, str(REPO / "tools"))
    from local_cluster import commands, process_env

    survivor = 1 - victim
    survivor_log = tmp_path / f"p{survivor}.log"
    workdir = tmp_path / "run"
    cmds = commands(2, str(workdir), [f"--config={tiny_config_file}", "--worker_timeout=10"], free_port())
    env = process_env(1, _env(jax_cache_dir))
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(open(tmp_path / f"p{i}.log", "w")) for i in range(2)]
        procs = [subprocess.Popen(c, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT) for c, f in zip(cmds, logs)]
        try:
            deadline = time.monotonic() + 900
            while not (workdir / "checkpoints" / "4").is_dir():
                alive = procs[survivor].poll() is None and time.monotonic() < deadline
                assert alive, _tail(survivor_log.read_text())
                time.sleep(0.05)
            procs[victim].kill()
            killed = time.monotonic()
            rc = procs[survivor].wait(timeout=120)
            took = time.monotonic() - killed
            while "stopped answering" not in survivor_log.read_text() and time.monotonic() < killed + 60:
                time.sleep(0.1)  # worker 0 killed: the guard writes after worker 1's end (importing JAX first)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    out = survivor_log.read_text()
    assert rc == (WORKER_LOST_EXIT_CODE if victim else -signal.SIGABRT), _tail(out)
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"error: worker {victim} of 2 stopped answering"), _tail(out)
    step = re.search(r"resume from step (\d+)", last).group(1)
    assert step in {p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()} and int(step) >= 4
    assert took < 60, took
