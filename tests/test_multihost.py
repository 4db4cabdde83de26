"""Multi-host training on a real JAX cluster on localhost: `launch/local.sh` starts N `nf.train`
processes x M CPU devices joined by jax.distributed (gloo collectives), with real orbax
directories and grain iterator states. References: a 1-process x 4-device run of the same global
batch (losses must agree), the saved arrays read back with plain orbax, a 1-process pipeline
(each process's examples must be a disjoint part of it), and the gcloud command lines of the
TPU launcher written out here by hand.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_train import _env, _tail, _train, checkpoint_steps, read_metrics, restore_state

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 900
STEPS = 12  # conftest.TINY_OVERRIDES: 12 steps, checkpoints every 4, batch 16
# 2 processes x 2 devices with FSDP over 2. The tiny model's tensors are small: the test config
# (mh_config_file) lowers the size below which tensors stay replicated, so most get sharded.
FSDP2 = ("--config.mesh.data=-1", "--config.mesh.fsdp=2")


@pytest.fixture(scope="module")
def mh_config_file(digits_root, tmp_path_factory) -> Path:
    """conftest's tiny config plus `fsdp_min_size=64` (a key the trainer reads when present)."""
    from conftest import _CONFIG_FILE, QUICKSTART, TINY_OVERRIDES

    overrides = dict(TINY_OVERRIDES, fsdp_min_size=64)
    overrides.update({"data.root": str(digits_root)})
    overrides.update({f"data.{s}": str(digits_root / d) for s, d in (("train", "train"), ("eval", "test"))})
    path = tmp_path_factory.mktemp("mh_config") / "tiny_fsdp.py"
    path.write_text(_CONFIG_FILE.format(quickstart=str(QUICKSTART), overrides=overrides))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_cluster(config, workdir: Path, processes: int, devices: int, *flags: str) -> list[str]:
    return [
        "bash",
        str(REPO / "launch" / "local.sh"),
        f"--processes={processes}",
        f"--devices={devices}",
        f"--workdir={workdir}",
        "--",
        f"--config={config}",
        *flags,
    ]


def run_logged(cmd, env, log: Path) -> tuple[int, str]:
    env = {**env, "PYTHON": sys.executable}
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=TIMEOUT)
    return proc.returncode, log.read_text()


def process_logs(workdir: Path) -> list[str]:
    return [p.read_text() for p in sorted((workdir / "logs").glob("process_*.log"))]


def losses(workdir: Path) -> dict[int, dict]:
    return {m["step"]: m for m in _train(read_metrics(workdir))}


def assert_same_training(got: dict[int, dict], want: dict[int, dict], steps, rel=1e-4):
    for step in steps:
        g, w = got[step], want[step]
        assert g["learning_rate"] == pytest.approx(w["learning_rate"], rel=1e-6, abs=1e-12), step
        assert g["loss"] == pytest.approx(w["loss"], rel=rel), step
        assert g["grad_norm"] == pytest.approx(w["grad_norm"], rel=10 * rel), step


