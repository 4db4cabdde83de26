"""Transfer demo on the bundled digit scenes: pretrained vs from-scratch, segmentation and depth.

    python tools/transfer_demo.py [--runs=runs] [--steps=300] [--seed=0 --seed=1 --seed=2] [--task=depth] [--json=FILE]
    python tools/transfer_demo.py --markdown=tools/results/transfer_demo_seeds.json   # the docs table

1. trains the quickstart classifier (configs/quickstart.py) into RUNS/quickstart unless it has a
   checkpoint there already;
2. fine-tunes it on the digit scenes for segmentation (configs/scenes_seg.py) and for depth
   (configs/scenes_depth.py), and trains the same models from scratch (`init_from=''`) for the
   same number of steps;
3. prints the final EMA evaluation of the four runs side by side; with several `--seed`s (each
   passed to the dense runs as `--config.seed`: head initialization and data order), every pair
   is run once per seed and reported as mean and spread, with the paired gains per seed;
4. `--json=FILE` writes all of it with its provenance (machine, load, date, commit, command).

Each run is a plain `nf-train` subprocess with its own workdir, so a finished run is reused (it
resumes at its last step and stops at once) and an interrupted one resumes.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance

from nf.inference.checkpoint import CHECKPOINTS, step_folders

REPO = Path(__file__).resolve().parents[1]
_RUNS = flags.DEFINE_string("runs", "runs", "Folder of the workdirs (quickstart, scenes_*).")
_STEPS = flags.DEFINE_integer("steps", 0, "Fine-tuning steps of every dense run (0 = the configs' own).")
_SEED = flags.DEFINE_multi_integer(
    "seed", [0], "Seed(s) of the dense runs (`--config.seed`); repeat the flag for several."
)
_TASKS = flags.DEFINE_multi_enum("task", ["segmentation", "depth"], ["segmentation", "depth"], "Which pairs to run.")
_JSON = flags.DEFINE_string("json", "", "Write the results and their provenance to this file.")
_MARKDOWN = flags.DEFINE_string(
    "markdown", "", "Print the docs table of a result file written by --json (figures with their markers); no runs."
)

# (task, config, the metrics shown: (key, label, format))
TASKS = {
    "segmentation": ("configs/scenes_seg.py", (("miou", "mIoU", "{:.1%}"), ("pixel_accuracy", "pixel acc", "{:.2%}"))),
    "depth": (
        "configs/scenes_depth.py",
        (("delta1", "δ<1.25", "{:.1%}"), ("rms", "rms (m)", "{:.3f}"), ("rel", "rel", "{:.3f}")),
    ),
}


def train(config: str, workdir: Path, *overrides: str) -> None:
    cmd = [sys.executable, "-m", "nf.train", f"--config={config}", f"--workdir={workdir}", *overrides]
    print("$", " ".join(cmd), flush=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    subprocess.run(cmd, cwd=REPO, env=env, check=True)


def finished(workdir: Path, steps: int) -> bool:
    """Whether `workdir` holds the evaluation at `steps` (the run is then reused without starting
    the trainer; `steps` = 0: unknown, the trainer is started and stops at once if done)."""
    metrics = workdir / "metrics.jsonl"
    if not steps or not metrics.exists():
        return False
    return any(m["split"] == "eval" and m["step"] == steps for m in map(json.loads, metrics.read_text().splitlines()))


def final_eval(workdir: Path) -> dict:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [m for m in map(json.loads, lines) if m["split"] == "eval"][-1]


def spread(values: list[float]) -> dict:
    """Mean, sample standard deviation (0 for one value), min and max."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values)}


def chosen() -> dict:
    return {task: TASKS[task] for task in TASKS if task in _TASKS.value}


def summarize(per_seed: dict[int, dict]) -> dict:
    """Per task and metric: each run's values over the seeds, their spread, and the paired gain
    (pretrained - scratch at the same seed). The gain "exceeds the seed noise" when every paired
    gain has the same sign and the two runs' ranges over the seeds do not overlap."""
    out = {}
    for task, (_, metrics) in chosen().items():
        for key, _, _ in metrics:
            values = {
                run: [per_seed[s][task][run][f"ema_{key}"] for s in per_seed] for run in ("pretrained", "scratch")
            }
            gains = [p - s for p, s in zip(values["pretrained"], values["scratch"])]
            pre, scr = spread(values["pretrained"]), spread(values["scratch"])
            apart = pre["min"] > scr["max"] or scr["min"] > pre["max"]
            out.setdefault(task, {})[key] = {
                "pretrained": values["pretrained"],
                "scratch": values["scratch"],
                "pretrained_spread": pre,
                "scratch_spread": scr,
                "gain": spread(gains),
                "gain_exceeds_seed_noise": bool(len(gains) > 1 and apart and len({g > 0 for g in gains}) == 1),
            }
    return out


