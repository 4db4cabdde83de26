"""The TPU plan table of every ImageNet recipe (issue: pod-ready without a pod), made with `nf.plan`.

Part `v3`: each recipe on v3-32 at 32 images per TensorCore (global batch 1024) at its train
resolution, bf16, beside DeepMind's published TPUv3 train step times at that setting (NFNet paper:
32 TPUv3 cores, 32 images per core, bf16); a recipe that does not fit as is is compiled again
with each of `LEANER` (remat, then remat with FSDP, then with accumulation too) until one fits.
Part `generations`: each recipe at its own global batch (4096 NFNets, 1024 NF-ResNet-50 and
NF-RegNets) on the smallest v4, v5p, v5e and v6e slice where it fits as is, else with the first of
`LEANER` that fits some slice (`smallest_fit`; smaller slices fit with the accumulation or remat
`nf-plan` suggests).

    nice python tools/plan_table.py --part=v3 --out=tools/results/tpu_plan_v3_32.json
    nice python tools/plan_table.py --part=generations --out=tools/results/tpu_plan_generations.json
    python tools/plan_table.py --markdown=docs/tpu_plan.md   # from the result files

Rows are appended to `--out` as each finishes (a long run can be stopped and resumed: rows already
there are skipped). Compiles are CPU-heavy (NFNet-F0 on v3-32: ~2 minutes on an idle 2-core machine).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECIPES = ("nf_resnet50", *(f"nf_regnet_b{i}" for i in range(6)), *(f"nfnet_f{i}" for i in range(8)))
# NFNet paper (Brock et al. 2021), Table 3 / its training-speed figure: train step time in ms on
# 32 TPUv3 cores at 32 images per core, bf16.
DEEPMIND_TPUV3_STEP_MS = {"nfnet_f0": 73.3, "nfnet_f1": 158.5, "nfnet_f2": 295.8, "nfnet_f3": 532.2,
                          "nfnet_f4": 1033.3, "nfnet_f5": 1398.5}  # fmt: skip
V3_TOPOLOGY, V3_IMAGES_PER_CORE = "v3-32", 32
GENERATION_NAMES = ("v4", "v5p", "v5e", "v6e")

_PART = flags.DEFINE_enum("part", None, ["v3", "generations"], "Which table to measure.")
_OUT = flags.DEFINE_string("out", None, "Result JSON (rows appended as they finish).")
_MODELS = flags.DEFINE_list("models", list(RECIPES), "Recipes, in order (smallest first).")
_GENERATIONS = flags.DEFINE_list("generations", list(GENERATION_NAMES), "Generations of part `generations`.")
_MARKDOWN = flags.DEFINE_string("markdown", None, "Write the markdown page from the result files.")
_COST = flags.DEFINE_enum("cost", "unrolled", ["unrolled", "per_block"], "nf.plan.planner.plan's cost method.")
_RECOMPILE_REMAT = flags.DEFINE_bool(
    "recompile_remat",
    False,
    "Compile every row measured with remat again at its slice and setting (before commit aa90593 the "
    "per-block and unrolled costs left out the rematerialized blocks' recomputation).",
)
V3_RESULT = "tools/results/tpu_plan_v3_32.json"
_RESULTS = flags.DEFINE_list(
    "results",
    [V3_RESULT, "tools/results/tpu_plan_generations.json"],
    "Result files the markdown page reads.",
)


def recipe(model: str):
    from nf.train import recipes

    if model.startswith("nfnet_"):
        return recipes.nfnet_imagenet(model.removeprefix("nfnet_"))
    if model.startswith("nf_regnet_"):
        return recipes.nf_regnet_imagenet(model.removeprefix("nf_regnet_"))
    return recipes.resnet_imagenet(model, regularized=True)


def v3_config(model: str):
    """The recipe at DeepMind's timing setting: 32 images per v3 core, bf16, no accumulation."""
    from nf.plan.planner import _with
    from nf.plan.tpus import parse_slice

    batch = parse_slice(V3_TOPOLOGY).devices * V3_IMAGES_PER_CORE
    return _with(recipe(model), {"batch_size": batch, "model.dtype": "bfloat16", "optimizer.accum_steps": 1})


