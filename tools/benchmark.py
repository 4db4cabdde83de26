"""Training / inference throughput of a model on this machine, against its matmul peak.

    python tools/benchmark.py --model=nf_resnet50 --image_size=128 --batch_size=16 --json
    python tools/benchmark.py --task=segmentation --model=nf_resnet50 --image_size=128 --batch_size=16
    python tools/benchmark.py --compile_only_models=nf_resnet50,nf_resnet288

One process measures:
  (a) the matmul peak: median FLOP/s of a jitted 2048^3 float32 matmul, timed in the same
      interleaved rounds as the train steps (so under the same machine load);
  (b) a full train step of --model (forward, softmax cross-entropy, grads w.r.t. nnx.Param,
      optax SGD-momentum update, donated buffers): compile time, median step time, images/s,
      model FLOPs per step (XLA cost analysis with scans unrolled, see nf.models.stats),
      achieved FLOP/s and the fraction of the matmul peak, peak RSS and XLA's memory analysis;
  (c) Scaled WS overhead: the same step with `ws=False` (plain He-init convs);
  (d) inference: folded-WS forward vs the unfolded one vs the plain-conv network;
  (e) NF vs BN: the same step with the model's `bn_` counterpart.
Compared variants are timed in interleaved rounds (A B C, C B A, ...), so load on the machine
affects them alike; every reported time is a median. `--compile_only_models` only lowers and
compiles the train step of each listed model (abstract parameters: no memory) and reports the
compile seconds relative to the first.

`--fsdp_bytes=4` reports, without running the model, the per-device bytes of parameters,
optimizer state and EMA of --model on 4 (fake CPU) devices, replicated versus FSDP over 4 (the
trainer's own sharding rule, `nf.train.sharding.train_state_shardings`, and the optimizer of the
ImageNet recipe); `shard_shape` of each leaf's sharding gives its per-device size.

    python tools/benchmark.py --model=nf_resnet50 --fsdp_bytes=4

`--task=segmentation|depth` times the dense model of that task instead (nf.models.dense: FCN at
output stride 16 with 21 classes, or FCRN at output stride 32) with its loss (pixel
cross-entropy with ignored pixels, berHu over valid pixels) on a synthetic dense batch; the
comparisons use the same task on the ws=False / bn_ backbones.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from absl import app, flags

try:
    import nf  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from nf.layers import SkipGain, fold_ws
from nf.models import create_model, list_models
from nf.models.dense import depth_model, segmentation_model
from nf.models.stats import abstract_model, xla_flops
from nf.tasks import depth as depth_task
from nf.tasks import segmentation as seg_task

_MODEL = flags.DEFINE_string("model", "nf_resnet50", "Registered model to benchmark.")
_TASK = flags.DEFINE_enum(
    "task", "classification", ["classification", "segmentation", "depth"], "Which model and loss to time."
)
SEGMENTATION_CLASSES = 21  # Pascal VOC
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "Input resolution.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Batch size of the train step and of inference.")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (rounds) per variant.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps per variant before timing.")
_JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the parameters and the synthetic batch.")
_LR = flags.DEFINE_float("learning_rate", 1e-3, "SGD learning rate (small: keeps values finite on random data).")
_MATMUL_SIZE = flags.DEFINE_integer("matmul_size", 2048, "Side of the square float32 matmul for the peak.")
_MATMUL_REPEATS = flags.DEFINE_integer("matmul_repeats", 10, "Timed matmuls for the start-up peak.")
_MATMUL_ROUND_REPEATS = flags.DEFINE_integer(
    "matmul_round_repeats", 3, "Matmuls timed in each round of the train-step timing (the reported peak)."
)
_FLOPS_COST = flags.DEFINE_enum(
    "flops_cost",
    "corrected",
    ["corrected", "compiled", "lowered"],
    "How model FLOPs per step are counted (XLA counts a scan body once): 'corrected' = cost analysis "
    "of the executed compiled step + the FLOPs the unrolled scans add in the cheap lowered analysis; "
    "'compiled' = compile the fully unrolled step (exact, a second slow compile); 'lowered' = the "
    "unrolled step's unoptimized module only.",
)
_COMPARE = flags.DEFINE_bool("compare", True, "Also time the ws=False, folded-inference and bn_ variants.")
_COMPILE_ONLY = flags.DEFINE_list(
    "compile_only_models", [], "Only compile the train step of these models and report compile seconds."
)
_FSDP_BYTES = flags.DEFINE_integer(
    "fsdp_bytes", 0, "N > 0: only report per-device state bytes, replicated vs FSDP over N fake CPU devices."
)
_COMPILE_REPEATS = flags.DEFINE_integer("compile_repeats", 1, "Interleaved compiles per model (median).")


# ----------------------------------------------------------------------------- measurement helpers


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def interleaved_medians(fns: dict[str, Callable[[int], Any]], steps: int, warmup: int) -> dict[str, dict]:
    """Median wall time of each `fn(step)` (which must block until done), timed in rounds that
    alternate the order A B C / C B A so drifting machine load affects all variants alike."""
    names = list(fns)
    for name in names:
        for i in range(warmup):
            fns[name](i)
    times = {name: [] for name in names}
    for r in range(steps):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            fns[name](warmup + r)
            times[name].append(time.perf_counter() - start)
    return {
        name: {"median": statistics.median(t), "min": min(t), "max": max(t), "times": t} for name, t in times.items()
    }


class MatmulProbe:
    """A jitted n^3 float32 matmul; one call times `repeats` of them (seconds per matmul)."""

    def __init__(self, n: int, repeats: int):
        self.a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        self.b = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
        self.matmul, self.repeats, self.flops = jax.jit(jnp.matmul), repeats, 2.0 * n**3
        jax.block_until_ready(self.matmul(self.a, self.b))

    def __call__(self, step: int = 0) -> None:
        for _ in range(self.repeats):
            jax.block_until_ready(self.matmul(self.a, self.b))


def matmul_peak_flops(n: int, repeats: int) -> float:
    """Median FLOP/s of `repeats` individually timed matmuls."""
    probe = MatmulProbe(n, 1)
    times = interleaved_medians({"matmul": probe}, repeats, 1)["matmul"]["times"]
    return probe.flops / statistics.median(times)


def paired_ratio(t: dict[str, dict], a: str, b: str) -> float:
    """Median over rounds of t_a / t_b (the two were timed next to each other in each round)."""
    return statistics.median(x / y for x, y in zip(t[a]["times"], t[b]["times"]))


def memory_stats(compiled) -> dict[str, int | None]:
    try:
        mem = compiled.memory_analysis()
    except Exception:  # not every backend implements it
        mem = None
    keys = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes")
    out = {k: (int(getattr(mem, k)) if mem is not None and hasattr(mem, k) else None) for k in keys}
    out["temp_plus_argument_bytes"] = (
        None if out["temp_size_in_bytes"] is None else out["temp_size_in_bytes"] + out["argument_size_in_bytes"]
    )
    return out


def bn_counterpart(name: str) -> str | None:
    """nf_resnetX (or any <family>_resnetX) -> bn_resnetX, when registered and different."""
    if "_resnet" not in name or name.startswith("bn_"):
        return None
    candidate = "bn_resnet" + name.rsplit("_resnet", 1)[1]
    return candidate if candidate in list_models() else None


# ----------------------------------------------------------------------------- train step


def make_optimizer() -> optax.GradientTransformation:
    return optax.sgd(_LR.value, momentum=0.9, nesterov=True)


def build_model(name: str, **overrides) -> nnx.Module:
    """The --task's model on the registered backbone `name`."""
    if _TASK.value == "segmentation":
        return segmentation_model(name, SEGMENTATION_CLASSES, **overrides)
    if _TASK.value == "depth":
        return depth_model(name, **overrides)
    return create_model(name, **overrides)


