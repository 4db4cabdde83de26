"""Transfer demo on the bundled digit scenes: pretrained vs from-scratch, segmentation and depth.

    python tools/transfer_demo.py [--runs=runs] [--steps=300]

1. trains the quickstart classifier (configs/quickstart.py) into RUNS/quickstart unless it has a
   checkpoint there already;
2. fine-tunes it on the digit scenes for segmentation (configs/scenes_seg.py) and for depth
   (configs/scenes_depth.py), and trains the same models from scratch (`init_from=''`) for the
   same number of steps;
3. prints the final EMA evaluation of the four runs side by side.

Each run is a plain `nf-train` subprocess with its own workdir, so a finished run is reused (it
resumes at its last step and stops at once) and an interrupted one resumes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from absl import app, flags

from nf.inference.checkpoint import CHECKPOINTS, step_folders

REPO = Path(__file__).resolve().parents[1]
_RUNS = flags.DEFINE_string("runs", "runs", "Folder of the workdirs (quickstart, scenes_*).")
_STEPS = flags.DEFINE_integer("steps", 0, "Fine-tuning steps of every dense run (0 = the configs' own).")

# (task, config, the metrics shown: (key, label, format))
TASKS = {
    "segmentation": ("configs/scenes_seg.py", (("miou", "mIoU", "{:.1%}"), ("pixel_accuracy", "pixel acc", "{:.1%}"))),
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


def final_eval(workdir: Path) -> dict:
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [m for m in map(json.loads, lines) if m["split"] == "eval"][-1]


def main(argv) -> None:
    del argv
    runs = Path(_RUNS.value).absolute()
    quickstart = runs / "quickstart"
    if not step_folders(quickstart / CHECKPOINTS):
        train("configs/quickstart.py", quickstart)
    steps = [f"--config.total_steps={_STEPS.value}"] if _STEPS.value else []
    results = {}
    for task, (config, _) in TASKS.items():
        name = Path(config).stem
        pretrained, scratch = runs / name, runs / f"{name}_scratch"
        train(config, pretrained, f"--config.init_from={quickstart}", *steps)
        train(config, scratch, "--config.init_from=", *steps)
        results[task] = {"pretrained": final_eval(pretrained), "scratch": final_eval(scratch)}
    print("\nDigit scenes, final EMA evaluation at equal steps (pretrained = quickstart backbone):")
    print(f"{'task':<14}{'metric':<11}{'pretrained':>12}{'scratch':>12}")
    for task, (_, metrics) in TASKS.items():
        for key, label, fmt in metrics:
            row = [fmt.format(results[task][run][f"ema_{key}"]) for run in ("pretrained", "scratch")]
            print(f"{task:<14}{label:<11}{row[0]:>12}{row[1]:>12}")
    steps = ", ".join(f"{task} {results[task]['pretrained']['step']}" for task in TASKS)
    print(f"(steps: {steps}; metrics.jsonl in {runs}/scenes_*)")


if __name__ == "__main__":
    app.run(main)