def run_info() -> dict:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    import jax
    import libtpu

    return {
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "command": "python tools/plan_table.py " + " ".join(sys.argv[1:]),
        "jax": jax.__version__,
        "libtpu": getattr(libtpu, "__version__", "?"),
    }


def _load(path: str) -> dict:
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {"runs": [], "rows": []}


def _save(path: str, data: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _summary(plan: dict) -> dict:
    keep = ("topology", "devices", "chips", "hosts", "mesh", "batch_size", "accum_steps", "remat", "dtype",
            "image_size", "fits", "margin_bytes", "hbm_bytes", "state_bytes_per_device", "eval_hbm_bytes",
            "flops_per_device", "bytes_accessed_per_device", "collectives", "roofline_bound",
            "roofline_step_seconds", "roofline_images_per_second_per_chip", "host_images_per_second_needed",
            "compile_seconds", "compile_error", "suggestions", "cost_counts_loops_once", "cost_method",
            "host_input")  # fmt: skip
    return {k: plan.get(k) for k in keep}


def measure_v3(out: str, models: list[str]) -> None:
    """Each recipe as is; one that does not fit is compiled again with each of `LEANER` in turn
    until one fits (`leaner`): the settings that bring the deep NFNets to DeepMind's timing setting."""
    from nf.plan.planner import _with, plan

    data = _load(out)
    data["runs"].append(run_info() | {"loadavg": os.getloadavg()})
    rows = {r["model"]: r for r in data["rows"]}
    for model in models:
        row = rows.get(model)
        if row is None:
            result = plan(v3_config(model), V3_TOPOLOGY, search=False, cost=_COST.value)
            row = {"model": model, "deepmind_step_ms": DEEPMIND_TPUV3_STEP_MS.get(model)} | _summary(result)
            row["loadavg_end"] = os.getloadavg()
            data["rows"].append(row)
            _save(out, data)
        leaner = row.setdefault("leaner", []) if not row["fits"] else []
        for setting in LEANER[len(leaner) :]:
            if leaner and leaner[-1]["fits"]:
                break
            result = plan(_with(v3_config(model), setting), V3_TOPOLOGY, search=False, cost=_COST.value)
            leaner.append(_summary(result) | {"setting": setting, "loadavg_end": os.getloadavg()})
            _save(out, data)
        print(json.dumps({"model": model, "fits": row["fits"], "leaner": [t["fits"] for t in leaner]}))


REMAT = {"model.remat": "block"}
# Tried in turn for a recipe that does not fit as is (on v3-32; on every slice of a generation),
# all the same math: activations recomputed, then the state sharded too, then the batch in two
# accumulated halves (no batch statistics: the mean gradient is the same).
LEANER = (
    REMAT,
    *(REMAT | {"mesh.fsdp": f, "mesh.data": -1} for f in (2, 8)),
    REMAT | {"mesh.fsdp": 8, "mesh.data": -1, "optimizer.accum_steps": 2},
)
V3_REMAT_RESULT = "tools/results/tpu_plan_f3_remat_v3_32.json"  # NFNet-F3 on v3-32 with REMAT


def remat_ratio() -> float | None:
    """Non-state HBM with REMAT over without, from NFNet-F3's two v3-32 compiles (0.18): only to
    choose where a REMAT search starts."""
    path, v3 = REPO / V3_REMAT_RESULT, {r["model"]: r for r in _load(str(REPO / V3_RESULT))["rows"]}
    if not path.exists() or "nfnet_f3" not in v3:
        return None
    remat, plain = json.loads(path.read_text())["plan"], v3["nfnet_f3"]
    state = plain["state_bytes_per_device"]
    return (remat["hbm_bytes"]["total"] - state) / (plain["hbm_bytes"]["total"] - state)


def predicted_bytes(v3_row: dict | None, activation_ratio: float | None = 1.0, fsdp: int = 1):
    """Per-device HBM at `b` images per device, extrapolated from the recipe's v3-32 compile (the
    state stays, divided by the `fsdp` size; the rest scales with the images, times
    `activation_ratio` for a setting that shrinks the activations): only to choose where the
    search starts."""
    if not v3_row or not v3_row.get("state_bytes_per_device") or activation_ratio is None:
        return None
    state, total = v3_row["state_bytes_per_device"], v3_row["hbm_bytes"]["total"]
    return lambda b: state / fsdp + (total - state) * activation_ratio * b / V3_IMAGES_PER_CORE


def smallest_fit(model: str, generation: str, v3_row: dict | None) -> dict:
    """The smallest slice of `generation` where the recipe's global batch fits as is (no
    accumulation, no remat: one pass over the batch per step), else with the first of `LEANER`
    that fits some slice, found by compiling (`_search`); the row's `setting` says which. A
    setting the v3-32 prediction puts over 150 % of the largest slice's HBM is not compiled."""
    from nf.plan.planner import _with
    from nf.plan.tpus import SLICE_SIZES, parse_slice

    row = {"model": model, "generation": generation, "tried": []}
    for setting in ({}, *LEANER):
        config = _with(recipe(model), setting)
        ratio = remat_ratio() if setting else 1.0
        slices = [parse_slice(f"{generation}-{n}") for n in SLICE_SIZES[generation]]
        slices = [
            t for t in slices if config.batch_size % t.devices == 0 and t.devices % setting.get("mesh.fsdp", 1) == 0
        ]
        tried, found = _search(config, slices, predicted_bytes(v3_row, ratio, setting.get("mesh.fsdp", 1)))
        row["tried"] += [t | {"setting": setting} for t in tried] if setting else tried
        if found:
            return row | {"setting": setting} | _summary(found)
    return row | {"fits": False}


def _search(config, slices: list, predict) -> tuple[list[dict], dict | None]:
    """Compile upward from the smallest slice `predict` puts within 150 % of its HBM until one fits
    (the prediction is linear in the images; near the limit XLA rematerializes, so it overstates).
    The slice below that start is recorded as predicted over 150 %. With every slice predicted over
    150 %, nothing is compiled; without a prediction, the search starts at the smallest slice."""
    from nf.plan.planner import plan

    def predicted(t):
        return None if predict is None else predict(config.batch_size / t.devices)

    within = [i for i, t in enumerate(slices) if predict is None or predicted(t) <= 1.5 * t.hbm_bytes_per_device]
    if not within:
        return [{"topology": slices[-1].name, "fits": False, "predicted_hbm_total": predicted(slices[-1])}], None
    tried = []
    if within[0] > 0:
        below = slices[within[0] - 1]
        tried.append({"topology": below.name, "fits": False, "predicted_hbm_total": predicted(below)})
    for t in slices[within[0] :]:
        result = plan(config, t.name, search=False, cost=_COST.value)
        tried.append({"topology": t.name, "fits": result["fits"], "hbm_total": result["hbm_bytes"]["total"]})
        if result["fits"]:
            return tried, result
    return tried, None


def recompile_remat(out: str, models: list[str]) -> None:
    """Each fitting row (or v3-32 `leaner` entry) of `models` whose setting has remat, compiled
    again at its slice and setting; the row's other keys (`tried`) stay. Rows compiled since stay."""
    from nf.plan.planner import _with, plan

    data = _load(out)
    data["runs"].append(run_info() | {"loadavg": os.getloadavg(), "recompiled": "remat rows"})
    since = data["runs"][-1]["commit"]
    for row in data["rows"]:
        if row["model"] not in models:
            continue
        entries = [row] if "generation" in row else [e for e in row.get("leaner", []) if e["fits"]]
        for entry in entries:
            setting = entry.get("setting") or {}
            if "model.remat" not in setting or entry.get("recompiled_at") == since:
                continue
            base = recipe(row["model"]) if "generation" in row else v3_config(row["model"])
            result = plan(_with(base, setting), entry["topology"], search=False, cost=_COST.value)
            entry.update(_summary(result) | {"recompiled_at": since, "loadavg_end": os.getloadavg()})
            _save(out, data)
            print(json.dumps({"model": row["model"], "topology": entry["topology"], "setting": setting}))


def measure_generations(out: str, models: list[str], generations: list[str]) -> None:
    data = _load(out)
    data["runs"].append(run_info() | {"loadavg": os.getloadavg()})
    done = {(r["model"], r["generation"]) for r in data["rows"]}
    v3_rows = {r["model"]: r for r in _load(str(REPO / V3_RESULT))["rows"]}
    for model in models:
        for generation in generations:
            if (model, generation) in done:
                continue
            row = smallest_fit(model, generation, v3_rows.get(model)) | {"loadavg_end": os.getloadavg()}
            data["rows"].append(row)
            _save(out, data)
            print(json.dumps({k: row.get(k) for k in ("model", "generation", "topology", "fits", "tried")}))


def _setting_label(setting: dict) -> str:
    """`remat`, `remat, FSDP 2`: a `LEANER` setting in the table's words."""
    words = []
    if "model.remat" in setting:
        words.append("remat")
    if "mesh.fsdp" in setting:
        words.append(f"FSDP {setting['mesh.fsdp']}")
    if "optimizer.accum_steps" in setting:
        words.append(f"{setting['optimizer.accum_steps']} accumulated")
    return ", ".join(words)


def _setting_flags(setting: dict | None) -> str:
    """A setting as the `--config.` overrides that reproduce it, without the prefix."""
    return " ".join(f"{k}={v}" for k, v in (setting or {}).items())


def _gib(n) -> str:
    return "–" if n is None else f"{n / 2**30:.2f}"


def _v3_line(name: str, r: dict, dm: float | None) -> str:
    """One row of the v3-32 table (`r`: a plan summary; `dm`: DeepMind's measured step ms)."""
    bound = r["roofline_step_seconds"]
    if not bound:
        hbm = _gib(r["hbm_bytes"]["total"])
        return f"| {name} | {r['image_size']} | NO | {hbm} | – | – | – | – | {dm or '–'} | – | – |"
    ratio = f"{dm / (bound * 1e3):.2f}" if dm else "–"
    ev = (r.get("eval_hbm_bytes") or {}).get("total_with_train_state")
    return (
        f"| {name} | {r['image_size']} | {'yes' if r['fits'] else 'NO'} | {_gib(r['hbm_bytes']['total'])} | "
        f"{_gib(ev)} | {(r['flops_per_device'] or 0) / 1e12:.3f} | {(r['bytes_accessed_per_device'] or 0) / 1e9:.2f} | "
        f"{bound * 1e3:.1f} ({r['roofline_bound']}) | {dm or '–'} | {ratio} | "
        f"{sum((r.get('compile_seconds') or {}).values()):.0f}"
        f"{' (per block)' if r.get('cost_method') == 'per_block' else ''} |"
    )


def _leaner_bullet(paths: list[str]) -> list[str]:
    """The v3-32 recipes that fit only leaner (`LEANER`), in words, from the v3 result file."""
    rows = next((d["rows"] for d in map(_load, paths) if d["rows"] and "generation" not in d["rows"][0]), [])
    lean = [(r, next(t for t in r["leaner"] if t["fits"])) for r in rows if any(t["fits"] for t in r.get("leaner", []))]
    if not lean:
        return []

    def ratio(r, t):
        return r["deepmind_step_ms"] / (t["roofline_step_seconds"] * 1e3) if r.get("deepmind_step_ms") else None

    asked = [r["hbm_bytes"]["total"] / 2**30 for r, _ in lean]
    plain = [x for r in rows if r["fits"] and (x := ratio(r, r))]
    lines = [
        f"- {', '.join(r['model'] for r, _ in lean)} do not fit a v3 core's 16 GiB at 32 images per core",
        f"  as is (XLA asks for {min(asked):.0f} to {max(asked):.0f} GiB); DeepMind's published step times at",
        "  that setting imply a leaner step. The same math fits with (remat: `--config.model.remat=block`;",
        "  FSDP: `--config.mesh.fsdp`; accumulated: `--config.optimizer.accum_steps`):",
    ]
    for r, t in lean:
        dm = ratio(r, t)
        lines.append(
            f"  - {r['model']}: {_setting_label(t['setting'])}, {_gib(t['hbm_bytes']['total'])} GiB per core, "
            f"bound {t['roofline_step_seconds'] * 1e3:.1f} ms"
            + (f" (DeepMind {r['deepmind_step_ms']} ms: {dm:.2f} times the bound)" if dm else "")
        )
    return [
        *lines,
        f"  The recipes that fit as is: DeepMind's times are {min(plain):.2f} to {max(plain):.2f} times their",
        "  bounds. The bounds count the rematerialized blocks' recomputation; before commit aa90593 the",
        "  cost left it out (F3 to F5 bounds about 18 % lower, ratios 2.34 to 2.56).",
    ]


def markdown(paths: list[str]) -> str:
    """docs/tpu_plan.md from the result files."""
    from nf.plan.planner import host_input
    from nf.plan.tpus import GENERATIONS, HOST_SOURCE, parse_slice

    lines = [
        "# Planning TPU runs without a TPU",
        "",
        "`nf-plan` compiles `nf-train`'s own train and eval steps for a Cloud TPU slice with XLA's TPU",
        "compiler (`pip install -e '.[tpu]'`), on any machine, and reports per-device HBM, FLOPs, bytes,",
        "collectives and a roofline **lower bound** of the step time (the larger of FLOPs / peak bf16 FLOP/s",
        "and bytes accessed / HBM bandwidth: collectives, input and every inefficiency ignored; never a",
        "measurement). `launch/tpu.sh run` runs it before starting the workers.",
        "",
        "    nf-plan --config=configs/nfnet_imagenet.py:f0 --topology=v4-64 \\",
        "            [--config.KEY=VALUE ...] [--slices=N] [--cost=per_block] [--json]",
        "",
        "## What compiling for TPU showed",
        "",
        "- The planning process runs on the CPU backend, so `conv_ops.cpu_kernels()` chose the XLA:CPU-tuned",
        "  convolutions (im2col, grouped multiply-adds, custom VJPs) for the TPU program; `nf-plan` now traces",
        "  with `conv_impl='lax'`, the ops a TPU run of `nf-train` uses.",
        "- XLA's cost analysis counts a loop body once on TPU too (a 9-block scanned stage costs as 1):",
        "  FLOPs and bytes come from a second compile with the scans unrolled when the step has loops.",
        "- XLA:TPU refuses to compile a step that exceeds HBM (`CompileTimeHbmOom`; it counts 15.75 GiB",
        "  available on v5e); the plan reports that as not fitting, with the bytes the error names.",
        "- bf16 recipes: every convolution of the step runs in bf16; the classifier head's matmuls are f32.",
        "- XLA:TPU rematerializes to fit: near the HBM limit a step's temporaries are what its scheduler",
        "  chose, not proportional to the batch (a narrow two-stage net at 1024 px on v5e-1: 10.3 GiB at 32",
        "  images, 12.0 at 64, 10.0 at 128; 128 as 4 accumulated micro-batches of 32: 11.0). 'Fits' is",
        "  the compiler's answer; the HBM figures are not a per-image memory model.",
        "- The cost compile with the scans unrolled is the slow part for deep recipes (NF-RegNet-B5: 358 s",
        "  train, 2,168 s unrolled, under load) and needs host memory: NFNet-F2's was killed by the",
        "  kernel's out-of-memory killer at 17.8 GB resident on the 24 GB development machine.",
        "  `--cost=per_block` costs each loop body compiled alone instead, (trips - 1) times, beside the",
        "  step's own compile: for NF-RegNet-B2 and NFNet-F1 within 0.1 % of the unrolled FLOPs and 4 %",
        "  of its bytes (`tools/plan_cost_check.py`, `tools/results/plan_cost_methods.json`) at a fraction",
        "  of the time and memory; rows measured that way say so (`cost_method`). With accumulation,",
        "  each micro-batch's blocks count so, plus one micro-batch's pass compiled alone for the",
        "  accumulation loop's other trips. The suggestions are costed the same way; `launch/tpu.sh run`",
        "  plans with it.",
        *_leaner_bullet(paths),
        "- At its global batch (4096) NFNet-F7 fits no v5e slice in one pass with remat alone: 16 images",
        "  per chip on v5e-256 ask for 21.67 GiB of the 14.9 GiB. With the state also sharded over 2 chips",
        "  (FSDP 2) it fits there in 13.17 GiB; the all-gathers that brings (356, 9.2 GB per chip per step)",
        "  are outside the roofline bound.",
        "- Gradient accumulation seemed to raise the temporaries (10.0 -> 17.5 GiB): that was the plan's",
        "  own cost compile, which unrolled the accumulation loop so XLA held every micro-batch at once;",
        "  the loop now stays rolled there and one micro-batch's forward and backward pass, compiled",
        "  alone, is added for the others (the step `nf-train` runs was never affected).",
        "",
        "## TPU generations",
        "",
        "| generation | cores/chip | JAX devices/chip | chips/host | HBM/chip | peak bf16/chip "
        "| HBM bandwidth/chip | vCPUs/host | source |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for g in GENERATIONS.values():
        lines.append(
            f"| {g.name} | {g.cores_per_chip} | {g.devices_per_chip} | {g.chips_per_host} | "
            f"{g.hbm_bytes_per_chip / 2**30:.1f} GiB | {g.peak_bf16_flops_per_chip / 1e12:.0f} TFLOP/s | "
            f"{g.hbm_bytes_per_second_per_chip / 1e9:.0f} GB/s | {g.host_vcpus} | {g.source} |"
        )
    lines += ["", f"vCPUs per host of 4 chips (v3: 8 cores): the TPU VM machine types, {HOST_SOURCE}."]
    for path in paths:
        if not os.path.exists(path):
            continue
        data = _load(path)
        rows = data["rows"]
        if not rows:
            continue
        run = data["runs"][-1]
        commands = list(dict.fromkeys(r["command"] for r in data["runs"]))  # each resumed run's, in order
        lines += [
            "",
            "Measured by " + ", then ".join(f"`{c}`" for c in commands),
            f"on {run['machine']}, last {run['date']} at commit {run['commit'][:10]},",
        ]
        lines += [f"jax {run['jax']}, libtpu {run['libtpu']}; result file `{path}`.", ""]
        if "generation" not in rows[0]:
            lines += [
                "## Every recipe on v3-32 (32 images per core, global batch 1024, bf16, train resolution)",
                "",
                "| recipe | px | fits | HBM/core GiB (train) | eval + state GiB | TFLOPs/core/step "
                "| GB accessed/core/step | roofline bound ms | DeepMind measured ms | measured / bound | compile s |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in rows:
                lines.append(_v3_line(r["model"], r, r.get("deepmind_step_ms")))
                for t in r.get("leaner", []):
                    lines.append(
                        _v3_line(f"{r['model']}, {_setting_flags(t['setting'])}", t, r.get("deepmind_step_ms"))
                    )
            by = [
                (r["model"], t["measured_by"])
                for r in rows
                for t in r.get("leaner", [])
                if t.get("measured_by") and not t.get("recompiled_at")  # else this tool compiled it again
            ]
            if by:
                lines += ["", "Made by `nf-plan` itself (the same compile; the tool keeps the row):"]
                lines += [f"- {model}: `{command}`" for model, command in by]
            missing = [m for m in RECIPES if m not in {r["model"] for r in rows}]
            if missing:
                lines += ["", f"Not measured yet: {', '.join(missing)} (rerun the command: finished rows are kept)."]
        else:
            lines += [
                "## Each recipe at its global batch on the smallest slice where it fits as is",
                "",
                "As is: no accumulation and no remat (one pass over the global batch per step); a recipe",
                "that fits no slice of a generation as is is searched again with remat (`model.remat=block`),",
                "then remat with FSDP 2, then FSDP 8, then FSDP 8 over 2 accumulated halves (the `setting`",
                "column). Smaller slices fit with the settings `nf-plan` suggests. The search compiles upward",
                "from the smallest slice the v3-32 compile predicts within 150 % of its HBM (the state",
                "divided by the FSDP size)",
                "(earlier rows: from the one predicted within 100 %, then the slice below it).",
                "",
                "Host vCPUs: what the bound's input rate per host needs at the per-core rate",
                "`nf.data.host_rate` measured for the recipe's augmentation (one core of the development",
                "CPU; `nf-plan` reports it as `host_input`), beside the vCPUs of one TPU VM.",
                "",
                "| recipe | generation | slice | setting | images/device | HBM/device GiB | roofline bound ms "
                "| images/s/chip (bound) | host input images/s (bound) | host vCPUs needed (of) "
                "| slices compiled (fits?) |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            done = {(r["model"], r["generation"]) for r in rows}
            missing = [f"{m} on {g}" for m in RECIPES for g in GENERATION_NAMES if (m, g) not in done]
            order = {(m, g): i for i, (m, g) in enumerate((m, g) for m in RECIPES for g in GENERATION_NAMES)}
            for r in sorted(rows, key=lambda r: order.get((r["model"], r["generation"]), len(order))):
                tried = ", ".join(
                    (
                        f"{t['topology']} ({'yes' if t['fits'] else 'no'})"
                        if "hbm_total" in t
                        else f"{t['topology']} (predicted {_gib(t['predicted_hbm_total'])} GiB, not compiled)"
                    )
                    + (f" with {_setting_label(t['setting'])}" if t.get("setting") else "")
                    for t in r["tried"]
                )
                if not r.get("topology"):
                    lines.append(f"| {r['model']} | {r['generation']} | none fits | | | | | | | | {tried} |")
                    continue
                setting = _setting_flags(r.get("setting")) or "as is"
                bound = r["roofline_step_seconds"]
                per_chip = r["batch_size"] / r["chips"] / bound
                per_host = per_chip * r["chips"] / r["hosts"]
                host = host_input(recipe(r["model"]), parse_slice(r["topology"]), per_host)
                lines.append(
                    f"| {r['model']} | {r['generation']} | {r['topology']} | {setting} | "
                    f"{r['batch_size'] // r['devices']} | {_gib(r['hbm_bytes']['total'])} | {bound * 1e3:.1f} | "
                    f"{per_chip:.0f} | {per_host:.0f} | "
                    f"{host['cores_needed']:.0f} ({host['host_vcpus']}) | {tried} |"
                )
            if missing:
                lines += [
                    "",
                    f"Not measured yet ({len(missing)} of {len(RECIPES) * len(GENERATION_NAMES)}): "
                    + ", ".join(missing)
                    + ".",
                ]
    return "\n".join(lines) + "\n"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _MARKDOWN.value:
        Path(_MARKDOWN.value).write_text(markdown(_RESULTS.value))
        return
    if not (_OUT.value and (_PART.value or _RECOMPILE_REMAT.value)):
        raise app.UsageError("--out with --part or --recompile_remat (or --markdown)")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    if _RECOMPILE_REMAT.value:
        recompile_remat(_OUT.value, _MODELS.value)
    elif _PART.value == "v3":
        measure_v3(_OUT.value, _MODELS.value)
    else:
        measure_generations(_OUT.value, _MODELS.value, _GENERATIONS.value)


if __name__ == "__main__":
    app.run(main)