def task_loss(outputs: jax.Array, y: jax.Array) -> jax.Array:
    """The --task's training loss of the model outputs against the synthetic targets."""
    if _TASK.value == "segmentation":
        return seg_task.loss(outputs, {"label": y})
    if _TASK.value == "depth":
        return depth_task.berhu(depth_task.prediction(outputs), y, y > 0)
    return optax.softmax_cross_entropy_with_integer_labels(outputs.astype(jnp.float32), y).mean()


def make_train_step(graphdef: nnx.GraphDef, rest: nnx.State, tx: optax.GradientTransformation):
    """`(params, other, opt_state, x, y, key) -> (params, other, opt_state, loss)`.

    `params` are the nnx.Param leaves (differentiated, updated by `tx`), `other` the remaining
    Variables (BatchNorm statistics: updated by the forward pass), `rest` non-Variable constants.
    """

    def loss_fn(params, other, x, y, key):
        model = nnx.merge(graphdef, params, other, rest, copy=True)  # fresh Variables in this trace
        loss = task_loss(model(x, train=True, key=key), y)
        _, _, new_other, _ = nnx.split(model, nnx.Param, nnx.Variable, ...)
        return loss, new_other

    def train_step(params, other, opt_state, x, y, key):
        (loss, other), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, other, x, y, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), other, opt_state, loss

    return train_step


