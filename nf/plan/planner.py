"""Compile `nf-train`'s own steps for a named TPU slice on this machine and say whether they fit.

`plan(config, "v4-8")` builds the trainer's train step (`setup_training(..., abstract=True)`:
same model, dtype, optimizer, AGC, EMA, accumulation, guard and shardings) and its eval step on
the mesh `nf.train.sharding.make_mesh` lays over the slice's devices as libtpu describes them,
compiles both with XLA's TPU compiler and reports, per device: HBM (XLA's memory analysis), FLOPs
and bytes accessed (its cost analysis), collectives, and a roofline lower bound of the step time
(the larger of FLOPs / peak bf16 FLOP/s and bytes / HBM bandwidth; a bound, not a measurement:
it ignores collectives, input and every inefficiency). When the step does not fit, `suggestions`
lists settings that do, each found by compiling it, cheapest (lowest bound) first.

XLA's cost analysis counts a loop body once, whatever its trip count; stages run under
`jax.lax.scan` and gradient accumulation are loops, so FLOPs and bytes come from a second compile
with the stages' scans unrolled (`nf.models.stats.unrolled_scans`; the same arithmetic) when the
step has loops; with accumulation, the loop over micro-batches stays rolled (unrolled, XLA would
schedule every micro-batch's activations at once and the cost compile could run out of HBM) and
the cost of one micro-batch's forward and backward pass, compiled alone, is added for the others.
Memory and collectives come from the program `nf-train` runs.
"""

from __future__ import annotations

import contextlib
import copy
import re
import time
from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from nf.plan import compiled as xla
from nf.plan.tpus import TpuSlice, parse_slice, topology_devices
from nf.tasks import get_task, task_class

REMAT_SUGGESTION = "block"  # the policy a suggestion tries: recompute each block's activations


def _with(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> ml_collections.ConfigDict:
    cfg = copy.deepcopy(config)
    with cfg.unlocked():
        cfg.update_from_flattened_dict(overrides)
    return cfg


def abstract_batch(task: Any, batch_size: int, image_size: int, mesh: jax.sharding.Mesh, train: bool) -> dict:
    """The task's batch (`synthetic_batch`'s keys and dtypes; training images in the task's
    `train_image_dtype`, as its pipeline delivers them) at the global `batch_size`, as
    ShapeDtypeStructs sharded over the mesh's batch axes (`nf.train.sharding.batch_sharding`)."""
    from nf.train.sharding import batch_sharding

    channels = getattr(nnx.eval_shape(task.build_model), "in_channels", 3)
    small = task.synthetic_batch(1, image_size, channels)
    if train:
        small["image"] = small["image"].astype(task.train_image_dtype)
    shard = batch_sharding(mesh)
    return {k: jax.ShapeDtypeStruct((batch_size, *v.shape[1:]), v.dtype, sharding=shard) for k, v in small.items()}


def per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs."""
    return sum(
        int(np.prod(x.sharding.shard_shape(x.shape), dtype=np.int64)) * np.dtype(x.dtype).itemsize
        for x in jax.tree.leaves(tree)
    )


def _has_loops(hlo_text: str) -> bool:
    return " while(" in hlo_text


def compile_steps(
    config: ml_collections.ConfigDict,
    tpu: TpuSlice,
    slices: int = 1,
    num_classes: int | None = None,
    cost: str = "unrolled",
) -> dict[str, Any]:
    """Compile the train and eval steps of `config` for `slices` x `tpu`; the plan without suggestions.

    With `conv_impl="lax"`: this process's backend is the CPU, but the program is for a TPU, whose
    convolutions and pooling are lax's own ops (the XLA:CPU-tuned paths would be compiled for the
    TPU otherwise)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.conv_impl = "lax"
    return _compile_steps(config, tpu, slices, num_classes, cost)


