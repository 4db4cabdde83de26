"""How far `nf-plan --cost=per_block` is from the unrolled cost compile, per recipe on v3-32.

    python tools/plan_cost_check.py --recipes=nf_regnet_b2,nfnet_f1 --json=tools/results/plan_cost_methods.json

Plans each recipe at the v3-32 table's setting (`tools/plan_table.py`) with `cost="per_block"` and
compares its FLOPs and bytes accessed per device with the row of `tools/results/tpu_plan_v3_32.json`
measured with `cost="unrolled"` (every scan unrolled), with both methods' compile seconds.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plan_table
from provenance import provenance

_RECIPES = flags.DEFINE_list("recipes", ["nf_regnet_b2", "nfnet_f1"], "Recipes with an unrolled v3-32 row.")
_JSON = flags.DEFINE_string("json", "", "Write the comparison and its provenance to this file.")


def main(argv):
    del argv
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from nf.plan.planner import plan

    table = {r["model"]: r for r in json.loads((plan_table.REPO / plan_table.V3_RESULT).read_text())["rows"]}
    rows = []
    for model in _RECIPES.value:
        unrolled = table[model]
        result = plan(plan_table.v3_config(model), plan_table.V3_TOPOLOGY, search=False, cost="per_block")
        row = {"model": model}
        for key in ("flops_per_device", "bytes_accessed_per_device"):
            row[key] = {"per_block": result[key], "unrolled": unrolled[key], "ratio": result[key] / unrolled[key]}
        row["compile_seconds"] = {"per_block": result["compile_seconds"], "unrolled": unrolled["compile_seconds"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if _JSON.value:
        record = provenance() | {"command": "python tools/plan_cost_check.py " + " ".join(sys.argv[1:]), "rows": rows}
        Path(_JSON.value).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    app.run(main)