def synthetic_batch(batch_size: int, image_size: int, in_channels: int, num_classes: int, seed: int):
    """Random images and the --task's targets: class ids (B,), per-pixel labels (B, H, W) with
    10% ignored (255), or depths (B, H, W) in 0.5-10 m with 10% invalid (0)."""
    kx, ky, kv = jax.random.split(jax.random.key(seed + 1), 3)
    x = jax.random.normal(kx, (batch_size, image_size, image_size, in_channels), jnp.float32)
    dense = (batch_size, image_size, image_size)
    holes = jax.random.uniform(kv, dense) < 0.1
    if _TASK.value == "segmentation":
        y = jnp.where(holes, seg_task.IGNORE_LABEL, jax.random.randint(ky, dense, 0, num_classes))
    elif _TASK.value == "depth":
        y = jnp.where(holes, 0.0, jax.random.uniform(ky, dense, jnp.float32, 0.5, 10.0))
    else:
        y = jax.random.randint(ky, (batch_size,), 0, num_classes)
    return x, y


class TrainRunner:
    """A compiled train step with its own (donated, updated in place) state."""

    def __init__(self, model: nnx.Module, batch, seed: int):
        graphdef, params, other, rest = nnx.split(model, nnx.Param, nnx.Variable, ...)
        tx = make_optimizer()
        self.step_fn = make_train_step(graphdef, rest, tx)
        self.state = (params, other, tx.init(params))
        self.batch, self.key = batch, jax.random.key(seed + 2)
        args = (*self.state, *batch, self.key)
        start = time.perf_counter()
        lowered = jax.jit(self.step_fn, donate_argnums=(0, 1, 2)).lower(*args)
        self.lower_seconds = time.perf_counter() - start
        self.compiled = lowered.compile()
        self.compile_seconds = time.perf_counter() - start  # lower + compile
        self.memory = memory_stats(self.compiled)
        self.loss = None

    def __call__(self, step: int) -> None:
        params, other, opt_state, loss = self.compiled(*self.state, *self.batch, jax.random.fold_in(self.key, step))
        jax.block_until_ready((params, other, opt_state, loss))
        self.state, self.loss = (params, other, opt_state), loss

    def executed_cost_flops(self) -> float:
        """Cost analysis of the module that actually runs (scan bodies counted once)."""
        cost = self.compiled.cost_analysis()
        return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])

    def model_flops(self, method: str) -> dict[str, float]:
        """FLOPs per step with every block counted (see --flops_cost)."""
        specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (*self.state, *self.batch, self.key))
        out = {
            "executed_compiled": self.executed_cost_flops(),
            "lowered_unrolled": xla_flops(self.step_fn, *specs, compiled=False, unroll=True),
        }
        if method == "corrected":
            out["lowered_scanned"] = xla_flops(self.step_fn, *specs, compiled=False, unroll=False)
            out["model"] = out["executed_compiled"] + out["lowered_unrolled"] - out["lowered_scanned"]
        elif method == "compiled":
            out["model"] = out["compiled_unrolled"] = xla_flops(self.step_fn, *specs, compiled=True, unroll=True)
        else:
            out["model"] = out["lowered_unrolled"]
        return out