def _compile_steps(
    config: ml_collections.ConfigDict, tpu: TpuSlice, slices: int, num_classes: int | None, cost: str = "unrolled"
) -> dict[str, Any]:
    from nf.models.stats import recorded_scans, unrolled_scans
    from nf.train.sharding import make_mesh, replicated
    from nf.train.trainer import check_batch_size, make_eval_step, setup_training

    devices = topology_devices(tpu, slices)
    mesh = make_mesh(config.mesh, devices)
    check_batch_size(config.batch_size, mesh)
    task = get_task(config, num_classes or task_class(config).benchmark_num_classes)
    data = config.data
    train_batch = abstract_batch(task, config.batch_size, data.image_size, mesh, train=True)
    eval_size = data.get("eval_image_size") or data.image_size
    eval_batch = abstract_batch(task, config.batch_size, eval_size, mesh, train=False)

    def lower_train():
        setup = setup_training(config, task, mesh, abstract=True)
        counters = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype, sharding=replicated(mesh)),
            setup.counters,
        )
        return setup, setup.train_step.lower(setup.state, train_batch, counters)

    start = time.perf_counter()
    accum = int(config.optimizer.get("accum_steps", 1))
    per_block = cost == "per_block"
    loops: list = []
    with recorded_scans(loops) if per_block else contextlib.nullcontext():
        setup, lowered = lower_train()
    state_bytes = per_device_bytes(setup.state)
    try:
        train = lowered.compile()
    except Exception as e:  # XLA:TPU refuses a program whose buffers exceed HBM (CompileTimeHbmOom)
        required = hbm_oom_bytes(str(e))
        if required is None:
            raise
        return _out_of_memory(config, tpu, slices, devices, mesh, state_bytes, train_batch, required, str(e))
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    eval_step = jax.jit(make_eval_step(setup.fns, task)).lower(
        setup.state["params"], setup.state["model_state"], eval_batch
    )
    try:
        eval_mem = xla.memory(eval_step.compile())
    except Exception as e:  # the eval step alone exceeds HBM
        required = hbm_oom_bytes(str(e))
        if required is None:
            raise
        eval_mem = {"argument": state_bytes, "temp": required, "output": 0, "alias": 0, "code": 0, "total": required}
    eval_seconds = time.perf_counter() - start

    hlo = train.as_text()
    costs, unrolled_seconds, cost_counts_loops_once = xla.cost(train), 0.0, False
    cost_method = "compiled" if not _has_loops(hlo) else ("per_block" if per_block else "unrolled")
    if per_block and _has_loops(hlo):  # each loop body counted once: add the rest of its trips
        start = time.perf_counter()
        blocks = _loop_bodies(loops, mesh, costs)  # one pass over one (micro-)batch: (trips - 1) x each body
        micro = xla.cost(_micro_batch_grads(setup, task, config, mesh).compile()) if accum > 1 else None
        # every micro-batch's pass has its blocks' other trips; the accumulation loop's other trips
        costs = {k: costs[k] + accum * blocks[k] + (micro[k] * (accum - 1) if micro else 0) for k in costs}
        unrolled_seconds = time.perf_counter() - start
    elif _has_loops(hlo):  # loop bodies are counted once: cost the same step with its scans unrolled
        start = time.perf_counter()
        try:
            with unrolled_scans():
                costs = xla.cost(lower_train()[1].compile())
                if accum > 1:  # the accumulation loop stays a loop: add the other micro-batches' passes
                    micro = xla.cost(_micro_batch_grads(setup, task, config, mesh).compile())
                    costs = {k: costs[k] + (accum - 1) * micro[k] for k in costs}
        except Exception as e:  # the unrolled program exceeds HBM: the rolled cost still bounds below
            if hbm_oom_bytes(str(e)) is None:
                raise
            cost_counts_loops_once = True
        unrolled_seconds = time.perf_counter() - start

    hbm = xla.memory(train) | {"capacity": tpu.hbm_bytes_per_device}
    # While evaluating, the whole train state stays resident beside the eval step's own buffers.
    eval_total = state_bytes + per_device_bytes(eval_batch) + eval_mem["temp"] + eval_mem["output"] + eval_mem["code"]
    fits = hbm["total"] <= hbm["capacity"] and eval_total <= hbm["capacity"]

    chips, hosts = _chips_and_hosts(tpu, slices, devices)
    compute_s = costs["flops"] / tpu.peak_flops_per_device
    memory_s = costs["bytes_accessed"] / tpu.hbm_bandwidth_per_device
    step_s = max(compute_s, memory_s)
    per_chip = config.batch_size / chips / step_s if step_s > 0 else float("inf")
    return _header(config, tpu, slices, devices, mesh) | {
        "fits": bool(fits),
        "margin_bytes": int(hbm["capacity"] - max(hbm["total"], eval_total)),
        "hbm_bytes": hbm,
        "state_bytes_per_device": state_bytes,
        "eval_hbm_bytes": eval_mem | {"total_with_train_state": eval_total},
        "flops_per_device": costs["flops"],
        "bytes_accessed_per_device": costs["bytes_accessed"],
        "collectives": xla.collectives(hlo),
        "cost_method": cost_method,
        "cost_counts_loops_once": cost_counts_loops_once,  # then the bound is looser, still a bound
        "roofline_bound": "compute" if compute_s >= memory_s else "memory",
        "roofline_step_seconds": step_s,
        "roofline_images_per_second_per_chip": per_chip,
        "host_images_per_second_needed": per_chip * chips / hosts,
        "host_input": host_input(config, tpu, per_chip * chips / hosts),
        "compile_seconds": {"train": train_seconds, "eval": eval_seconds, "unrolled_for_cost": unrolled_seconds},
        "compile_error": None,
        "suggestions": [],
    }


