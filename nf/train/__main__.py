"""`python -m nf.train --config=configs/quickstart.py --workdir=DIR` (also `nf-train`)."""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and metrics.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    import jax

    from nf.train.trainer import train_and_evaluate

    logging.info("JAX devices: %s (process %d of %d)", jax.devices(), jax.process_index(), jax.process_count())
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