def compile_train_step_abstract(name: str, batch_size: int, image_size: int) -> dict[str, float]:
    """Lower + compile the train step of `name` on abstract parameters (nothing allocated)."""
    graphdef, variables, rest = abstract_model(lambda: create_model(name))
    tx = make_optimizer()
    params, other = nnx.filter_state(variables, nnx.Param, ...)
    opt_state = jax.eval_shape(tx.init, params)
    step = make_train_step(graphdef, rest, tx)
    model = nnx.merge(graphdef, variables, rest)
    x = jax.ShapeDtypeStruct((batch_size, image_size, image_size, model.in_channels), jnp.float32)
    y = jax.ShapeDtypeStruct((batch_size,), jnp.int32)
    key = jax.eval_shape(lambda: jax.random.key(0))
    start = time.perf_counter()
    lowered = jax.jit(step, donate_argnums=(0, 1, 2)).lower(params, other, opt_state, x, y, key)
    lower_s = time.perf_counter() - start
    lowered.compile()
    total = time.perf_counter() - start
    return {"lower_seconds": lower_s, "compile_seconds": total}


# ----------------------------------------------------------------------------- inference


def set_skip_gains(model: nnx.Module, value: float) -> nnx.Module:
    """SkipInit gains start at 0, which silences every residual branch; set them so the folded
    vs unfolded comparison exercises every conv."""
    graphdef, gains, rest = nnx.split(model, SkipGain, ...)
    return nnx.merge(graphdef, jax.tree.map(lambda g: jnp.full_like(g, value), gains), rest)


class ForwardRunner:
    def __init__(self, model: nnx.Module, x: jax.Array):
        graphdef, variables, rest = nnx.split(model, nnx.Variable, ...)

        def forward(variables, x):  # parameters are arguments: XLA cannot constant-fold the WS
            return nnx.merge(graphdef, variables, rest)(x, train=False)

        self.variables, self.x = variables, x
        start = time.perf_counter()
        self.compiled = jax.jit(forward).lower(variables, x).compile()
        self.compile_seconds = time.perf_counter() - start
        self.out = None

    def __call__(self, step: int) -> None:
        self.out = jax.block_until_ready(self.compiled(self.variables, self.x))