def markdown_rows(path: str) -> str:
    """The table of docs/transfer.md from a `--json` result file: each figure followed by the
    marker that tests/test_docs_figures.py checks against the file."""
    record = json.loads(Path(path).read_text())

    def cell(key: str, fmt: str) -> str:
        value = record
        for part in key.split("."):
            value = value[part]
        return fmt.format(value) + f"<!-- r {path} {key} {fmt} -->"

    lines = [
        "| task | metric | pretrained | from scratch | gain (pretrained − scratch) | beyond seed noise |",
        "|---|---|---|---|---|---|",
    ]
    for task, (_, metrics) in TASKS.items():
        if task not in record["summary"]:
            continue
        for key, label, fmt in metrics:
            base = f"summary.{task}.{key}"
            runs = []
            for run in ("pretrained_spread", "scratch_spread"):
                k = f"{base}.{run}"
                runs.append(
                    f"{cell(k + '.mean', fmt)} ± {cell(k + '.std', fmt)} "
                    f"({cell(k + '.min', fmt)} – {cell(k + '.max', fmt)})"
                )
            signed = fmt.replace("{:", "{:+")
            gain = f"{cell(base + '.gain.mean', signed)} ± {cell(base + '.gain.std', fmt)}"
            verdict = "**yes**" if record["summary"][task][key]["gain_exceeds_seed_noise"] else "no"
            lines.append(f"| {task} | {label} | {runs[0]} | {runs[1]} | {gain} | {verdict} |")
    return "\n".join(lines)


def main(argv) -> None:
    del argv
    if _MARKDOWN.value:
        print(markdown_rows(_MARKDOWN.value))
        return
    runs = Path(_RUNS.value).absolute()
    quickstart = runs / "quickstart"
    if not step_folders(quickstart / CHECKPOINTS):
        train("configs/quickstart.py", quickstart)
    steps = [f"--config.total_steps={_STEPS.value}"] if _STEPS.value else []
    per_seed = {}
    for seed in _SEED.value:
        suffix = f"_seed{seed}" if _SEED.present else ""  # without --seed: the configs' seed, plain folders
        results = per_seed[seed] = {}
        for task, (config, _) in chosen().items():
            name = Path(config).stem + suffix
            pretrained, scratch = runs / name, runs / f"{name}_scratch"
            seeded = [f"--config.seed={seed}", *steps]
            if not finished(pretrained, _STEPS.value):
                train(config, pretrained, f"--config.init_from={quickstart}", *seeded)
            if not finished(scratch, _STEPS.value):
                train(config, scratch, "--config.init_from=", *seeded)
            results[task] = {"pretrained": final_eval(pretrained), "scratch": final_eval(scratch)}
    summary = summarize(per_seed)
    seeds = ", ".join(map(str, per_seed))
    print(f"\nDigit scenes, final EMA evaluation at equal steps (pretrained = quickstart backbone; seeds {seeds}):")
    print(f"{'task':<14}{'metric':<11}{'pretrained':>20}{'scratch':>20}{'gain':>20}  beyond seed noise")
    for task, (_, metrics) in chosen().items():
        for key, label, fmt in metrics:
            s = summary[task][key]
            cells = [s["pretrained_spread"], s["scratch_spread"], s["gain"]]
            cells = [fmt.format(c["mean"]) + (f" ± {fmt.format(c['std'])}" if len(per_seed) > 1 else "") for c in cells]
            verdict = ("yes" if s["gain_exceeds_seed_noise"] else "no") if len(per_seed) > 1 else "(one seed)"
            print(f"{task:<14}{label:<11}{cells[0]:>20}{cells[1]:>20}{cells[2]:>20}  {verdict}")
    last = per_seed[_SEED.value[-1]]
    steps_done = ", ".join(f"{task} {last[task]['pretrained']['step']}" for task in chosen())
    print(f"(mean ± sample std over the seeds; steps: {steps_done}; metrics.jsonl in {runs}/scenes_*)")
    if _JSON.value:
        record = {
            "command": " ".join(["python", "tools/transfer_demo.py", *sys.argv[1:]]),
            **provenance(),
            "seeds": list(per_seed),
            "steps": {task: last[task]["pretrained"]["step"] for task in chosen()},
            "noise_rule": "gain beyond seed noise: all paired gains of one sign, ranges over seeds apart",
            "summary": summary,
            "final_eval": {str(seed): r for seed, r in per_seed.items()},
        }
        Path(_JSON.value).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    app.run(main)
