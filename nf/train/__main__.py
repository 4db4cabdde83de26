"""`python -m nf.train --config=configs/quickstart.py --workdir=DIR` (also `nf-train`).

`--config` takes a file (`FILE.py[:ARG]`) or the name of a config packaged with nf (`quickstart`,
`nfnet_imagenet:f3`; `nf.configs`), so an installed nf runs without a checkout.

Multi-process (every process runs the same command; see `nf.train.distributed`):
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I`; on Cloud TPU pods nothing
extra (detected), or `--distributed=on` to require it.
"""

from __future__ import annotations

from absl import app, flags, logging
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
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    from nf.train import distributed

    distributed.catch_stop_signals_early()  # before anything slow: a stop signal is never fatal

    distributed.initialize(
        _DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _COORDINATOR_TIMEOUT.value
    )
    import jax

    from nf.train import config_schema
    from nf.train.workdir_lock import WorkdirLock

    config_schema.validate(_CONFIG.value)  # a bad config fails before the workdir is touched
    # The lock before the trainer's imports (seconds): a second run on this workdir fails fast.
    with WorkdirLock(_WORKDIR.value, enabled=jax.process_index() == 0):
        from nf.train.trainer import train_and_evaluate

        logging.info("JAX devices: %s (process %d of %d)", jax.devices(), jax.process_index(), jax.process_count())
        train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def run() -> None:
    import sys

    from nf.configs import resolve_argv

    sys.argv = resolve_argv(sys.argv)  # --config=quickstart: a config packaged with nf, by name
    app.run(main)


if __name__ == "__main__":
    run()