def cut_back(src: Path, dst: Path, step: int) -> Path:
    """A copy of run `src` as it was after saving `step`: later checkpoints and metrics removed."""
    shutil.copytree(src, dst)
    for s in checkpoint_steps(dst):
        if s > step:
            shutil.rmtree(dst / "checkpoints" / str(s))
    lines = [m for m in read_metrics(dst) if m["step"] <= step]
    (dst / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    shutil.rmtree(dst / "logs", ignore_errors=True)
    return dst


# ------------------------------------------------------------------ data: disjoint per process

PROBE = """
import hashlib, importlib.util, json, sys
from absl import flags
flags.FLAGS.mark_as_parsed()
from nf.train import distributed
config_file, out, n, i, port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if n > 1:
    distributed.initialize("auto", f"127.0.0.1:{port}", n, i, 120)
import jax
spec = importlib.util.spec_from_file_location("cfg", config_file)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
from nf.tasks import task_class
config = module.get_config()
data = task_class(config).build_data(config, out)
it = data.train_iter()
steps = [[hashlib.sha1(x.tobytes()).hexdigest() for x in next(it)["image"]] for _ in range(3)]
record = {"index": jax.process_index(), "count": jax.process_count(), "steps": steps}
json.dump(record, open(f"{out}/probe_{n}_{i}.json", "w"))
"""


def test_processes_read_disjoint_shards(mh_config_file, jax_cache_dir, tmp_path):
    """Two real processes of one cluster each build the trainer's input pipeline: per step, their
    examples are disjoint and together are exactly the global batch a single process reads."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env, port = _env(jax_cache_dir, devices=1), str(free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(mh_config_file), str(tmp_path), str(n), str(i), port],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for n, i in ((2, 0), (2, 1), (1, 0))
    ]
    for p in procs:
        out, _ = p.communicate(timeout=TIMEOUT)
        assert p.returncode == 0, _tail(out)
    p0, p1, single = (json.loads((tmp_path / f"probe_{n}_{i}.json").read_text()) for n, i in ((2, 0), (2, 1), (1, 0)))
    assert (p0["index"], p0["count"], p1["index"], p1["count"]) == (0, 2, 1, 2)
    for step in range(3):
        a, b, whole = p0["steps"][step], p1["steps"][step], single["steps"][step]
        assert len(a) == len(b) == 8 and len(whole) == 16  # global batch 16 over 2 processes
        assert not set(a) & set(b), f"step {step}: the processes share examples"
        assert sorted(a + b) == sorted(whole), f"step {step}: not the single-process global batch"


# ------------------------------------------------------------------ bad input


def test_process_id_out_of_range(mh_config_file, jax_cache_dir, tmp_path):
    workdir = tmp_path / "run"
    flags = ("--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=2")
    cmd = [sys.executable, "-m", "nf.train", f"--config={mh_config_file}", f"--workdir={workdir}", *flags]
    rc, out = run_logged(cmd, _env(jax_cache_dir), tmp_path / "log")
    assert rc != 0
    assert "--process_id=2 is out of range for --num_processes=2: use 0 .. 1" in out, _tail(out)
    assert "Connecting to the JAX coordinator" not in out  # refused before connecting
    assert not workdir.exists()


def test_unreachable_coordinator_fails_in_bounded_time(mh_config_file, jax_cache_dir, tmp_path):
    """Process 1 of 2 with nobody serving the coordinator port: a clear error after the timeout."""
    workdir, address = tmp_path / "run", f"127.0.0.1:{free_port()}"
    flags = (f"--coordinator_address={address}", "--num_processes=2", "--process_id=1", "--coordinator_timeout=5")
    cmd = [sys.executable, "-m", "nf.train", f"--config={mh_config_file}", f"--workdir={workdir}", *flags]
    start = time.monotonic()
    rc, out = run_logged(cmd, _env(jax_cache_dir), tmp_path / "log")
    elapsed = time.monotonic() - start
    assert rc != 0
    assert f"CoordinatorError: Could not join the JAX cluster through the coordinator at {address} within 5 s" in out
    assert "(process 1 of 2)" in out, _tail(out)
    assert elapsed < 90, f"took {elapsed:.0f} s"  # 5 s timeout + interpreter start-up on a loaded machine
    assert not workdir.exists()


@pytest.mark.slow  # two processes import the whole trainer (~1 min on a loaded 2-core machine)
def test_batch_not_divisible_over_processes(mh_config_file, jax_cache_dir, tmp_path):
    workdir = tmp_path / "run"
    cmd = local_cluster(mh_config_file, workdir, 2, 2, "--config.batch_size=6")
    rc, out = run_logged(cmd, _env(jax_cache_dir), tmp_path / "launcher.log")
    assert rc != 0
    assert "failed (exit status 1)" in out, _tail(out)
    assert "batch_size=6 is not divisible by the 4 devices" in out and "(2 process(es))" in out, _tail(out)
    assert checkpoint_steps(workdir) == [] and not (workdir / "metrics.jsonl").exists()


# ------------------------------------------------------------------ FSDP memory


def test_fsdp_bytes_of_nf_resnet50(tmp_path):
    """tools/state_bytes.py --devices=4: NF-ResNet-50 (25.6M parameters, paper Table 1) holds
    params + optimizer state per device at <= 30% of the replicated figure over 4 devices."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "tools/state_bytes.py", "--model=nf_resnet50", "--devices=4", "--json"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert out.returncode == 0, _tail(out.stdout + out.stderr)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["params_bytes_replicated"] / 4 == pytest.approx(25.56e6, rel=0.01)  # float32, every device
    # SGD with momentum: one buffer per parameter (plus a replicated step count).
    assert r["opt_state_bytes_replicated"] == pytest.approx(r["params_bytes_replicated"], abs=64)
    assert r["ema_bytes_fsdp"] == r["params_bytes_fsdp"]
    for part in ("params", "opt_state"):
        assert r[f"{part}_bytes_replicated"] / 4 <= r[f"{part}_bytes_fsdp"] < r[f"{part}_bytes_replicated"] / 3
    assert r["params_plus_opt_fsdp_over_replicated"] <= 0.30


# ------------------------------------------------------------------ launch/tpu.sh


@pytest.fixture
def no_gcloud(tmp_path) -> str:
    """A PATH holding only the tools launch/tpu.sh needs besides gcloud."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "sed"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return str(bin_dir)


def tpu_sh(*args: str, path: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path, **(env or {})}
    cmd = [shutil.which("bash"), str(REPO / "launch" / "tpu.sh"), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


COMMON = ("--name=nf-pod", "--zone=us-central2-b", "--accelerator=v4-32", "--project=my-proj", "--dry-run")
WHERE = ["--zone=us-central2-b", "--project=my-proj"]
TRAIN = ["--config=configs/resnet_imagenet.py:nf_resnet50", "--workdir=gs://my-bucket/runs/r50"]
VM = ["gcloud", "compute", "tpus", "tpu-vm"]
SSH = [*VM, "ssh", "nf-pod", *WHERE, "--worker=all"]
EXPECTED = {
    "create": [[*VM, "create", "nf-pod", *WHERE, "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base"]],
    "setup": [
        [*VM, "scp", "--recurse"]
        + [str(REPO / p) for p in ("nf", "configs", "tools", "launch", "pyproject.toml", "README.md")]
        + ["nf-pod:nf", *WHERE, "--worker=all"],
        [*SSH, "--command=pip install -U 'jax[tpu]' && pip install -e ~/nf"],
    ],
    "run": [
        ["nf-plan", "--topology=v4-32", "--cost=per_block", "--config=configs/resnet_imagenet.py:nf_resnet50"],
        [
            *SSH,
            "--command=cd ~/nf && nohup nf-train --distributed=on --config=configs/resnet_imagenet.py:nf_resnet50 "
            "--workdir=gs://my-bucket/runs/r50 > ~/nf-train.log 2>&1 &",
        ],
    ],
    "logs": [[*SSH, "--command=tail -n 50 ~/nf-train.log"]],
    "ssh": [[*VM, "ssh", "nf-pod", *WHERE, "--worker=0"]],
    "delete": [[*VM, "delete", "nf-pod", *WHERE, "--quiet"]],
}


@pytest.mark.parametrize("sub", sorted(EXPECTED))
def test_tpu_sh_dry_run_prints_gcloud_commands(sub, no_gcloud):
    """--dry-run prints every gcloud command (shell-quoted) without gcloud on the PATH."""
    extra = ("--", *TRAIN) if sub == "run" else ()
    out = tpu_sh(sub, *COMMON, *extra, path=no_gcloud)
    assert out.returncode == 0, out.stderr
    assert [shlex.split(line) for line in out.stdout.splitlines()] == EXPECTED[sub]


def test_tpu_sh_queued_spot_v5e(no_gcloud):
    out = tpu_sh(
        "create", "--name=f0", "--zone=us-west4-a", "--accelerator=v5litepod-64", "--project=p", "--queued", "--spot",
        "--dry-run", path=no_gcloud,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert shlex.split(out.stdout) == [
        "gcloud", "compute", "tpus", "queued-resources", "create", "f0", "--node-id=f0", "--zone=us-west4-a",
        "--project=p", "--accelerator-type=v5litepod-64", "--runtime-version=v2-alpha-tpuv5-lite", "--spot",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "args, message",
    [
        (("create", "--name=n", "--accelerator=v4-8", "--project=p", "--dry-run"), "--zone=ZONE is required"),
        (("create", "--name=n", "--zone=z", "--dry-run"), "create needs --accelerator=TYPE"),
        (("create", "--name=n", "--zone=z", "--accelerator=v4-8", "--dry-run"), "no project: pass --project"),
        (("create", "--name=n", "--zone=z", "--accelerator=v4-8", "--project=p"), "gcloud not found"),
        (("run", "--name=n", "--zone=z", "--project=p", "--dry-run", "--", "--workdir=/tmp/x"), "--workdir=gs://"),
        (("launch", "--name=n"), "unknown SUBCOMMAND 'launch'"),
    ],
)
def test_tpu_sh_bad_input(args, message, no_gcloud):
    out = tpu_sh(*args, path=no_gcloud)
    assert out.returncode == 2 and out.stdout == ""
    assert message in out.stderr, out.stderr


def test_tpu_sh_run_plans_for_the_slice_unless_told_not_to(no_gcloud):
    """run's plan step compiles the config and its --config.* overrides for the slice (v5e is
    v5litepod-N to gcloud); --no-plan drops it; without --accelerator it cannot plan."""
    base = ("run", "--name=nf-pod", "--zone=z", "--project=p", "--dry-run")
    train = ("--", "--config=configs/nfnet_f0_imagenet.py", "--config.batch_size=1024", "--workdir=gs://b/r")
    out = tpu_sh(*base, "--accelerator=v5litepod-64", *train, path=no_gcloud)
    assert out.returncode == 0, out.stderr
    lines = [shlex.split(line) for line in out.stdout.splitlines()]
    assert lines[0] == [
        "nf-plan",
        "--topology=v5e-64",
        "--cost=per_block",
        "--config=configs/nfnet_f0_imagenet.py",
        "--config.batch_size=1024",
    ]
    assert lines[1][:4] == VM and len(lines) == 2
    out = tpu_sh(*base, "--no-plan", *train, path=no_gcloud)
    assert out.returncode == 0, out.stderr
    assert [shlex.split(line)[:4] for line in out.stdout.splitlines()] == [VM]
    out = tpu_sh(*base, *train, path=no_gcloud)
    assert out.returncode == 2 and "pass --accelerator=TYPE (as at create), or --no-plan" in out.stderr


@pytest.fixture
def fake_gcloud(no_gcloud, tmp_path) -> tuple[str, Path]:
    """`no_gcloud`'s PATH plus a gcloud that only records its arguments (one call per line)."""
    calls = tmp_path / "gcloud_calls.txt"
    gcloud = Path(no_gcloud) / "gcloud"
    gcloud.write_text(f'#!{shutil.which("bash")}\nprintf "%s\\n" "$*" >> {calls}\n')
    gcloud.chmod(0o755)
    return no_gcloud, calls


