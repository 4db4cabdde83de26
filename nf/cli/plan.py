"""`nf-plan --config=FILE --topology=NAME [--config.KEY=VALUE ...] [--slices=N] [--json]`

Compiles `nf-train`'s train and eval steps for a Cloud TPU slice on this (CPU) machine with XLA's
TPU compiler (the `libtpu` package: `pip install -e '.[tpu]'`) and says whether they fit, how
fast they could run at best and what the hosts must feed them (`nf.plan.planner`). Exit status 0
when the config fits, 3 when it does not (suggestions printed), 2 on bad input.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file (as for nf-train).")
_TOPOLOGY = flags.DEFINE_string("topology", None, "Cloud TPU slice, e.g. v4-8, v5p-128 (TensorCores), v5e-16 (chips).")
_SLICES = flags.DEFINE_integer("slices", 1, "Number of such slices (multi-slice: the data axis spans them).")
_JSON = flags.DEFINE_bool("json", False, "Print the plan as JSON (stable keys) instead of text.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", None, "Classes of the data (default: the task's reference set).")
_SEARCH = flags.DEFINE_bool("search", True, "When it does not fit, compile settings that might and suggest them.")
_COST = flags.DEFINE_enum(
    "cost",
    "unrolled",
    ["unrolled", "per_block"],
    "FLOPs and bytes from a compile with the scans unrolled, or from the step plus each loop body alone "
    "(per_block: much faster and lighter for deep recipes; within 0.1 %% FLOPs / 4 %% bytes of unrolled).",
)
flags.mark_flags_as_required(["config", "topology"])

NOT_FITTING_EXIT_CODE = 3  # distinct from absl usage errors and tracebacks (1) and bad input (2)


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def describe(plan: dict[str, Any]) -> str:
    """The plan as text for people."""
    h = plan["hbm_bytes"]
    slices = f"{plan['slices']} x " if plan["slices"] > 1 else ""
    per_device = plan["batch_size"] // plan["devices"]
    lines = [
        f"{slices}{plan['topology']} ({plan['libtpu_topology']}): {plan['devices']} x {plan['device_kind']}, "
        f"{plan['chips']} chips, {plan['hosts']} hosts; mesh {plan['mesh']}; batch {plan['batch_size']} "
        f"({per_device} per device, accum_steps {plan['accum_steps']}), {plan['image_size']} px, "
        f"{plan['dtype']}, remat {plan['remat']}",
    ]
    if plan["compile_error"]:
        lines += [
            f"XLA:TPU refused the train step: {plan['compile_error']}",
            f"  at least {_gib(h['total'])} per device of {_gib(h['capacity'])}: DOES NOT FIT",
        ]
    else:
        lines += _compiled_lines(plan)
    lines.append("Compile seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in plan["compile_seconds"].items()))
    if not plan["fits"]:
        if plan["suggestions"]:
            lines.append("Settings that fit (compiled), cheapest roofline bound first:")
            lines += [
                f"  {s['flags']}  (total {_gib(s['hbm_total_bytes'])}, bound {s['roofline_step_seconds'] * 1e3:.2f} ms)"
                for s in plan["suggestions"]
            ]
        else:
            lines.append("No setting tried fits: use a larger slice (or more slices) or a smaller batch.")
    return "\n".join(lines)


def _compiled_lines(plan: dict[str, Any]) -> list[str]:
    h = plan["hbm_bytes"]
    return [
        f"HBM per device, train step: arguments {_gib(h['argument'])}, temporaries {_gib(h['temp'])}, "
        f"outputs {_gib(h['output'])} ({_gib(h['alias'])} aliased to arguments), code {_gib(h['code'])}",
        f"  total {_gib(h['total'])} of {_gib(h['capacity'])}; eval with the train state resident "
        f"{_gib(plan['eval_hbm_bytes']['total_with_train_state'])}: "
        + (f"FITS, margin {_gib(plan['margin_bytes'])}" if plan["fits"] else "DOES NOT FIT"),
        f"Per device per step: {plan['flops_per_device']:.4g} FLOPs, {plan['bytes_accessed_per_device']:.4g} "
        "bytes accessed (XLA cost analysis"
        + (
            "; the unrolled program exceeds HBM, so each loop body counts once: an undercount)"
            if plan.get("cost_counts_loops_once")
            else ")"
        ),
        "Collectives: "
        + (
            ", ".join(f"{k} x{v['count']} ({_gib(v['bytes'])})" for k, v in sorted(plan["collectives"].items()))
            or "none"
        ),
        f"Roofline LOWER BOUND (not a measurement; {plan['roofline_bound']}-bound, collectives and input "
        f"ignored): {plan['roofline_step_seconds'] * 1e3:.2f} ms per step -> at most "
        f"{plan['roofline_images_per_second_per_chip']:.0f} images/s per chip; the input pipeline must then "
        f"deliver {plan['host_images_per_second_needed']:.0f} images/s per host",
        _host_line(plan["host_input"]),
    ]


def _host_line(h: dict[str, Any]) -> str:
    verdict = "the hosts can feed it" if h["hosts_can_feed"] else "the hosts CANNOT feed it at that rate"
    return (
        f"Host input at {h['images_per_core_second']:.0f} images/s per core ({h['rate_source']}, one core of "
        f"the development CPU): {h['cores_needed']:.0f} of the host's {h['host_vcpus']} vCPUs: {verdict}"
    )


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from nf.plan.planner import plan

    try:
        result = plan(
            _CONFIG.value, _TOPOLOGY.value, _SLICES.value, _NUM_CLASSES.value, search=_SEARCH.value, cost=_COST.value
        )
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1) if _JSON.value else describe(result))
    return 0 if result["fits"] else NOT_FITTING_EXIT_CODE


def run() -> None:
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run()
