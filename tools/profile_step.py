"""Where one train step's time goes: nf's compiled step (XLA:CPU's own per-thunk trace) and,
with --peer=timm, timm's eager step (torch.profiler), in the same categories.

    python tools/profile_step.py --model=nf_resnet50 --image_size=128 --batch_size=16 \
        --peer=timm --peer_python=/work/peer/bin/python

The step, batch, recipe and peer are `tools/benchmark.py`'s (same flags). nf's side traces
`--steps` steps with `jax.profiler.trace` and reads each XLA thunk's duration from the Perfetto
trace; each thunk is put in a category by what its HLO instruction computes (the compiled
module's text): a dot or convolution, or a fusion holding one -> "conv + matmul"; a fusion or op
that reduces -> "reductions"; one that only moves data (concatenate, pad, slice, copy, transpose,
...) -> "data movement"; any other fusion -> "elementwise". Control-flow thunks (while, call) hold
others and are not counted. timm's side is each aten operator's self time under
torch.profiler, in the same categories by operator name, with "optimizer" for the `_foreach_`
updates and the EMA's `lerp_` (nf's optimizer is fused into the step and lands in elementwise /
reductions) and "other" for the autograd engine's and optimizer's own overhead.

The two sides are not the same clock: XLA runs thunks concurrently on its worker threads (their
durations add up to more than the step's wall time), while PyTorch runs one operator at a time
and parallelizes inside it. Compare the shares, and the totals against each side's wall time.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as common
import benchmark as bench
import jax

_TOP = flags.DEFINE_integer("top", 12, "Also list this many of the slowest thunks / operators.")

CATEGORIES = ("conv + matmul", "reductions", "elementwise", "data movement", "optimizer", "other")
MATMUL_OPS = {"dot", "convolution"}
REDUCE_OPS = {"reduce", "reduce-window", "select-and-scatter", "all-reduce", "reduce-precision"}
MOVE_OPS = {
    "concatenate", "copy", "transpose", "pad", "slice", "dynamic-slice", "dynamic-update-slice", "gather",
    "scatter", "broadcast", "reshape", "bitcast", "iota", "reverse", "copy-start", "copy-done", "tuple",
    "get-tuple-element", "parameter", "constant", "bitcast-convert",
}  # fmt: skip
TORCH_MOVES = {
    "copy", "cat", "permute", "clone", "contiguous", "to", "_to_copy", "empty", "zero", "fill", "view", "reshape",
    "pad", "index", "slice", "select", "expand", "transpose", "as_strided", "t", "stack",
}  # fmt: skip
CONTAINER_OPS = {"while", "call", "conditional", "async-start", "async-done"}
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = .*? ([a-z][a-z0-9\-]*)\((.*)$")
_COMP = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+) .*\{\s*$")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)")


_OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_op_names(hlo_text: str) -> dict[str, str]:
    """instruction name -> the JAX operation it came from (its metadata's op_name), where given."""
    out = {}
    for line in hlo_text.splitlines():
        if (m := _INSTR.match(line)) and (op := _OP_NAME.search(line)):
            out[m.group(1)] = op.group(1)
    return out


def hlo_categories(hlo_text: str) -> dict[str, str]:
    """instruction name -> category, for every instruction of a compiled HLO module's text."""
    ops: dict[str, set[str]] = collections.defaultdict(set)  # computation -> opcodes (transitive below)
    calls: dict[str, set[str]] = collections.defaultdict(set)
    instr: dict[str, tuple[str, list[str]]] = {}
    comp = None
    for line in hlo_text.splitlines():
        if (m := _INSTR.match(line)) and comp is not None:
            name, opcode, rest = m.groups()
            called = _CALLS.findall(rest)
            instr[name] = (opcode, called)
            ops[comp].add(opcode)
            calls[comp].update(called)
        elif m := _COMP.match(line):
            comp = m.group(1)

    def contents(c: str, seen: set[str]) -> set[str]:
        out = set(ops.get(c, ()))
        for sub in calls.get(c, ()):
            if sub not in seen:
                seen.add(sub)
                out |= contents(sub, seen)
        return out

    def category(opcode: str, called: list[str]) -> str:
        inner = {opcode}
        for c in called:
            inner |= contents(c, {c})
        if opcode in CONTAINER_OPS:
            return "container"
        if inner & MATMUL_OPS:
            return "conv + matmul"
        if inner & REDUCE_OPS:
            return "reductions"
        if inner <= MOVE_OPS | {"fusion"}:
            return "data movement"
        return "elementwise" if opcode == "fusion" or len(inner) > 0 else "other"

    return {name: category(op, called) for name, (op, called) in instr.items()}


def nf_profile(runner: bench.TrainRunner, steps: int) -> dict:
    """Per-category thunk seconds per step of the compiled train step, and its wall time."""
    hlo = runner.compiled.as_text()
    categories, op_names = hlo_categories(hlo), hlo_op_names(hlo)
    walls = []
    with tempfile.TemporaryDirectory(prefix="nf_profile_") as d:
        with jax.profiler.trace(d, create_perfetto_trace=True):
            for i in range(steps):
                start = time.perf_counter()
                runner(i)
                walls.append(time.perf_counter() - start)
        (trace,) = glob.glob(os.path.join(d, "**", "*.trace.json.gz"), recursive=True)
        with gzip.open(trace) as f:
            events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    per_thunk: dict[str, float] = collections.Counter()
    for e in events:
        name = e["name"]
        if categories.get(name, "container") != "container":
            per_thunk[name] += e["dur"] * 1e-6 / steps
    labelled = {f"{name} [{categories[name]}] {op_names.get(name, '')}": t for name, t in per_thunk.items()}
    return {
        "wall": statistics.median(walls),
        "thunks": labelled,
        "category_of": lambda label: label.split(" [", 1)[1].split("]", 1)[0],
    }


def timm_category(op: str) -> str:
    if not op.startswith("aten::"):  # autograd engine, record_function labels: framework overhead
        return "other"
    name = op.removeprefix("aten::")
    if name.startswith("_foreach") or name == "lerp_":  # SGD's foreach updates, the EMA's lerp
        return "optimizer"
    if any(k in name for k in ("conv", "addmm", "matmul", "linear", "bmm")) or name in ("mm", "mkldnn_matmul"):
        return "conv + matmul"
    if any(k in name for k in ("sum", "mean", "var", "std", "norm", "softmax", "amax", "max", "min", "nll")):
        return "reductions"
    if (
        name in TORCH_MOVES
        or any(name.startswith(m + "_") for m in TORCH_MOVES)
        or name.startswith(("empty", "constant_pad"))
    ):
        return "data movement"
    return "elementwise"


def summarize(per_item: dict[str, float], category_of, wall: float) -> dict:
    totals = collections.Counter()
    for name, seconds in per_item.items():
        totals[category_of(name)] += seconds
    total = sum(totals.values())
    return {
        "wall_seconds": wall,
        "op_seconds": total,
        "categories": {c: {"seconds": totals[c], "share": totals[c] / total if total else 0.0} for c in CATEGORIES},
        "top": sorted(per_item.items(), key=lambda kv: -kv[1])[: _TOP.value],
    }


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = common.benchmark_config()
    task = common.make_task(config)
    bs, size = config.batch_size, config.data.image_size
    batch = task.synthetic_batch(bs, size, common.in_channels(task), bench.SEED.value)
    common.log(f"compiling the {config.model.name} train step ...")
    runner = bench.TrainRunner(config, batch)
    for i in range(bench.WARMUP.value):
        runner(i)
    prof = nf_profile(runner, bench.STEPS.value)
    result = {
        "model": config.model.name,
        "image_size": size,
        "batch_size": bs,
        "loadavg": os.getloadavg()[0],
        "nf": summarize(prof["thunks"], prof["category_of"], prof["wall"]),
    }
    if bench.PEER.value:
        with tempfile.TemporaryDirectory(prefix="nf_peer_batch_") as d:
            import numpy as np

            for k, v in batch.items():
                np.save(os.path.join(d, f"{k}.npy"), v)
            peer = bench.Peer(bench.peer_python(), bench.peer_setup(config, d, task.num_classes))
            try:
                for _ in range(bench.WARMUP.value):
                    peer.ask({"cmd": "train"})
                reply = peer.ask({"cmd": "profile", "steps": bench.STEPS.value})
            finally:
                peer.close()
        result["timm"] = summarize(reply["ops"], timm_category, reply["wall_seconds"])
        result["timm"]["model"] = peer.info["model"]
    if common.JSON.value:
        print(json.dumps(result))
        return
    sides = [s for s in ("nf", "timm") if s in result]
    print(f"{result['model']} {size} px, batch {bs}, load {result['loadavg']:.1f}: seconds per step (share)")
    print(f"{'':16}" + "".join(f"{s:>22}" for s in sides))
    for c in CATEGORIES:
        cells = [result[s]["categories"][c] for s in sides]
        print(f"{c:16}" + "".join(f"{x['seconds']:>13.3f} ({x['share']:5.1%})" for x in cells))
    print(f"{'sum of ops':16}" + "".join(f"{result[s]['op_seconds']:>22.3f}" for s in sides))
    print(f"{'wall':16}" + "".join(f"{result[s]['wall_seconds']:>22.3f}" for s in sides))
    for s in sides:
        print(f"\nslowest of {s}:")
        for name, seconds in result[s]["top"]:
            print(f"  {seconds * 1e3:8.1f} ms  {name}")


if __name__ == "__main__":
    app.run(main)
