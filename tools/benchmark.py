"""Training / inference throughput of the trainer's own step on this machine, against its matmul
peak, and side by side with timm.

    python tools/benchmark.py --model=nf_resnet50 --image_size=128 --batch_size=16 --json
    python tools/benchmark.py --config=configs/nfnet_imagenet.py:f0 --batch_size=16 --image_size=192
    python tools/benchmark.py --task=segmentation --model=nf_resnet50 --image_size=128 --batch_size=16
    python tools/benchmark.py --model=nf_resnet50 --peer=timm --peer_python=/work/peer/bin/python

The step is `nf-train`'s: `nf.train.trainer.setup_training` builds the model (through the task),
the optimizer recipe of the config (AGC when `optimizer.agc_clip` > 0, masked weight decay, SGD
with Nesterov momentum on the warmup + cosine schedule), the parameter EMA, the FSDP/data
shardings of `config.mesh` and the jitted step that donates the state. The config is
`--config=configs/x.py` (its values; --model/--image_size/--batch_size/--task override when
given) or, by default, the quickstart recipe (`configs/quickstart.py`: SGD-Nesterov 0.9, weight
decay 5e-5, label smoothing 0.1, EMA 0.99, no AGC) on --model with the registry's defaults. The
batch is the task's `synthetic_batch` (`nf.tasks.Task`).

One process measures:
  (a) the matmul peak: median FLOP/s of a jitted 2048^3 float32 matmul, timed in the same
      interleaved rounds as the train steps (so under the same machine load);
  (b) the train step: compile time, median step time, images/s, model FLOPs per step (XLA cost
      analysis with scans unrolled, see nf.models.stats), achieved FLOP/s and the fraction of
      the matmul peak, peak RSS and XLA's memory analysis;
  (c) Scaled WS overhead: the same step with `model.ws=False` (plain He-init convs);
  (d) inference: folded-WS forward vs the unfolded one vs the plain-conv network;
  (e) NF vs BN: the same step with the model's `bn_` counterpart;
  (f) with --peer=timm: timm's matching model (`PEER_MODELS`) in another Python (--peer_python or
      $NF_PEER_PYTHON; a virtualenv with torch and timm, never a dependency of nf) driven by
      tools/peer_timm.py over a pipe: its train step (same batch, SGD-Nesterov with the same lr,
      momentum, weight decay on the same kinds of tensors, label smoothing, EMA; AGC on both
      sides exactly when the config enables it) and its eval-mode forward under
      torch.inference_mode, in the same rounds as nf's, on as many threads as XLA uses. Both
      medians, the nf/timm throughput ratios, each process's peak RSS, and the conv + matmul
      FLOPs of one forward of each model (timm's nf_resnet50 / nf_regnet_b0 are not the
      papers' architectures) are reported. Build the peer environment with
          python3 -m venv peer && peer/bin/pip install torch==2.13.0 timm \
              --extra-index-url https://download.pytorch.org/whl/cpu
Compared variants are timed in interleaved rounds (A B C, C B A, ...), so load on the machine
affects them alike; every reported time is a median. The config flags (--config, --model,
--task, --image_size, --batch_size, --dtype, --json) are tools/bench_common.py's, shared with
tools/compile_time.py (compile seconds of several models' steps) and tools/state_bytes.py
(per-device state bytes, replicated vs FSDP).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

import bench_common as common
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from flax import nnx

from nf.layers import SkipGain
from nf.models import inference_copy, list_models, unstack_blocks
from nf.models.stats import forward_macs, xla_flops
from nf.train.host_memory import peak_rss_bytes, release_freed_memory, reset_peak_rss, rss_bytes
from nf.train.sharding import batch_sharding, make_mesh
from nf.train.trainer import TrainSetup, setup_training

PEER_SCRIPT = os.path.join(common.TOOLS, "peer_timm.py")
PEER_MODELS = {"nf_resnet50": "nf_resnet50", "nf_regnet_b0": "nf_regnet_b0", "nfnet_f0": "dm_nfnet_f0"}

STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (rounds) per variant.")
WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps per variant before timing.")
SEED = flags.DEFINE_integer("seed", 0, "Seed of the synthetic batch (the parameters use config.seed).")
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
PEER = flags.DEFINE_enum("peer", None, ["timm"], "Also time the matching timm model side by side.")
_PEER_PYTHON = flags.DEFINE_string(
    "peer_python", None, "Python of the peer environment (torch + timm); default $NF_PEER_PYTHON."
)
_PEER_MODEL = flags.DEFINE_string("peer_model", None, "timm model name (default: PEER_MODELS[--model]).")


# ----------------------------------------------------------------------------- measurement helpers


def peak_device_bytes() -> int | None:
    """Peak bytes in use on the first accelerator (None on the CPU, whose RSS is the measure)."""
    if jax.default_backend() == "cpu":
        return None
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def interleaved_medians(fns: dict[str, Callable[[int], Any]], steps: int, warmup: int) -> dict[str, dict]:
    """Median wall time of each `fn(step)` (which must block until done), timed in rounds that
    alternate the order A B C / C B A so drifting machine load affects all variants alike. A `fn`
    that returns a number reports its own seconds (a peer process timing itself, without the pipe)."""
    names = list(fns)
    for name in names:
        for i in range(warmup):
            fns[name](i)
    times = {name: [] for name in names}
    for r in range(steps):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            own = fns[name](warmup + r)
            times[name].append(float(own) if isinstance(own, (int, float)) else time.perf_counter() - start)
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


# ----------------------------------------------------------------------------- config and train step


class TrainRunner:
    """`nf-train`'s compiled step (`setup_training`) with its own donated, updated-in-place state."""

    def __init__(self, config: ml_collections.ConfigDict, batch: dict[str, np.ndarray]):
        mesh = make_mesh(config.mesh)
        self.setup: TrainSetup = setup_training(config, common.make_task(config), mesh)
        shard = batch_sharding(mesh)
        self.batch = {k: jax.make_array_from_process_local_data(shard, v) for k, v in batch.items()}
        self.state, self.counters = self.setup.state, self.setup.counters
        start = time.perf_counter()
        lowered = self.setup.train_step.lower(self.state, self.batch, self.counters)
        self.lower_seconds = time.perf_counter() - start
        self.compiled = lowered.compile()
        self.compile_seconds = time.perf_counter() - start  # lower + compile
        self.memory = memory_stats(self.compiled)
        self.metrics = None

    def __call__(self, step: int) -> None:
        out = jax.block_until_ready(self.compiled(self.state, self.batch, self.counters))
        self.state, self.metrics, self.counters = out

    def model_flops(self, method: str) -> dict[str, float]:
        """FLOPs per step with every block counted (see --flops_cost)."""
        specs = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), (self.state, self.batch))
        step_fn = self.setup.step_fn
        cost = self.compiled.cost_analysis()
        out = {
            "executed_compiled": float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]),
            "lowered_unrolled": xla_flops(step_fn, *specs, compiled=False, unroll=True),
        }
        if method == "corrected":
            out["lowered_scanned"] = xla_flops(step_fn, *specs, compiled=False, unroll=False)
            out["model"] = out["executed_compiled"] + out["lowered_unrolled"] - out["lowered_scanned"]
        elif method == "compiled":
            out["model"] = out["compiled_unrolled"] = xla_flops(step_fn, *specs, compiled=True, unroll=True)
        else:
            out["model"] = out["lowered_unrolled"]
        return out


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


