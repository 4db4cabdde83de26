"""Metric writing: clu writers (TensorBoard events + console) and a JSON-lines file for machines."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from clu import metric_writers
from etils import epath

REMOTE_UPLOAD_EVERY_S = 60.0  # object stores cannot append: metrics.jsonl is re-uploaded whole


class MetricLogger:
    """Writes `{split}/{name}` scalars to clu (TensorBoard + log) and `{step, split, ...}` lines to
    `workdir/metrics.jsonl`. Only process 0 writes files. On an object store (gs://...), which
    cannot append, the whole file is re-uploaded at most every minute and at `flush`. `console`
    (`nf.train.console.TrainConsole.write`) gets every record too, for the lines people read."""

    def __init__(self, workdir: str, console: Callable[[int, str, Mapping[str, float]], None] | None = None):
        self.is_writer = jax.process_index() == 0
        self.console = console
        self.writer = metric_writers.create_default_writer(workdir, just_logging=not self.is_writer, asynchronous=True)
        self.jsonl_path = os.path.join(workdir, "metrics.jsonl")
        self._remote = "://" in workdir
        self._lines: list[str] = []
        self._uploaded = time.monotonic()
        if self._remote and self.is_writer and epath.Path(self.jsonl_path).exists():  # a resumed run
            self._lines = epath.Path(self.jsonl_path).read_text().splitlines(keepends=True)

    def truncate_after(self, step: int) -> int:
        """Drop metrics.jsonl lines of steps after `step` (and an incomplete last line): a run resumed
        from step `step` writes them again, so each step appears once. Returns the lines dropped."""
        if not self.is_writer:
            return 0
        path = epath.Path(self.jsonl_path)
        lines = self._lines if self._remote else (path.read_text().splitlines(keepends=True) if path.exists() else [])
        kept = []
        for line in lines:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut short by a kill: nothing after it was written
            if not line.endswith("\n") or record.get("step", 0) > step:
                break  # lines are written in step order
            kept.append(line)
        dropped = len(lines) - len(kept)
        if dropped:
            if self._remote:
                self._lines = kept
                self._upload()
            else:
                path.write_text("".join(kept))
        return dropped

    def write(self, step: int, split: str, scalars: Mapping[str, Any]) -> None:
        values = {k: float(np.asarray(v)) for k, v in scalars.items()}
        self.writer.write_scalars(step, {f"{split}/{k}": v for k, v in values.items()})
        if self.console is not None:
            self.console(step, split, values)
        if not self.is_writer:
            return
        line = json.dumps({"step": int(step), "split": split, **values}) + "\n"
        if not self._remote:
            with open(self.jsonl_path, "a") as f:
                f.write(line)
            return
        self._lines.append(line)
        if time.monotonic() - self._uploaded > REMOTE_UPLOAD_EVERY_S:
            self._upload()

    def _upload(self) -> None:
        epath.Path(self.jsonl_path).write_text("".join(self._lines))
        self._uploaded = time.monotonic()

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self.writer.write_hparams(dict(hparams))

    def flush(self) -> None:
        self.writer.flush()
        if self._remote and self.is_writer:
            self._upload()

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


class LoopTimer:
    """Wall-clock accounting of the training loop, excluding each session's first (compiling) step.

    With asynchronous dispatch the host finishes a step's loop iteration long before the device
    finishes the step, so step time is measured between synchronization points: the log steps,
    where the loop waits for the step's metrics (`synced`). An interval that contains the
    compiling step, an evaluation or a save is not counted (`restart` after them).
    Time blocked on the input pipeline is idle time only when the previous step had already
    finished: `data_wait` counts a wait when the previous step's output is ready once the batch
    arrives (conservative: a step that finished mid-wait counts whole).
    Checkpoint stalls are the time `save` blocks the loop, compared with the median step.
    """

    def __init__(self):
        self.waited = self.total = 0.0  # host loop seconds: waiting for data while idle / all
        self.step_seconds: list[float] = []  # seconds per step of each clean interval
        self.checkpoint_stalls: list[float] = []
        self._first = True
        self._sync: tuple[int, float] | None = None  # (step, time) the last clean interval starts at

    def step(self, start: float, batch_ready: float, end: float, previous_done: bool) -> None:
        """Host-side accounting of one loop iteration (data fetch at `start`..`batch_ready`)."""
        if self._first:
            self._first = False
            return
        self.total += end - start
        if previous_done:
            self.waited += batch_ready - start

    def synced(self, step: int, now: float) -> float | None:
        """Step `step`'s outputs are on the host at `now`: the seconds per step since the last
        synchronization point, or None when there is no clean interval yet."""
        per_step = None
        if self._sync is not None and step > self._sync[0]:
            per_step = (now - self._sync[1]) / (step - self._sync[0])
            self.step_seconds.append(per_step)
        self._sync = (step, now)
        return per_step

    def restart(self, step: int, now: float) -> None:
        """Evaluation or saving ran after step `step` (device idle at `now`): a new interval."""
        self._sync = (step, now)

    @property
    def data_wait_fraction(self) -> float:
        return self.waited / max(self.total, 1e-9)

    def summary(self) -> dict[str, float]:
        out = {"data_wait_fraction": self.data_wait_fraction}
        if self.step_seconds:
            out["median_step_seconds"] = float(np.median(self.step_seconds))
        if self.checkpoint_stalls:
            out["max_checkpoint_stall_seconds"] = max(self.checkpoint_stalls)
        return out
