"""tools/benchmark.py times nf-train's own step (`nf.train.trainer.setup_training`) on each task's
synthetic batch; the timm side by side runs only where a peer Python is given ($NF_PEER_PYTHON).
tools/compile_time.py compiles the step of several models (tools/state_bytes.py: test_multihost)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nf.tasks import Classification, Depth, Segmentation
from nf.tasks.segmentation import IGNORE_LABEL
from nf.train.sharding import make_mesh
from nf.train.trainer import setup_training

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 600


def quickstart_config():
    spec = importlib.util.spec_from_file_location("nf_quickstart_config", REPO / "configs" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def tiny_config():
    config = quickstart_config()
    config.model.depths = (1, 1, 1, 1)
    config.model.widths = (8, 16, 16, 16)
    config.model.stem_width = 8
    config.data.image_size = 32
    config.batch_size = 4
    return config


def test_synthetic_batches_fit_each_task_loss():
    """Each task's synthetic batch has its layout, and its loss on uniform predictions takes the
    analytic value: log(C) for (pixel) cross-entropy, 0 for berHu on the true depths."""
    config = tiny_config()
    b, s, c = 2, 64, 3

    cls = Classification(config, 10)
    batch = cls.synthetic_batch(b, s, c, seed=1)
    assert batch["image"].shape == (b, s, s, c) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (b,) and batch["label"].dtype == np.int32
    assert np.all((batch["label"] >= 0) & (batch["label"] < 10))
    config.optimizer.label_smoothing = 0.1  # smoothing leaves the loss of uniform logits at log(C)
    loss, _ = cls.loss(jnp.zeros((b, 10)), batch)
    assert float(loss) == pytest.approx(math.log(10), rel=1e-6)

    seg = Segmentation(config, 21)
    batch = seg.synthetic_batch(b, s, c, seed=1)
    labels = batch["label"]
    assert labels.shape == (b, s, s) and labels.dtype == np.int32
    ignored = labels == IGNORE_LABEL
    assert 0.07 < ignored.mean() < 0.13
    assert np.all(labels[~ignored] < 21) and len(np.unique(labels[~ignored])) == 21
    loss, _ = seg.loss(jnp.zeros((b, s, s, 21)), batch)
    assert float(loss) == pytest.approx(math.log(21), rel=1e-6)

    depth = Depth(config, None)
    batch = depth.synthetic_batch(b, s, c, seed=1)
    d = batch["depth"]
    assert d.shape == (b, s, s) and d.dtype == np.float32
    assert 0.07 < (d == 0).mean() < 0.13 and d[d > 0].min() >= 0.5 and d.max() <= 10.0
    loss, _ = depth.loss(jnp.asarray(d)[..., None], batch)
    assert float(loss) == 0.0
    # the seed decides the batch
    assert np.array_equal(depth.synthetic_batch(b, s, c, seed=1)["depth"], d)
    assert not np.array_equal(depth.synthetic_batch(b, s, c, seed=2)["depth"], d)


def test_setup_training_abstract_state_matches_the_real_one():
    """The abstract state (compile-only, FSDP byte counts) has the real state's structure,
    shapes, dtypes and shardings; the real step advances the step counter and moves the EMA."""
    config = tiny_config()
    task = Classification(config, 10)
    mesh = make_mesh(config.mesh)
    real = setup_training(config, task, mesh)
    abstract = setup_training(config, task, mesh, abstract=True)
    assert jax.tree.structure(real.state) == jax.tree.structure(abstract.state)
    for r, a in zip(jax.tree.leaves(real.state), jax.tree.leaves(abstract.state), strict=True):
        assert (r.shape, r.dtype, r.sharding) == (a.shape, a.dtype, a.sharding)
    batch = jax.tree.map(jnp.asarray, task.synthetic_batch(4, 32, 3))
    ema0 = jax.tree.map(np.asarray, real.state["ema"])
    state, metrics, counters = real.train_step(real.state, batch, real.counters)  # the guarded step
    assert int(state["step"]) == 1 and np.isfinite(float(metrics["loss"]))
    assert int(counters["consecutive"]) == 0
    assert not all(
        np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(ema0), jax.tree.leaves(state["ema"]))
    )


def run_benchmark(*args: str, env: dict | None = None, tool: str = "benchmark") -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})}
    cmd = [sys.executable, f"tools/{tool}.py", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT)


TINY_ARGS = (
    "--model=nf_resnet26",
    "--image_size=32",
    "--batch_size=2",
    "--steps=1",
    "--warmup=1",
    "--flops_cost=lowered",
    "--matmul_size=128",
    "--json",
)


@pytest.mark.slow  # 82 s on a 2-core CPU (every comparison compiles its own step); `pytest -m slow` runs it
def test_benchmark_times_the_trainer_step_with_its_comparisons():
    """The default config is the quickstart recipe (reported as such); WS on/off, folded
    inference (same logits as unfolded) and NF vs BN are all measured in the one run."""
    out = run_benchmark(*TINY_ARGS)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["optimizer"] == quickstart_config().optimizer.to_dict()
    assert (r["model"], r["task"], r["image_size"], r["batch_size"]) == ("nf_resnet26", "classification", 32, 2)
    assert np.isfinite(r["final_loss"]) and r["step_seconds"] > 0
    assert r["ws_overhead"] is not None and r["bn_model"] == "bn_resnet26" and r["nf_vs_bn_step_ratio"] > 0
    assert r["folded_max_abs_diff"] <= 1e-4 * max(1.0, r["logits_max_abs"])  # float32 rounding of the fold
    assert "timm_train_step_seconds" not in r  # no peer asked for


@pytest.mark.slow
def test_compile_time_compiles_each_models_step_relative_to_the_first():
    """Each model's abstract train step lowers and compiles; seconds are reported relative to the
    first model's, and lowering is part of the compile time."""
    args = ("--models=nf_resnet26,nf_resnet101", "--image_size=32", "--batch_size=2", "--json")
    out = run_benchmark(*args, tool="compile_time")
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert list(r["compile_seconds"]) == ["nf_resnet26", "nf_resnet101"] and r["batch_size"] == 2
    assert r["compile_ratio"]["nf_resnet26"] == 1.0
    assert 0 < r["lower_seconds"]["nf_resnet26"] < r["compile_seconds"]["nf_resnet26"]
    assert run_benchmark("--json", tool="compile_time").returncode != 0  # --models is required