# The quickstart config with narrow stages (widths 8..16): compiles in seconds.
TINY_PLAN = ("--config.model.widths=(8,8,16,16)", "--config.model.stem_width=8")


@pytest.mark.parametrize("fits", [True, False])
def test_tpu_sh_run_refuses_a_config_that_does_not_fit(fits, fake_gcloud):
    """A real plan (nf-plan, libtpu) before any worker starts: 32 px images fit a v5e-4 and the
    workers start; 1024 px at batch 4096 (1024 images per chip) do not, the plan says so and
    gcloud is never called."""
    pytest.importorskip("libtpu")
    path, calls = fake_gcloud
    size = ("--config.data.image_size=32",) if fits else ("--config.data.image_size=1024", "--config.batch_size=4096")
    out = tpu_sh(
        "run", "--name=n", "--zone=z", "--project=p", "--accelerator=v5litepod-4", "--",
        "--config=configs/quickstart.py", *TINY_PLAN, *size, "--workdir=gs://b/r",
        path=path, env={"NF_PLAN": f"{sys.executable} -m nf.cli.plan --search=false"}, timeout=600,
    )  # fmt: skip
    if fits:
        assert out.returncode == 0, out.stderr
        assert "FITS" in out.stdout
        assert "nf-train --distributed=on --config=configs/quickstart.py" in calls.read_text()
    else:
        assert out.returncode == 3, out.stderr
        assert "DOES NOT FIT" in out.stdout and "XLA:TPU refused the train step" in out.stdout
        assert "the config does not fit v5litepod-4" in out.stderr
        assert not calls.exists()