# ----------------------------------------------------------------------------- main


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_benchmark() -> dict[str, Any]:
    name, size, bs, seed = _MODEL.value, _IMAGE_SIZE.value, _BATCH_SIZE.value, _SEED.value
    result: dict[str, Any] = {
        "model": name,
        "task": _TASK.value,
        "image_size": size,
        "batch_size": bs,
        "steps": _STEPS.value,
        "warmup": _WARMUP.value,
        "jax_version": jax.__version__,
        "device": str(jax.devices()[0].device_kind),
        "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0],
    }
    log("matmul peak ...")
    result["matmul_peak_flops_start"] = matmul_peak_flops(_MATMUL_SIZE.value, _MATMUL_REPEATS.value)

    model = build_model(name, seed=seed)
    num_classes = SEGMENTATION_CLASSES if _TASK.value == "segmentation" else getattr(model.head, "out_features", 1)
    batch = synthetic_batch(bs, size, model.in_channels, num_classes, seed)
    log(f"compiling the {name} train step ...")
    main = TrainRunner(model, batch, seed)
    del model
    result["compile_seconds"] = main.compile_seconds
    result["lower_seconds"] = main.lower_seconds
    for i in range(_WARMUP.value):
        main(i)
    result["peak_rss_bytes"] = peak_rss_bytes()  # the main model's step compiled and run
    result["memory_analysis"] = main.memory
    result["compiled_temp_plus_argument_bytes"] = main.memory["temp_plus_argument_bytes"]
    log("model FLOPs (cost analysis, scans unrolled) ...")
    flops = main.model_flops(_FLOPS_COST.value)
    result["model_flops_per_step"] = flops.pop("model")
    result["model_flops_method"] = _FLOPS_COST.value
    result["flops_analyses"] = flops  # executed_compiled counts each scan body once

    train = {"nf": main}
    bn_name = bn_counterpart(name) if _COMPARE.value else None
    if _COMPARE.value:
        log("compiling the ws=False train step ...")
        try:
            train["plain"] = TrainRunner(build_model(name, seed=seed, ws=False), batch, seed)
        except ValueError as e:  # a model without the ws option
            log(f"no ws=False variant: {e}")
        if bn_name:
            log(f"compiling the {bn_name} train step ...")
            train["bn"] = TrainRunner(build_model(bn_name, seed=seed), batch, seed)
    # The matmul probe runs in the same rounds, so the peak is measured under the same load.
    probe = MatmulProbe(_MATMUL_SIZE.value, _MATMUL_ROUND_REPEATS.value)
    log(f"timing train steps {list(train)} (+ matmul probe) ...")
    t = interleaved_medians({**train, "matmul": probe}, _STEPS.value, _WARMUP.value)
    matmul_s = [x / probe.repeats for x in t.pop("matmul")["times"]]
    step_s = t["nf"]["median"]
    flops = result["model_flops_per_step"]
    result.update(
        matmul_peak_flops=probe.flops / statistics.median(matmul_s),
        matmul_peak_flops_best=probe.flops / min(matmul_s),
        step_seconds=step_s,
        step_seconds_min=t["nf"]["min"],
        train_images_per_sec=bs / step_s,
        achieved_flops=flops / step_s,
        final_loss=float(main.loss),
    )
    result["peak_flops_fraction"] = result["achieved_flops"] / result["matmul_peak_flops"]
    # Per round: the step's FLOP/s over the matmul's FLOP/s measured right next to it.
    result["peak_flops_fraction_paired"] = statistics.median(
        (flops / s) / (probe.flops / m) for s, m in zip(t["nf"]["times"], matmul_s)
    )
    result["peak_flops_fraction_best"] = (flops / t["nf"]["min"]) / result["matmul_peak_flops_best"]
    result["ws_overhead"] = t["nf"]["median"] / t["plain"]["median"] - 1 if "plain" in t else None
    result["ws_overhead_paired"] = paired_ratio(t, "nf", "plain") - 1 if "plain" in t else None
    result["plain_step_seconds"] = t["plain"]["median"] if "plain" in t else None
    result["bn_model"] = bn_name
    result["bn_step_seconds"] = t["bn"]["median"] if "bn" in t else None
    result["bn_compile_seconds"] = train["bn"].compile_seconds if "bn" in train else None
    result["nf_vs_bn_step_ratio"] = t["nf"]["median"] / t["bn"]["median"] if "bn" in t else None
    result["nf_vs_bn_step_ratio_paired"] = paired_ratio(t, "nf", "bn") if "bn" in t else None
    result["train_step_times"] = {k: v["times"] for k, v in t.items()}
    del train, main

    result.update(folded_inference_ratio=None, folded_max_abs_diff=None)
    if _COMPARE.value:
        log("inference: unfolded / folded / plain-conv forward ...")
        x = batch[0]
        ws_model = set_skip_gains(build_model(name, seed=seed), 1.0)
        fwd = {"unfolded": ForwardRunner(ws_model, x), "folded": ForwardRunner(fold_ws(ws_model), x)}
        try:
            fwd["plain_conv"] = ForwardRunner(build_model(name, seed=seed, ws=False), x)
        except ValueError as e:
            log(f"no ws=False variant: {e}")
        f = interleaved_medians(fwd, _STEPS.value, _WARMUP.value)
        out_unfolded, out_folded = np.asarray(fwd["unfolded"].out), np.asarray(fwd["folded"].out)
        result.update(
            inference_seconds={k: v["median"] for k, v in f.items()},
            inference_images_per_sec={k: bs / v["median"] for k, v in f.items()},
            folded_inference_ratio=(f["folded"]["median"] / f["plain_conv"]["median"]) if "plain_conv" in f else None,
            folded_inference_ratio_paired=paired_ratio(f, "folded", "plain_conv") if "plain_conv" in f else None,
            folded_vs_unfolded_ratio=f["folded"]["median"] / f["unfolded"]["median"],
            folded_max_abs_diff=float(np.max(np.abs(out_folded - out_unfolded))),
            logits_max_abs=float(np.max(np.abs(out_unfolded))),
        )
    result["peak_rss_bytes_total"] = peak_rss_bytes()
    result["loadavg_end"] = os.getloadavg()[0]
    return result


