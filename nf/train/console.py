"""What `nf-train` prints for people: one line per log step (step, loss, task metrics, images/s,
ETA), one per evaluation, and the final summary (`nf-eval`'s progress: `nf.inference.progress`).

Library INFO chatter (absl, Orbax, JAX, grain, TensorFlow's C++ log) is hidden unless asked for
with absl's verbosity flag (`-v 0` / `--verbosity=0`: INFO; `-v 1`: debug); warnings and errors
always show. The machine-readable record of a run stays `metrics.jsonl` and TensorBoard.
"""

from __future__ import annotations

import logging as std_logging
import os
import sys
import tempfile
from collections.abc import Mapping
from typing import TextIO

from nf.inference.progress import duration

# Python loggers of the libraries whose INFO lines bury the training progress.
LIBRARY_LOGGERS = ("absl", "orbax", "jax", "jaxlib", "grain", "tensorflow", "clu")
# Train scalars the loop adds to the task's own (printed last, in their own format).
LOOP_KEYS = ("loss", "grad_norm", "learning_rate", "images_per_sec", "data_wait_fraction", "skipped_steps")


def quiet_libraries(verbose: bool) -> None:
    """Unless `verbose`, show only WARNING and above from the Python loggers (absl's handler sits
    on the root logger, so its level covers every library) and TensorFlow's C++ log."""
    from absl import logging

    if verbose:
        return
    # TensorFlow (only clu's summary writers use it): no INFO lines, no oneDNN notice (no TF compute here).
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    logging.set_verbosity(logging.WARNING)
    for name in LIBRARY_LOGGERS:
        std_logging.getLogger(name).setLevel(std_logging.WARNING)


# libtpu's start-up complaints where it is installed (the `tpu`/`test` extras) but the machine has
# no TPU: its C++ log writes them to the process's stderr before JAX falls back to the CPU.
LIBTPU_NO_TPU_LINES = (
    "could not determine TPU accelerator type",
    "Logging before InitGoogle",
    "could not determine TPU worker hostnames",
    "=== Source Location Trace: ===",
    "libtpu_init_utils.cc",
)


def start_backends(verbose: bool) -> None:
    """Initialize JAX's backends (after `jax.distributed.initialize`). Unless `verbose`, libtpu's
    no-TPU start-up lines are dropped from stderr; every other line written meanwhile is kept."""
    import jax

    if verbose:
        jax.devices()
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)  # the C++ log writes to the file descriptor, not sys.stderr
        try:
            jax.devices()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines()
            kept = [line for line in lines if not any(noise in line for noise in LIBTPU_NO_TPU_LINES)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)


def verbosity_requested() -> bool:
    """Whether the command line set absl's `-v`/`--verbosity` (absl.app turns its default into
    INFO, so its value alone cannot tell)."""
    from absl import flags

    return bool(flags.FLAGS["verbosity"].present)


def _value(v: float) -> str:
    return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def _scalars(values: Mapping[str, float], skip: tuple[str, ...] = ()) -> str:
    return "  ".join(f"{k} {_value(float(v))}" for k, v in values.items() if k not in skip)


class TrainConsole:
    """The trainer's lines on stdout (process 0 only), fed `MetricLogger.write`'s scalars.

    train: `step  50/600  loss 1.234  accuracy 0.8125  lr 0.04  1,002 img/s  ETA 1m32s`
    eval:  `eval at step 200: top1 0.95  top5 0.99  loss 0.21  ema_top1 0.96 ...`
    The ETA counts the remaining steps at the last measured images/s (none on the first log step,
    whose interval includes compilation); evaluations are not in it.
    """

    def __init__(
        self,
        total_steps: int,
        batch_size: int,
        start_step: int,
        *,
        checkpoints: str | None = None,
        enabled: bool = True,
        out: TextIO | None = None,
    ):
        self.total_steps, self.batch_size, self.start_step = total_steps, batch_size, start_step
        self.enabled = enabled
        self.out = out
        width = len(str(total_steps))
        self._step_format = f"{{:>{width}d}}/{total_steps}"
        if start_step:  # every process says it (in a multi-process run they must agree)
            where = f"{checkpoints}/{start_step}: " if checkpoints else ""
            print(f"Resuming from {where}step {start_step} of {total_steps}.", file=self.out or sys.stdout, flush=True)

    def _print(self, line: str) -> None:
        if self.enabled:
            print(line, file=self.out or sys.stdout, flush=True)

    def write(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
        """One line for a `train` or `eval` record; other records (checkpoint stalls) stay in the files."""
        if split == "train":
            self._print(self.train_line(step, scalars))
        elif split == "eval":
            self._print(f"eval at step {step}: {_scalars(scalars)}")

    def train_line(self, step: int, scalars: Mapping[str, float]) -> str:
        ips = scalars.get("images_per_sec")
        # No measured interval yet (the first log step, compilation included): no ETA rather than a wrong one.
        eta = duration((self.total_steps - step) * self.batch_size / ips) if ips else "--"
        parts = [f"step {self._step_format.format(step)}"]
        if "loss" in scalars:
            parts.append(f"loss {_value(float(scalars['loss']))}")
        parts.append(_scalars(scalars, LOOP_KEYS))  # the task's own (accuracy, ...)
        if scalars.get("skipped_steps"):
            parts.append(f"skipped {int(scalars['skipped_steps'])} non-finite steps")
        if "learning_rate" in scalars:
            parts.append(f"lr {_value(float(scalars['learning_rate']))}")
        if ips:
            parts.append(f"{ips:,.0f} img/s")
        parts.append(f"ETA {eta}")
        return "  ".join(p for p in parts if p)


def devices_line() -> str:
    """This process's devices (all of them up to 8, else how many of which kind), for the console."""
    import jax

    devices = jax.devices()
    shown = str(devices) if len(devices) <= 8 else f"{len(devices)} x {devices[0].device_kind}"
    line = f"JAX devices: {shown} (process {jax.process_index()} of {jax.process_count()})"
    if jax.process_count() > 1:
        line = f"Process {jax.process_index()} of {jax.process_count()} joined the JAX cluster. {line}"
    return line
