"""`python -m nf.train --config=configs/quickstart.py --workdir=DIR` (also `nf-train`).

`--config` takes a file (`FILE.py[:ARG]`) or the name of a config packaged with nf (`quickstart`,
`nfnet_imagenet:f3`; `nf.configs`), so an installed nf runs without a checkout.

Prints one line per log step and evaluation, then a summary; library INFO lines (absl, Orbax,
JAX, grain) only with `-v 0` / `--verbosity=0` (see `nf.train.console`). A workdir that cannot be
written is refused before anything compiles; a full disk is reported once (`nf.train.disk_space`);
a worker of a multi-process run that dies is named by the others (`nf.train.watchdog`).

Multi-process (every process runs the same command; see `nf.train.distributed`):
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`; on Cloud TPU pods nothing
extra (detected), or `--distributed=on` to require it.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"], "jax.distributed: auto = when flags below are given or on Cloud TPU."
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0's coordination service.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in the cluster.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id in [0, num_processes).")
_COORDINATOR_TIMEOUT = flags.DEFINE_integer(
    "coordinator_timeout", 300, "Seconds to wait for every process to join the cluster."
)
_WORKER_TIMEOUT = flags.DEFINE_integer(
    "worker_timeout", 60, "Multi-process: seconds without a heartbeat before a worker is reported dead."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from nf.train import console, disk_space, distributed, watchdog

    distributed.catch_stop_signals_early()  # before anything slow: a stop signal is never fatal
    console.quiet_libraries(verbose=console.verbosity_requested())  # INFO lines only with -v 0

    distributed.initialize(
        _DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _COORDINATOR_TIMEOUT.value
    )
    console.start_backends(verbose=console.verbosity_requested())  # libtpu's no-TPU notices only with -v
    import jax

    from nf.train import config_schema
    from nf.train.workdir_lock import WorkdirLock

    config_schema.validate(_CONFIG.value)  # a bad config fails before the workdir is touched
    try:
        disk_space.check_writable(_WORKDIR.value)  # before any compile: a run that cannot save is refused
    except disk_space.WorkdirNotWritableError as e:
        sys.exit(f"error: {e.strerror}")
    disk_space.filter_disk_full_logs()  # Orbax's threads log a full disk many times: it is reported once
    try:
        # The lock before the trainer's imports (seconds): a second run on this workdir fails fast.
        with WorkdirLock(_WORKDIR.value, enabled=jax.process_index() == 0):
            from nf.train.trainer import train_and_evaluate

            print(console.devices_line(), flush=True)  # every process: which devices it drives
            with watchdog.watch_workers(_WORKDIR.value, _WORKER_TIMEOUT.value, _COORDINATOR.value):
                train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except Exception as e:
        message = disk_space.disk_full_report(e, _WORKDIR.value)
        if message is None:
            raise
        # One message, then out at once: Orbax's threads still hold the failed save, and a normal
        # interpreter shutdown would print their tracebacks ("Event loop is closed", ...).
        sys.stdout.flush()
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()
        os._exit(disk_space.DISK_FULL_EXIT_CODE)


def run() -> None:
    import sys

    from nf.train.config_files import resolve_argv

    sys.argv = resolve_argv(sys.argv)  # --config=quickstart: a config packaged with nf, by name
    app.run(main)


if __name__ == "__main__":
    run()