# ----------------------------------------------------------------------------- the timm peer


class Peer:
    """tools/peer_timm.py in another Python: one JSON request per line on its stdin, one JSON
    reply per line on its stdout (its stderr passes through)."""

    def __init__(self, python: str, setup: dict[str, Any]):
        self.proc = subprocess.Popen(
            [python, PEER_SCRIPT], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.info = self.ask({"cmd": "setup", **setup})

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{PEER_SCRIPT} exited (code {self.proc.wait()}) on {request['cmd']!r}; see its stderr.")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"{PEER_SCRIPT} failed on {request['cmd']!r}: {reply['error']}")
        return reply

    def runner(self, cmd: str) -> Callable[[int], float]:
        return lambda step: self.ask({"cmd": cmd})["seconds"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.ask({"cmd": "quit"})
            self.proc.wait(timeout=60)


def peer_python() -> str:
    python = _PEER_PYTHON.value or os.environ.get("NF_PEER_PYTHON")
    if not python:
        raise app.UsageError("--peer=timm needs --peer_python=PATH (or $NF_PEER_PYTHON): a Python with torch and timm.")
    python = shutil.which(python) or python  # a bare name is looked up on PATH
    if not os.path.exists(python):
        raise app.UsageError(f"--peer_python={python} does not exist; build it with the command in this docstring.")
    return python


def peer_setup(config: ml_collections.ConfigDict, batch_dir: str, num_classes: int) -> dict[str, Any]:
    """What tools/peer_timm.py needs to build the matching timm model and optimizer."""
    name = _PEER_MODEL.value or PEER_MODELS.get(config.model.name)
    if name is None:
        raise app.UsageError(
            f"No timm counterpart of {config.model.name!r} in PEER_MODELS {sorted(PEER_MODELS)}; pass --peer_model."
        )
    opt = config.optimizer
    return {
        "model": name,
        "num_classes": num_classes,
        "batch_dir": batch_dir,
        "threads": len(os.sched_getaffinity(0)),  # XLA:CPU's thread pool spans the process's cores
        "lr": float(opt.lr),
        "momentum": float(opt.momentum),
        "nesterov": bool(opt.nesterov),
        "weight_decay": float(opt.weight_decay),
        "label_smoothing": float(opt.get("label_smoothing", 0.0)),
        "agc_clip": float(opt.get("agc_clip") or 0.0),
        "ema_decay": float(opt.ema_decay),
        "seed": int(config.seed),
        # The config's regularizers, so both steps do the same work (timm: dropout before the
        # classifier, per-sample stochastic depth on the residual branches).
        "drop_rate": float(config.model.get("dropout", 0.0)),
        "drop_path_rate": float(config.model.get("stochastic_depth", 0.0)),
        # On a GPU timm runs there too (channels-last), with AMP when nf runs bfloat16; PyTorch has
        # no TPU device here, so anything but a GPU keeps timm on the CPU.
        "device": "cuda" if jax.default_backend() == "gpu" else "cpu",
        "amp": config.model.get("dtype", "") == "bfloat16",
    }


# ----------------------------------------------------------------------------- main


def run_benchmark() -> dict[str, Any]:
    config = common.benchmark_config()
    name, size, bs = config.model.name, config.data.image_size, config.batch_size
    task = common.make_task(config)
    result: dict[str, Any] = {
        "model": name,
        "task": task.name,
        "image_size": size,
        "batch_size": bs,
        "steps": STEPS.value,
        "warmup": WARMUP.value,
        "optimizer": config.optimizer.to_dict(),
        "jax_version": jax.__version__,
        "device": str(jax.devices()[0].device_kind),
        "model_dtype": config.model.get("dtype", "") or "float32",
        "cpu_count": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0],
    }
    common.log("matmul peak ...")
    result["matmul_peak_flops_start"] = matmul_peak_flops(_MATMUL_SIZE.value, _MATMUL_REPEATS.value)

    channels = common.in_channels(task)
    batch = task.synthetic_batch(bs, size, channels, SEED.value)
    common.log(f"compiling the {name} train step ...")
    main = TrainRunner(config, batch)
    result["compile_seconds"] = main.compile_seconds
    result["lower_seconds"] = main.lower_seconds
    for i in range(WARMUP.value):
        main(i)
    result["peak_rss_bytes_with_compile"] = peak_rss_bytes()  # the main step compiled and run
    release_freed_memory()  # as the trainer does after its first step
    result["rss_bytes_after_compile"] = rss_bytes()
    result["memory_analysis"] = main.memory
    result["compiled_temp_plus_argument_bytes"] = main.memory["temp_plus_argument_bytes"]
    common.log("model FLOPs (cost analysis, scans unrolled) ...")
    try:
        flops = main.model_flops(_FLOPS_COST.value)
        result["model_flops_method"] = _FLOPS_COST.value
    except RuntimeError as e:  # some backends give no cost analysis of the lowered module
        common.log(f"{e}; counting 3 x the forward's conv + matmul FLOPs instead")
        fwd = 2.0 * forward_macs(task.build_model, size, in_channels=channels) * bs
        flops = {"model": 3.0 * fwd}
        result["model_flops_method"] = "3x_forward_conv_matmul"
    result["model_flops_per_step"] = flops.pop("model")
    result["flops_analyses"] = flops  # executed_compiled counts each scan body once

    train: dict[str, Callable[[int], Any]] = {"nf": main}
    bn_name = bn_counterpart(name) if _COMPARE.value else None
    if _COMPARE.value:
        common.log("compiling the ws=False train step ...")
        try:
            train["plain"] = TrainRunner(common.variant(config, ws=False), batch)
        except (TypeError, ValueError) as e:  # a model without the ws option
            common.log(f"no ws=False variant: {e}")
        if bn_name:
            common.log(f"compiling the {bn_name} train step ...")
            try:
                train["bn"] = TrainRunner(common.variant(config, name=bn_name), batch)
            except (TypeError, ValueError) as e:  # config.model options the BN network lacks
                common.log(f"no {bn_name} variant: {e}")
    peer, batch_dir = None, None
    if PEER.value:
        python = peer_python()
        batch_dir = tempfile.TemporaryDirectory(prefix="nf_peer_batch_")
        for k, v in batch.items():  # the same batch, read by the peer with np.load (no pickle)
            np.save(os.path.join(batch_dir.name, f"{k}.npy"), v)
        common.log(f"starting the timm peer ({python}) ...")
        peer = Peer(python, peer_setup(config, batch_dir.name, task.num_classes))
        result["peer"] = {k: v for k, v in peer.info.items() if k != "ok"}
        result["forward_flops_conv_matmul"] = 2.0 * forward_macs(task.build_model, size, in_channels=channels)
        train["timm"] = peer.runner("train")
    try:
        _time_train(result, train, main, bs, peer)
        del train, main
        _time_inference(result, config, batch["image"], bs, peer)
    finally:
        if peer is not None:
            peer.close()
            batch_dir.cleanup()
    result["peak_rss_bytes_since_compile"] = peak_rss_bytes()  # train rounds + inference
    result["peak_device_bytes"] = peak_device_bytes()
    result["loadavg_end"] = os.getloadavg()[0]
    return result


def _time_train(result: dict, train: dict, main: TrainRunner, bs: int, peer: Peer | None) -> None:
    # The matmul probe runs in the same rounds, so the peak is measured under the same load.
    probe = MatmulProbe(_MATMUL_SIZE.value, _MATMUL_ROUND_REPEATS.value)
    common.log(f"timing train steps {list(train)} (+ matmul probe) ...")
    # Peak memory of the steps themselves (compiling is over): both processes restart their peak.
    release_freed_memory()
    result["peak_rss_reset"] = reset_peak_rss() and (peer is None or peer.ask({"cmd": "reset_rss"})["ok"])
    t = interleaved_medians({**train, "matmul": probe}, STEPS.value, WARMUP.value)
    # nf's includes every compared variant's state (--compare): use --compare=false to set it
    # against timm's.
    result["train_peak_rss_bytes"] = peak_rss_bytes()
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
        final_loss=float(main.metrics["loss"]),
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
    result["bn_model"] = bn_counterpart(result["model"]) if "bn" in t else None
    result["bn_step_seconds"] = t["bn"]["median"] if "bn" in t else None
    result["bn_compile_seconds"] = train["bn"].compile_seconds if "bn" in t else None
    result["nf_vs_bn_step_ratio"] = t["nf"]["median"] / t["bn"]["median"] if "bn" in t else None
    result["nf_vs_bn_step_ratio_paired"] = paired_ratio(t, "nf", "bn") if "bn" in t else None
    if peer is not None:
        result["timm_train_step_seconds"] = t["timm"]["median"]
        result["timm_train_images_per_sec"] = bs / t["timm"]["median"]
        # throughput ratio nf / timm = timm's step time / nf's
        result["nf_over_timm_train"] = t["timm"]["median"] / t["nf"]["median"]
        result["nf_over_timm_train_paired"] = 1.0 / paired_ratio(t, "nf", "timm")
        rss = peer.ask({"cmd": "rss"})
        result["timm_peak_rss_bytes_train"] = rss["peak_rss_bytes"]
        if "peak_device_bytes" in rss:
            result["timm_peak_device_bytes_train"] = rss["peak_device_bytes"]
    result["train_step_times"] = {k: v["times"] for k, v in t.items()}


def _time_inference(result: dict, config, x: np.ndarray, bs: int, peer: Peer | None) -> None:
    result.update(folded_inference_ratio=None, folded_max_abs_diff=None)
    if not (_COMPARE.value or peer is not None):
        return
    common.log("inference: unfolded / folded / plain-conv forward ...")
    x = jnp.asarray(x)
    ws_model = set_skip_gains(common.make_task(config).build_model(), 1.0)
    # Short stages unstacked in all three (`unstack_blocks`), so they differ only in the WS.
    fwd: dict[str, Callable[[int], Any]] = {"folded": ForwardRunner(inference_copy(ws_model), x)}
    if _COMPARE.value:
        fwd["unfolded"] = ForwardRunner(unstack_blocks(ws_model), x)
        try:
            fwd["plain_conv"] = ForwardRunner(
                unstack_blocks(common.make_task(common.variant(config, ws=False)).build_model()), x
            )
        except (TypeError, ValueError) as e:
            common.log(f"no ws=False variant: {e}")
    if peer is not None:
        fwd["timm"] = peer.runner("infer")
    f = interleaved_medians(fwd, STEPS.value, WARMUP.value)
    result.update(
        inference_seconds={k: v["median"] for k, v in f.items()},
        inference_images_per_sec={k: bs / v["median"] for k, v in f.items()},
    )
    if "plain_conv" in f:
        result["folded_inference_ratio"] = f["folded"]["median"] / f["plain_conv"]["median"]
        result["folded_inference_ratio_paired"] = paired_ratio(f, "folded", "plain_conv")
    if "unfolded" in f:
        out_unfolded, out_folded = np.asarray(fwd["unfolded"].out), np.asarray(fwd["folded"].out)
        result.update(
            folded_vs_unfolded_ratio=f["folded"]["median"] / f["unfolded"]["median"],
            folded_max_abs_diff=float(np.max(np.abs(out_folded - out_unfolded))),
            logits_max_abs=float(np.max(np.abs(out_unfolded))),
        )
    if peer is not None:
        result["nf_over_timm_inference"] = f["timm"]["median"] / f["folded"]["median"]
        result["nf_over_timm_inference_paired"] = 1.0 / paired_ratio(f, "folded", "timm")
        result["timm_peak_rss_bytes_since_setup"] = peer.ask({"cmd": "rss"})["peak_rss_bytes"]


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if PEER.value:
        peer_python()  # fail before compiling anything
    common.emit(run_benchmark(), hide=("train_step_times",))


if __name__ == "__main__":
    app.run(main)
