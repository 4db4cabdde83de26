"""Parameter and MAC counts of registered models.

    python tools/model_stats.py                               # every model at its default size
    python tools/model_stats.py --models=nf_resnet50,bn_resnet50 --image_size=128 --json

Parameters: the `nnx.Param` leaves of an abstract model (`nnx.eval_shape`, no memory).
MACs: XLA cost analysis of the jitted batch-1 forward pass, FLOPs / 2 (scans unrolled so every
block is counted; see `nf.models.stats`). `--cost=lowered` skips XLA's optimizing compile
(much faster for deep models, ~1% higher); the default `compiled` is the reference method.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

try:
    import nf  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nf.models import DEFAULT_IMAGE_SIZE, list_models
from nf.models.stats import model_stats

_MODELS = flags.DEFINE_list("models", [], "Comma-separated model names; default: every registered model.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Input resolution; default: each model's DEFAULT_IMAGE_SIZE.")
_JSON = flags.DEFINE_bool("json", False, 'Print `[{"model", "image_size", "params", "macs"}]` as JSON.')
_COST = flags.DEFINE_enum(
    "cost",
    "compiled",
    ["compiled", "lowered"],
    "Cost analysis of the optimized (compiled) or the unoptimized (lowered) module.",
)


def format_table(rows: list[dict]) -> str:
    headers = ("model", "image_size", "params", "macs", "GMACs")
    cells = [
        (r["model"], str(r["image_size"]), f"{r['params']:,}", f"{r['macs']:,}", f"{r['macs'] / 1e9:.3f}") for r in rows
    ]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for c in cells:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths))))
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    names = _MODELS.value or list_models()
    unknown = [n for n in names if n not in DEFAULT_IMAGE_SIZE]
    if unknown:
        raise app.UsageError(f"Unknown model(s) {unknown}; registered: {list_models()}")
    rows = []
    for name in names:
        start = time.perf_counter()
        rows.append(model_stats(name, _IMAGE_SIZE.value, compiled=_COST.value == "compiled"))
        print(f"{name}: {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    print(json.dumps(rows, indent=1) if _JSON.value else format_table(rows))


if __name__ == "__main__":
    app.run(main)