def test_peer_needs_a_python():
    env = {k: v for k, v in os.environ.items() if k != "NF_PEER_PYTHON"}
    out = subprocess.run(
        [sys.executable, "tools/benchmark.py", "--peer=timm", "--json"],
        cwd=REPO,
        env={**env, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert out.returncode != 0 and "--peer_python" in out.stderr
    out = run_benchmark("--peer=timm", "--peer_python=/nonexistent/python", "--json")
    assert out.returncode != 0 and "/nonexistent/python does not exist" in out.stderr


@pytest.mark.skipif(not os.environ.get("NF_PEER_PYTHON"), reason="no peer Python ($NF_PEER_PYTHON) with torch + timm")
def test_side_by_side_with_timm():
    out = run_benchmark(*TINY_ARGS, "--compare=false", "--peer=timm", "--peer_model=nf_resnet26")
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["peer"]["model"] == "nf_resnet26" and r["peer"]["threads"] == len(os.sched_getaffinity(0))
    for key in ("nf_over_timm_train", "nf_over_timm_inference", "timm_peak_rss_bytes_train", "train_peak_rss_bytes"):
        assert r[key] > 0
    # The steps' own peak (after the compile's heap was trimmed and VmHWM restarted) is below the
    # peak that includes compiling.
    assert r["peak_rss_reset"] and r["train_peak_rss_bytes"] < r["peak_rss_bytes_with_compile"]
    assert r["peer"]["forward_flops_conv_matmul"] > 0 and r["forward_flops_conv_matmul"] > 0
