"""Per-device bytes of the train state's parameters, optimizer state and EMA, replicated over N
devices (mesh data=N) versus FSDP (fsdp=N), without running the model: the trainer's abstract
state and shardings (`setup_training(..., abstract=True)`) on N fake CPU devices; each leaf's
per-device size is its sharding's `shard_shape`.

    python tools/state_bytes.py --model=nf_resnet50 --devices=4 [--json]

The config is tools/bench_common.py's (the quickstart recipe on --model, or --config).
"""

from __future__ import annotations

import copy
import os
from typing import Any

import bench_common as common
import jax
import ml_collections
import numpy as np
from absl import app, flags

from nf.train.sharding import make_mesh
from nf.train.trainer import setup_training

_DEVICES = flags.DEFINE_integer("devices", 4, "Fake CPU devices: replicated over them vs FSDP over them.")


def state_bytes_per_device(devices: int) -> dict[str, Any]:
    """Per-device bytes of params / optimizer state / EMA, replicated (data=N) vs FSDP (fsdp=N):
    the trainer's abstract state and shardings of the benchmark config on each mesh."""
    if jax.device_count() != devices:
        raise RuntimeError(f"--devices={devices} needs {devices} devices, found {jax.device_count()}")
    config = common.benchmark_config()
    parts = ("params", "opt_state", "ema")

    def per_device(fsdp: int) -> dict[str, int]:
        cfg = copy.deepcopy(config)
        with cfg.unlocked():
            cfg.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": fsdp})
        setup = setup_training(cfg, common.make_task(cfg), make_mesh(cfg.mesh), abstract=True)
        return {
            part: sum(
                int(np.prod(x.sharding.shard_shape(x.shape), dtype=np.int64)) * np.dtype(x.dtype).itemsize
                for x in jax.tree.leaves(setup.state[part])
            )
            for part in parts
        }

    rep, fsdp = per_device(1), per_device(devices)
    out: dict[str, Any] = {"model": config.model.name, "devices": devices}
    for part in parts:
        out[f"{part}_bytes_replicated"] = rep[part]
        out[f"{part}_bytes_fsdp"] = fsdp[part]
    both = ("params", "opt_state")
    out["params_plus_opt_fsdp_over_replicated"] = sum(fsdp[p] for p in both) / sum(rep[p] for p in both)
    out["all_state_fsdp_over_replicated"] = sum(fsdp.values()) / sum(rep.values())
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # Fake CPU devices; read when the backend starts (nothing above has touched a device).
    flag = f"--xla_force_host_platform_device_count={_DEVICES.value}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}"
    jax.config.update("jax_platforms", "cpu")
    common.emit(state_bytes_per_device(_DEVICES.value))


if __name__ == "__main__":
    app.run(main)
