"""Run the README's main command (the quickstart) and record its figures with their provenance.

    python tools/quickstart_results.py --workdir=runs/quickstart --json=tools/results/quickstart_cpu.json

Runs `nf-train --config=CONFIG --workdir=WORKDIR` (the console script beside this Python) in a
fresh workdir, timing the whole command, and writes a JSON with the final EMA top-1, the wall time,
the median step time and the fraction of the loop spent waiting for data (the trainer's summary),
the machine, its load, the date, the commit and the command. The docs quote these files
(`tests/test_docs_figures.py` checks the quotes).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance

REPO = Path(__file__).resolve().parents[1]
_CONFIG = flags.DEFINE_string("config", "quickstart", "The quickstart config, as the README names it.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/quickstart", "A workdir without checkpoints (the run is timed).")
_JSON = flags.DEFINE_string("json", "", "Where to write the results (nothing written if empty).")


def main(argv) -> None:
    del argv
    workdir = Path(_WORKDIR.value)
    if (workdir / "checkpoints").exists():
        raise SystemExit(f"{workdir} holds checkpoints: the quickstart would resume, not train; use a fresh --workdir.")
    nf_train = str(Path(sys.executable).with_name("nf-train"))
    cmd = [nf_train, f"--config={_CONFIG.value}", f"--workdir={workdir}"]
    print("$", " ".join(cmd), flush=True)
    load_before = os.getloadavg()
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.PIPE, text=True).stdout
    print(out, flush=True)
    wall = time.perf_counter() - start
    load_after = os.getloadavg()
    metrics = [json.loads(line) for line in (REPO / workdir / "metrics.jsonl").read_text().splitlines()]
    final = [m for m in metrics if m["split"] == "eval"][-1]
    step_ms = re.search(r"median step (\d+) ms", out)  # the trainer's summary line
    waiting = re.search(r"waiting for data ([\d.]+)% of the loop", out)
    result = {
        "command": "nf-train " + " ".join(cmd[1:]),
        **provenance(),
        "load_average_1min": {"before": load_before[0], "after": load_after[0]},
        "steps": final["step"],
        "ema_top1": final["ema_top1"],
        "top1": final["top1"],
        "wall_seconds": wall,
        "median_step_seconds": int(step_ms.group(1)) / 1e3 if step_ms else None,
        "data_wait_fraction": float(waiting.group(1)) / 100 if waiting else None,  # printed to 0.1 %
    }
    print(json.dumps(result, indent=1))
    if _JSON.value:
        Path(_JSON.value).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    app.run(main)
