"""Parameter and MAC counts of registered models.

    nf-model-stats                  # every model at its train and test sizes
    nf-model-stats --models=nfnet_f0,nf_regnet_b0 --image_sizes=128,256 --json

Parameters: the `nnx.Param` leaves of an abstract model (`nnx.eval_shape`, no memory).
MACs: multiply-accumulates of every conv and matmul of the batch-1 forward pass, read from its
jaxpr (no compile, so even NFNet-F7 takes seconds; see `nf.models.stats`). Reference: NFNet-F0
has 71,489,284 parameters and 12.38B MACs at 256px.
"""

from __future__ import annotations

import json
import sys
import time

from absl import app, flags

from nf.models import DEFAULT_IMAGE_SIZE, list_models
from nf.models.stats import model_stats

_MODELS = flags.DEFINE_list("models", [], "Comma-separated model names; default: every registered model.")
_IMAGE_SIZES = flags.DEFINE_list("image_sizes", [], "Input resolutions; default: each model's train and test size.")
_JSON = flags.DEFINE_bool("json", False, 'Print `[{"model", "params", "macs": {size: MACs}}]` as JSON.')


def format_table(rows: list[dict]) -> str:
    headers = ("model", "params", "train px", "GMACs", "test px", "GMACs")
    cells = []
    for r in rows:
        sizes = list(r["macs"].items()) * 2  # one size (train == test) fills both columns
        cells.append(
            (r["model"], f"{r['params']:,}", *(v for size, macs in sizes[:2] for v in (str(size), f"{macs / 1e9:.3f}")))
        )
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
        sizes = tuple(int(v) for v in _IMAGE_SIZES.value) or None
        rows.append(model_stats(name, sizes))
        print(f"{name}: {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    print(json.dumps(rows, indent=1) if _JSON.value else format_table(rows))


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
