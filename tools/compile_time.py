"""Compile seconds of the trainer's train step for several models (nothing is allocated: the
step is lowered and compiled on the abstract state of `setup_training(..., abstract=True)`),
each relative to the first; interleaved when repeated, medians reported.

    python tools/compile_time.py --models=nf_resnet50,nf_resnet288 [--repeats=3] [--json]

The config is tools/bench_common.py's (the quickstart recipe on each model, or --config).
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

import bench_common as common
import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags

from nf.models import list_models
from nf.train.sharding import batch_sharding, make_mesh
from nf.train.trainer import setup_training

_MODELS = flags.DEFINE_list("models", [], "Models whose train steps to compile (the first is the reference).")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Interleaved compiles per model (median).")


def compile_train_step_abstract(config: ml_collections.ConfigDict) -> dict[str, float]:
    """Lower + compile the trainer's step of `config` on its abstract state (nothing allocated)."""
    mesh = make_mesh(config.mesh)
    task = common.make_task(config)
    setup = setup_training(config, task, mesh, abstract=True)
    batch = jax.eval_shape(
        lambda: task.synthetic_batch(config.batch_size, config.data.image_size, common.in_channels(task))
    )
    shard = batch_sharding(mesh)
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=shard), batch)
    start = time.perf_counter()
    lowered = setup.train_step.lower(setup.state, batch, setup.counters)
    lower_s = time.perf_counter() - start
    lowered.compile()
    return {"lower_seconds": lower_s, "compile_seconds": time.perf_counter() - start}


def run_compile_comparison(names: list[str]) -> dict[str, Any]:
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        raise app.UsageError(f"Unknown model(s) {unknown}")
    config = common.benchmark_config()
    jax.jit(lambda a: a + 1).lower(jnp.zeros(3)).compile()  # one-time backend start-up, not per model
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(_REPEATS.value):
        for n in names if r % 2 == 0 else names[::-1]:
            common.log(f"compiling the {n} train step ...")
            runs[n].append(compile_train_step_abstract(common.variant(config, name=n)))
    med = {n: {k: statistics.median(run[k] for run in runs[n]) for k in runs[n][0]} for n in names}
    base = med[names[0]]["compile_seconds"]
    return {
        "image_size": config.data.image_size,
        "batch_size": config.batch_size,
        "repeats": _REPEATS.value,
        "loadavg": os.getloadavg()[0],
        "compile_seconds": {n: med[n]["compile_seconds"] for n in names},
        "lower_seconds": {n: med[n]["lower_seconds"] for n in names},
        "compile_ratio": {n: med[n]["compile_seconds"] / base for n in names},
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _MODELS.value:
        raise app.UsageError("--models=a,b,... is required")
    common.emit(run_compile_comparison(_MODELS.value))


if __name__ == "__main__":
    app.run(main)