def host_input(config: ml_collections.ConfigDict, tpu: TpuSlice, images_per_second: float) -> dict[str, Any]:
    """Whether one TPU VM's vCPUs can feed `images_per_second` training images (the roofline's
    rate: an upper bound of what the step can take) at the per-core rate `nf.data.host_rate`
    measured for the config's augmentation (one core of the development CPU: measure your own)."""
    from nf.data.host_rate import cores_needed, rate_for

    rate = rate_for(config.data)
    cores = cores_needed(images_per_second, rate)
    return {
        "images_per_second_needed": images_per_second,
        "images_per_core_second": rate.images_per_core_second,
        "rate_source": rate.source,
        "cores_needed": cores,
        "host_vcpus": tpu.host_vcpus,
        "hosts_can_feed": bool(cores <= tpu.host_vcpus),
    }


def _loop_bodies(loops: list, mesh, keys) -> dict[str, float]:
    """What XLA leaves out when it counts each recorded loop's body once: (trip count - 1) x the
    cost of the body compiled alone, its forward and backward pass (the step's forward and
    transposed loops) at the loop's shapes, the batch sharded as in the step, the rest replicated.
    Added to the step's cost, on NF-RegNet-B2 (v3-32) this matches the fully unrolled compile's
    FLOPs within 0.1 % and its bytes within 4 %."""
    from nf.train.sharding import batch_sharding, replicated

    total = dict.fromkeys(keys, 0.0)
    for body, carry, x, trips in loops:
        if trips <= 1:
            continue

        def fwd_bwd(c, xs, body=body):
            out, vjp = jax.vjp(body, c, xs)
            # In the step the forward and backward passes are two loops: a rematerialized block's
            # recomputation cannot merge into its forward pass; alone, only this barrier stops it.
            out, vjp = jax.lax.optimization_barrier((out, vjp))
            return out, vjp(jax.tree.map(jnp.ones_like, out))  # the output too: the step uses it

        # The carry is the stage's activations (batch first); the block's parameters are replicated.
        shards = (
            jax.tree.map(lambda a: batch_sharding(mesh) if a.ndim else replicated(mesh), carry),
            jax.tree.map(lambda _: replicated(mesh), x),
        )
        alone = xla.cost(jax.jit(fwd_bwd, in_shardings=shards).lower(carry, x).compile())
        total = {k: total[k] + (trips - 1) * alone[k] for k in total}
    return total


def _micro_batch_grads(setup, task, config, mesh):
    """The forward and backward pass of one micro-batch of an accumulating step, lowered."""
    from nf.train.step import make_grads_fn

    micro = config.batch_size // int(config.optimizer.accum_steps)
    batch = abstract_batch(task, micro, config.data.image_size, mesh, train=True)
    state = setup.state
    return jax.jit(make_grads_fn(setup.fns, task)).lower(
        state["params"], state["model_state"], batch, jax.random.key(config.seed)
    )


_HBM_OOM = re.compile(r"HBM.*?required for [\w ]+ \(([\d.]+)([KMGT])\) exceeds available HBM", re.S)


def hbm_oom_bytes(message: str) -> int | None:
    """The bytes XLA:TPU's compile-time out-of-HBM error says the program needs, else None."""
    m = _HBM_OOM.search(message)
    return None if m is None else int(float(m.group(1)) * 1024 ** "KMGT".index(m.group(2)) * 1024)


def _chips_and_hosts(tpu: TpuSlice, slices: int, devices: list) -> tuple[int, int]:
    return tpu.chips * slices, len({(getattr(d, "slice_index", 0), d.process_index) for d in devices})


def _header(config, tpu: TpuSlice, slices: int, devices: list, mesh) -> dict[str, Any]:
    chips, hosts = _chips_and_hosts(tpu, slices, devices)
    return {
        "topology": tpu.name,
        "slices": slices,
        "libtpu_topology": tpu.topology,
        "devices": len(devices),
        "chips": chips,
        "hosts": hosts,
        "device_kind": devices[0].device_kind,
        "mesh": dict(mesh.shape),
        "batch_size": config.batch_size,
        "accum_steps": int(config.optimizer.get("accum_steps", 1)),
        "remat": config.model.get("remat", "none") or "none",
        "dtype": config.model.get("dtype") or "float32",
        "image_size": int(config.data.image_size),
    }


