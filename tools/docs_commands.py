"""Run the commands the docs pages give, as a reader would, and record what each did.

    python tools/docs_commands.py --scratch=/tmp/docs_run --json=tools/results/docs_commands.json
    python tools/docs_commands.py --only=tools.md        # one page's commands

Each command runs through `bash` in a scratch folder (a reader's checkout: `runs/`, `data/` and
`out/` are created there; `launch/` and `tools/` are this repository's), one after the other in the
pages' order, since later commands use earlier workdirs (fine-tuning reads `runs/quickstart`). The
result file keeps, per command: its page, exit status, wall seconds and the last lines it printed.
Commands that need a TPU, GCS, the network or a data set that is not here are listed in `SKIPPED`
with the reason instead of being run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance

REPO = Path(__file__).resolve().parents[1]

# (page, command) in the order a reader meets them; `{repo}` is this checkout.
COMMANDS = (
    ("training.md", "nf-train --config=quickstart --workdir=runs/quickstart"),
    ("training.md", "nf-train --config=quickstart --workdir=runs/lr --config.optimizer.lr=0.08"),
    ("training.md", "nf-train --config=finetune_digits --workdir=runs/finetune_digits"),
    (
        "training.md",
        "nf-train --config=finetune_digits --workdir=runs/finetune_digits_frozen --config.freeze_backbone=True",
    ),
    ("pretrained.md", "nf-eval --workdir=runs/quickstart --data=data/digits/test --weights=ema"),
    ("pretrained.md", "nf-predict --workdir=runs/quickstart data/digits/test/3/0023.png --top_k=3"),
    ("pretrained.md", "nf-export --workdir=runs/quickstart --out=out/quickstart.stablehlo"),
    ("tools.md", "nf-model-stats --models=nf_resnet50,nf_regnet_b0"),
    ("tools.md", "nf-spp --models=nf_resnet50 --image_size=64 --batch_size=4 --out=out/spp"),
    ("models.md", "nf-model-stats --models=nf_resnet50,nfnet_f0,nf_regnet_b0"),
    ("models.md", "nf-spp --models=nf_resnet600,bn_resnet600 --image_size=128 --batch_size=8 --out=out/spp"),
    (
        "multihost.md",
        "{repo}/launch/local.sh --processes=2 --devices=2 --workdir=runs/local -- --config=quickstart "
        "--config.mesh.fsdp=2",
    ),
    (
        "multihost.md",
        "{repo}/launch/tpu.sh create --name=nf-r50 --zone=us-central2-b --accelerator=v4-32 "
        "--project=my-project --dry-run",
    ),
    ("multihost.md", "python {repo}/tools/state_bytes.py --model=nf_resnet50 --devices=4"),
    ("transfer.md", "nf-train --config=scenes_seg --workdir=runs/scenes_seg"),
    (
        "transfer.md",
        "nf-train --config=voc_fcn_nf_resnet50 --workdir=runs/voc_smoke --config.init_from= "
        "--config.data.path=data/digit_scenes/voc --config.data.mask_dir=SegmentationClass "
        "--config.data.train_split=train --config.total_steps=2 --config.batch_size=2 --config.data.crop_size=64 "
        "--config.data.eval_crop_size=64 --config.data.workers=0 --config.eval_every_steps=2",
    ),
    (
        "transfer.md",
        "nf-train --config=nyu_fcrn_nf_resnet50 --workdir=runs/nyu_smoke --config.init_from= "
        "--config.data.path=data/digit_scenes/nyu --config.total_steps=2 --config.batch_size=2 "
        "--config.data.resize_to=64,64 --config.data.image_size=48,64 --config.data.workers=0 "
        "--config.eval_every_steps=2",
    ),
)
SKIPPED = {
    "transfer.md: python tools/transfer_demo.py ...": "run on its own (tools/results/transfer_demo_seeds.json)",
    "small_batch.md: nf-small-batch ...": "18 training runs; run on its own (docs/small_batch.md)",
    "tpu_plan.md: nf-plan ...": "run through tools/plan_table.py (tools/results/tpu_plan_*.json)",
    "multihost.md: launch/tpu.sh setup|run": "needs a TPU VM and GCS",
    "pretrained.md: nf-import --source=deepmind|timm": "needs the published files (no network here)",
    "transfer.md: configs/voc_*, configs/nyu_* on their data": "need PASCAL VOC / NYU Depth v2 (not on this "
    "machine); run instead for 2 steps on the digit scenes, which are written in VOC's and NYU's layouts",
}

_SCRATCH = flags.DEFINE_string("scratch", "/tmp/nf_docs_commands", "Folder the commands run in (a reader's cwd).")
_JSON = flags.DEFINE_string("json", "", "Write the results and their provenance to this file.")
_ONLY = flags.DEFINE_list("only", [], "Run only these pages' commands (e.g. tools.md).")
_TAIL = 6


def run(command: str, cwd: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    proc = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seconds = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    return {"returncode": proc.returncode, "seconds": round(seconds, 1), "last_lines": lines[-_TAIL:]}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    scratch = Path(_SCRATCH.value)
    scratch.mkdir(parents=True, exist_ok=True)
    results = []
    for page, template in COMMANDS:
        if _ONLY.value and page not in _ONLY.value:
            continue
        command = template.format(repo=REPO)
        print(f"[{page}] $ {command}", flush=True)
        result = {"page": page, "command": template.replace("{repo}/", "")} | run(command, scratch)
        print(f"  -> exit {result['returncode']} in {result['seconds']} s: {result['last_lines'][-1:]}", flush=True)
        results.append(result)
    failed = [r["command"] for r in results if r["returncode"]]
    if _JSON.value:
        if _ONLY.value and Path(_JSON.value).exists():  # keep the other pages' earlier results
            earlier = json.loads(Path(_JSON.value).read_text())["results"]
            results = [r for r in earlier if r["page"] not in _ONLY.value] + results
        out = provenance() | {
            "command": "python tools/docs_commands.py " + " ".join(sys.argv[1:]),
            "results": results,
            "failed": failed,
            "skipped": SKIPPED,
        }
        Path(_JSON.value).write_text(json.dumps(out, indent=1) + "\n")
    if failed:
        raise SystemExit(f"{len(failed)} command(s) failed: {failed}")


if __name__ == "__main__":
    app.run(main)