def run_compile_comparison(names: list[str]) -> dict[str, Any]:
    unknown = [n for n in names if n not in list_models()]
    if unknown:
        raise app.UsageError(f"Unknown model(s) {unknown}")
    jax.jit(lambda a: a + 1).lower(jnp.zeros(3)).compile()  # one-time backend start-up, not per model
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(_COMPILE_REPEATS.value):
        for n in names if r % 2 == 0 else names[::-1]:
            log(f"compiling the {n} train step ...")
            runs[n].append(compile_train_step_abstract(n, _BATCH_SIZE.value, _IMAGE_SIZE.value))
    med = {n: {k: statistics.median(run[k] for run in runs[n]) for k in runs[n][0]} for n in names}
    base = med[names[0]]["compile_seconds"]
    return {
        "image_size": _IMAGE_SIZE.value,
        "batch_size": _BATCH_SIZE.value,
        "repeats": _COMPILE_REPEATS.value,
        "loadavg": os.getloadavg()[0],
        "compile_seconds": {n: med[n]["compile_seconds"] for n in names},
        "lower_seconds": {n: med[n]["lower_seconds"] for n in names},
        "compile_ratio": {n: med[n]["compile_seconds"] / base for n in names},
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_table(result: dict[str, Any]) -> None:
    rows = [(k, v) for k, v in result.items() if not isinstance(v, (dict, list))]
    for k, v in result.items():
        if isinstance(v, dict):
            rows.extend((f"{k}.{kk}", vv) for kk, vv in v.items())
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {_fmt(v)}")


def state_bytes_per_device(name: str, devices: int) -> dict[str, Any]:
    """Per-device bytes of params / optimizer state / EMA, replicated (data=N) vs FSDP (fsdp=N)."""
    from nf.train.optim import LeafInfo, leaf_info, make_optimizer
    from nf.train.sharding import make_mesh, train_state_shardings

    if jax.device_count() != devices:
        raise RuntimeError(f"--fsdp_bytes={devices} needs {devices} devices, found {jax.device_count()}")
    _, variables, _ = abstract_model(lambda: create_model(name))
    params_state = nnx.filter_state(variables, nnx.Param)
    info = leaf_info(params_state)
    params = nnx.to_pure_dict(params_state)
    model_state = nnx.to_pure_dict(nnx.filter_state(variables, nnx.Not(nnx.Param)))
    stack_axes = jax.tree.map(lambda i: i.stack_axes, info, is_leaf=lambda x: isinstance(x, LeafInfo))
    tx = make_optimizer(info, learning_rate=0.1, momentum=0.9, nesterov=True, weight_decay=5e-5)  # NF-ResNet recipe
    trees = {"params": params, "opt_state": jax.eval_shape(tx.init, params), "ema": params}

    def per_device(fsdp: int) -> dict[str, int]:
        shardings = train_state_shardings(make_mesh({"data": -1, "fsdp": fsdp}), tx, params, stack_axes, model_state)
        return {
            part: sum(
                int(np.prod(s.shard_shape(x.shape), dtype=np.int64)) * np.dtype(x.dtype).itemsize
                for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings[part]), strict=True)
            )
            for part, tree in trees.items()
        }

    rep, fsdp = per_device(1), per_device(devices)
    out: dict[str, Any] = {"model": name, "devices": devices}
    for part in trees:
        out[f"{part}_bytes_replicated"] = rep[part]
        out[f"{part}_bytes_fsdp"] = fsdp[part]
    both = ("params", "opt_state")
    out["params_plus_opt_fsdp_over_replicated"] = sum(fsdp[p] for p in both) / sum(rep[p] for p in both)
    out["all_state_fsdp_over_replicated"] = sum(fsdp.values()) / sum(rep.values())
    return out


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _FSDP_BYTES.value:
        # Fake CPU devices; read when the backend starts (nothing above has touched a device).
        flag = f"--xla_force_host_platform_device_count={_FSDP_BYTES.value}"
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}"
        jax.config.update("jax_platforms", "cpu")
        result = state_bytes_per_device(_MODEL.value, _FSDP_BYTES.value)
    elif _COMPILE_ONLY.value:
        result = run_compile_comparison(_COMPILE_ONLY.value)
    else:
        result = run_benchmark()
    if _JSON.value:
        print(json.dumps(result))
    else:
        print_table({k: v for k, v in result.items() if k != "train_step_times"})


if __name__ == "__main__":
    app.run(main)
