"""What a compiled XLA executable says about itself: per-device memory, cost and collectives.

`memory_analysis()` gives the per-device buffer sizes XLA assigned (arguments, temporaries,
outputs, the part of the outputs aliased onto donated arguments, generated code);
`cost_analysis()` gives per-device FLOPs and bytes accessed; the collectives are read from the
optimized HLO text (`compiled.as_text()`), one entry per instruction: a collective inside a loop
body is counted once, like XLA's own cost analysis counts a loop body once.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_DTYPE_BYTES = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2,
    "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16,
}  # fmt: skip
# `%name = <result shape(s)> <op>(` where op is a collective, or its asynchronous `-start` half.
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.+?)\s+(?P<op>" + "|".join(COLLECTIVES) + r")(?P<start>-start)?\("
)
_ARRAY = re.compile(r"\b(?P<dtype>pred|[suf]\d+|bf16|c64|c128|f8e\w+)\[(?P<dims>[\d,]*)\]")


def shape_bytes(shape_text: str) -> list[int]:
    """Bytes of each array in an HLO result shape such as `(f32[8,128]{1,0}, bf16[4]{0})`."""
    out = []
    for m in _ARRAY.finditer(shape_text):
        dims = [int(d) for d in m.group("dims").split(",") if d]
        itemsize = _DTYPE_BYTES.get(m.group("dtype"), 1)  # f8 types: 1 byte
        out.append(int(np.prod(dims, dtype=np.int64) * itemsize))
    return out


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
    """{kind: {count, bytes}} of the collectives in optimized HLO text; bytes are each result's
    size (an asynchronous `-start` other than all-reduce's returns (operands, results, ...): its
    second half is counted)."""
    found: dict[str, dict[str, int]] = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        sizes = shape_bytes(m.group("shape"))
        if m.group("start") and m.group("op") != "all-reduce" and len(sizes) > 1:
            sizes = sizes[len(sizes) // 2 :]
        entry = found.setdefault(m.group("op"), {"count": 0, "bytes": 0})
        entry["count"] += 1
        entry["bytes"] += sum(sizes)
    return found


def memory(compiled: Any) -> dict[str, int]:
    """Per-device bytes: argument, temp, output, alias, code and their total (arguments + outputs
    - aliased outputs + temporaries + generated code: what must be resident while the step runs)."""
    stats = compiled.memory_analysis()
    m = {
        "argument": int(stats.argument_size_in_bytes),
        "temp": int(stats.temp_size_in_bytes),
        "output": int(stats.output_size_in_bytes),
        "alias": int(stats.alias_size_in_bytes),
        "code": int(stats.generated_code_size_in_bytes),
    }
    m["total"] = m["argument"] + m["output"] - m["alias"] + m["temp"] + m["code"]
    return m


def cost(compiled: Any) -> dict[str, float]:
    """Per-device `flops` and `bytes_accessed` of XLA's cost analysis."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, list | tuple):  # older jax: one dict per computation
        analysis = analysis[0]
    if not analysis or "flops" not in analysis:
        raise RuntimeError(f"XLA cost analysis returned no 'flops' entry: {analysis!r}")
    return {"flops": float(analysis["flops"]), "bytes_accessed": float(analysis.get("bytes accessed", 0.0))}