def _out_of_memory(config, tpu, slices, devices, mesh, state_bytes, batch, required, message) -> dict[str, Any]:
    """The plan of a train step XLA:TPU refused to compile for lack of HBM: the bytes its error
    names (as temporaries) beside the state and batch the step would hold; no cost figures."""
    arguments = state_bytes + per_device_bytes(batch)
    hbm = {"argument": arguments, "temp": required, "output": state_bytes, "alias": state_bytes, "code": 0}
    hbm |= {"total": arguments + required, "capacity": tpu.hbm_bytes_per_device}
    return _header(config, tpu, slices, devices, mesh) | {
        "fits": False,
        "margin_bytes": int(hbm["capacity"] - hbm["total"]),
        "hbm_bytes": hbm,
        "state_bytes_per_device": state_bytes,
        "eval_hbm_bytes": None,
        "flops_per_device": None,
        "bytes_accessed_per_device": None,
        "collectives": {},
        "roofline_bound": None,
        "roofline_step_seconds": None,
        "roofline_images_per_second_per_chip": None,
        "host_images_per_second_needed": None,
        "host_input": None,
        "compile_seconds": {},
        "compile_error": next((line for line in message.splitlines() if "HBM" in line), message)[:500],
        "suggestions": [],
    }


def candidate_settings(config: ml_collections.ConfigDict, devices: int) -> Iterable[dict[str, Any]]:
    """Settings that lower per-device memory, per knob in increasing strength: FSDP size (the
    parameters, EMA and optimizer state sharded), gradient accumulation (a smaller micro-batch) and
    rematerialization (activations recomputed in the backward pass), then remat with each of the
    others. Only settings the batch and device count allow."""
    per_device = config.batch_size // devices
    accum_now = int(config.optimizer.get("accum_steps", 1))
    fsdp = [2**k for k in range(1, 31) if 2**k <= devices and devices % 2**k == 0]
    fsdp = [f for f in fsdp if f > int(config.mesh.get("fsdp", 1))]
    accum = [accum_now * 2**k for k in range(1, 31) if per_device % (accum_now * 2**k) == 0]
    remat_off = (config.model.get("remat") or "none") == "none"
    knobs = [
        [{"mesh.fsdp": f, "mesh.data": -1} for f in fsdp],
        [{"optimizer.accum_steps": a} for a in accum],
    ]
    if remat_off:
        knobs.append([{"model.remat": REMAT_SUGGESTION}])
        knobs += [[{"model.remat": REMAT_SUGGESTION} | s for s in k] for k in knobs[:2]]
    return knobs


def suggest(
    config: ml_collections.ConfigDict,
    tpu: TpuSlice,
    slices: int = 1,
    num_classes: int | None = None,
    max_compiles: int = 12,
    cost: str = "unrolled",
) -> list[dict[str, Any]]:
    """Settings that make `config` fit, found by compiling them (FLOPs and bytes by `cost`, as in
    `plan`): for each knob the weakest value that fits. The knobs advance together (round r tries
    each unsettled knob's r-th value), so a compile budget is spread over all of them; sorted by
    roofline bound, lowest first."""
    knobs = [list(k) for k in candidate_settings(config, tpu.devices * slices)]
    found, compiles, settled = [], 0, set()
    for r in range(max((len(k) for k in knobs), default=0)):
        for index, knob in enumerate(knobs):
            if index in settled or r >= len(knob) or compiles >= max_compiles:
                continue
            compiles += 1
            overrides = knob[r]
            try:
                result = compile_steps(_with(config, overrides), tpu, slices, num_classes, cost)
            except ValueError:  # e.g. a batch the mesh cannot split
                continue
            if result["fits"]:
                settled.add(index)
                found.append(
                    {
                        "set": overrides,
                        "flags": " ".join(f"--config.{k}={v}" for k, v in overrides.items()),
                        "hbm_total_bytes": result["hbm_bytes"]["total"],
                        "margin_bytes": result["margin_bytes"],
                        "roofline_step_seconds": result["roofline_step_seconds"],
                        "collectives": result["collectives"],
                    }
                )
    return sorted(found, key=lambda s: s["roofline_step_seconds"])


def plan(
    config: ml_collections.ConfigDict,
    topology: str,
    slices: int = 1,
    num_classes: int | None = None,
    search: bool = True,
    max_compiles: int = 12,
    cost: str = "unrolled",
) -> dict[str, Any]:
    """The plan of `config` on `slices` x the slice `topology` (e.g. "v5e-16"); see the module.
    `cost`: "unrolled" (FLOPs and bytes from a compile with the scans unrolled) or "per_block" (the
    step's own compile plus each loop body compiled alone: minutes instead of an hour, and far less
    host memory, for deep recipes)."""
    if cost not in ("unrolled", "per_block"):
        raise ValueError(f"cost={cost!r}: 'unrolled' or 'per_block'")
    if slices < 1:
        raise ValueError(f"--slices={slices} must be >= 1")
    tpu = parse_slice(topology)
    result = compile_steps(config, tpu, slices, num_classes, cost)
    if not result["fits"] and search:
        result["suggestions"] = suggest(config, tpu, slices, num_classes, max_compiles, cost)
    return result