# ------------------------------------------------------------------ training on the cluster


@pytest.fixture(scope="module")
def cluster_run(mh_config_file, jax_cache_dir, tmp_path_factory) -> Path:
    """2 processes x 2 devices, FSDP over 2, via launch/local.sh: 12 steps, checkpoints 4, 8, 12."""
    workdir = tmp_path_factory.mktemp("cluster") / "run"
    cmd = local_cluster(mh_config_file, workdir, 2, 2, *FSDP2)
    rc, out = run_logged(cmd, _env(jax_cache_dir), workdir.parent / "launcher.log")
    assert rc == 0, _tail(out) + "\n".join(_tail(t, 3000) for t in process_logs(workdir))
    return workdir


@pytest.fixture(scope="module")
def single_run(mh_config_file, jax_cache_dir, tmp_path_factory) -> Path:
    """The reference: 1 process x 4 devices, plain data parallelism, the same global batch."""
    workdir = tmp_path_factory.mktemp("single") / "run"
    cmd = [sys.executable, "-m", "nf.train", f"--config={mh_config_file}", f"--workdir={workdir}"]
    rc, out = run_logged(cmd, _env(jax_cache_dir, devices=4), workdir.parent / "log")
    assert rc == 0, _tail(out)
    return workdir


@pytest.mark.slow
def test_two_processes_match_one_process(cluster_run, single_run):
    logs = process_logs(cluster_run)
    assert len(logs) == 2
    for i, text in enumerate(logs):
        assert f"Process {i} of 2 joined the JAX cluster" in text
        assert "CpuDevice(id=2049)" in text  # the 4 global devices: 2 per process
    # metrics.jsonl is written by process 0 only: one line per step
    assert [m["step"] for m in _train(read_metrics(cluster_run))] == list(range(1, STEPS + 1))
    assert_same_training(losses(cluster_run), losses(single_run), range(1, STEPS + 1))
    assert checkpoint_steps(cluster_run) == [8, 12]
    for i in range(2):  # one grain iterator state per process
        state = json.loads((cluster_run / "checkpoints" / "12" / "data" / f"process_{i}-of-2.json").read_text())
        assert state["next_batch"] == STEPS and state["fingerprint"]["shard_index"] == i
    # FSDP really sharded the state: the restored arrays equal the 1-process run's within tolerance
    got, want = restore_state(cluster_run, STEPS), restore_state(single_run, STEPS)
    assert set(got) == set(want)
    for k in want:
        # float32 rounding of gradients summed in another order (FSDP's reduce-scatter over two
        # processes vs one device's sum), carried through 12 steps of momentum
        np.testing.assert_allclose(got[k], want[k], rtol=2e-3, atol=2e-5, err_msg=str(k))


