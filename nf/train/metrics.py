"""Metric writing: clu writers (TensorBoard events + console) and a JSON-lines file for machines."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from clu import metric_writers


class MetricLogger:
    """Writes `{split}/{name}` scalars to clu (TensorBoard + log) and `{step, split, ...}` lines to
    `workdir/metrics.jsonl`. Only process 0 writes files."""

    def __init__(self, workdir: str):
        self.is_writer = jax.process_index() == 0
        self.writer = metric_writers.create_default_writer(workdir, just_logging=not self.is_writer, asynchronous=True)
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")

    def write(self, step: int, split: str, scalars: Mapping[str, Any]) -> None:
        values = {k: float(np.asarray(v)) for k, v in scalars.items()}
        self.writer.write_scalars(step, {f"{split}/{k}": v for k, v in values.items()})
        if self.is_writer:
            with open(self.jsonl_path, "a") as f:
                f.write(json.dumps({"step": int(step), "split": split, **values}) + "\n")

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.writer.write_hparams(dict(hparams))

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{'a': {'b': 1}}` -> `{'a.b': 1}`, values made TensorBoard-friendly."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_config(value, name + "."))
        else:
            out[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out