WARNING = re.compile(
    r"the data iterator was saved by (\d) process\(es\), this run has (\d); .* resumes at global example (\d+) "
    r"\(epoch 0, example \3 of 1497\)"
)


@pytest.mark.slow
def test_checkpoint_of_two_processes_resumes_in_one(cluster_run, mh_config_file, jax_cache_dir, tmp_path):
    """Step 8 of the 2-process FSDP run resumes in 1 process x 4 devices with FSDP over 4: the
    remaining steps train exactly as the 2-process run did (restored parameters and data position
    are right), and the data-iterator fallback is announced."""
    workdir = cut_back(cluster_run, tmp_path / "run", 8)
    cmd = [
        sys.executable, "-m", "nf.train", f"--config={mh_config_file}", f"--workdir={workdir}",
        "--config.mesh.data=1", "--config.mesh.fsdp=4",
    ]  # fmt: skip
    rc, out = run_logged(cmd, _env(jax_cache_dir, devices=4), tmp_path / "log")
    assert rc == 0, _tail(out)
    assert f"Resuming from {workdir / 'checkpoints'}/8" in out
    m = WARNING.search(out)
    assert m and m.groups() == ("2", "1", str(8 * 16)), _tail(out)
    assert_same_training(losses(workdir), losses(cluster_run), range(9, STEPS + 1))
    assert json.loads((workdir / "checkpoints" / "12" / "data" / "process_0-of-1.json").read_text())["next_batch"] == 12


@pytest.mark.slow
def test_checkpoint_of_one_process_resumes_in_two(single_run, mh_config_file, jax_cache_dir, tmp_path):
    workdir = cut_back(single_run, tmp_path / "run", 8)
    rc, out = run_logged(local_cluster(mh_config_file, workdir, 2, 2, *FSDP2), _env(jax_cache_dir), tmp_path / "l")
    logs = process_logs(workdir)
    assert rc == 0, _tail(out) + "\n".join(_tail(t, 3000) for t in logs)
    for text in logs:
        assert f"Resuming from {workdir / 'checkpoints'}/8" in text
        m = WARNING.search(text)
        assert m and m.groups() == ("1", "2", str(8 * 16)), _tail(text)
    assert_same_training(losses(workdir), losses(single_run), range(9, STEPS + 1))


@pytest.mark.slow
def test_sigterm_to_all_processes_saves_once_and_resumes(cluster_run, mh_config_file, jax_cache_dir, tmp_path):
    """SIGTERM to the launcher (forwarded to both processes) mid-run: both save the same step and
    exit 0; the same command then resumes from that step and trains as the uninterrupted run."""
    workdir = tmp_path / "run"
    cmd = local_cluster(mh_config_file, workdir, 2, 2, *FSDP2)
    log = tmp_path / "launcher.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env={**_env(jax_cache_dir), "PYTHON": sys.executable}, stdout=f,
                                stderr=subprocess.STDOUT)  # fmt: skip
        try:
            deadline = time.monotonic() + TIMEOUT
            while max(losses(workdir), default=0) < 3:
                assert proc.poll() is None, "exited before the signal:\n" + _tail(log.read_text())
                assert time.monotonic() < deadline, "timed out waiting for step 3"
                time.sleep(0.01)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    logs = process_logs(workdir)
    assert rc == 0, _tail(log.read_text()) + "\n".join(_tail(t, 3000) for t in logs)
    stopped = max(losses(workdir))
    assert 3 <= stopped < STEPS, "the interrupted run did not stop early"
    for text in logs:
        assert f"all 2 processes save step {stopped}, then exit" in text, _tail(text)
    assert max(checkpoint_steps(workdir)) == stopped  # one checkpoint at the agreed step
    for i in range(2):
        data = json.loads((workdir / "checkpoints" / str(stopped) / "data" / f"process_{i}-of-2.json").read_text())
        assert data["next_batch"] == stopped, i
    assert int(restore_state(workdir, stopped)[("step",)]) == stopped

    shutil.rmtree(workdir / "logs")
    rc, out = run_logged(cmd, _env(jax_cache_dir), tmp_path / "second.log")
    logs = process_logs(workdir)
    assert rc == 0, _tail(out) + "\n".join(_tail(t, 3000) for t in logs)
    for text in logs:
        assert f"Resuming from {workdir / 'checkpoints'}/{stopped}" in text
        assert "data iterator was saved by" not in text  # same process count: grain restores it
    assert [m["step"] for m in _train(read_metrics(workdir))] == list(range(1, STEPS + 1))
    assert_same_training(losses(workdir), losses(cluster_run), range(1, STEPS + 1), rel=1e-5)


def test_tpu_chips_found_on_a_pci_bus(tmp_path):
    """Cloud TPU detection reads the PCI bus like a TPU VM exposes it: Google's vendor id with a
    TPU device id counts; Google's NIC (same vendor, another device) and other vendors do not."""
    from nf.train.distributed import tpu_chips_on_pci

    for name, vendor, device in [
        ("0000:00:04.0", "0x1ae0", "0x005e"),  # TPU v4
        ("0000:00:05.0", "0x1ae0", "0x005e"),
        ("0000:00:06.0", "0x1ae0", "0x0042"),  # gVNIC
        ("0000:00:07.0", "0x10de", "0x2330"),  # an NVIDIA GPU
    ]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "vendor").write_text(vendor + "\n")
        (tmp_path / name / "device").write_text(device + "\n")
    (tmp_path / "0000:00:08.0").mkdir()
    (tmp_path / "0000:00:08.0" / "vendor").write_text("0x1ae0\n")  # no device file: skipped
    assert tpu_chips_on_pci(str(tmp_path)) == 2
    assert tpu_chips_on_pci(str(tmp_path / "missing")) == 0
