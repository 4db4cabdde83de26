"""`nf-small-batch --workdir=DIR`: paper Table 2 on embedded data.

Trains an NF-ResNet and its BN twin (same depths and widths: `--models`) at each of
`--batch_sizes` for `--seeds`, the same `--epochs` at every batch size (learning rate linear in
the batch; see `nf.experiments.small_batch`), on the embedded textured digits by default
(`--data=digits` for the plain ones) or on your own image folders / ArrayRecord dirs
(`--train=DIR --eval=DIR`). Writes DIR/small_batch.json (one row per run), DIR/small_batch.png and
prints the table; each run's trainer workdir is DIR/runs/<model>_b<batch>_s<seed> (finished runs
are reused, interrupted ones resume). Any base config key can be overridden, e.g.
`--config.model.widths='(32,64,128,256)'`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from nf.experiments import small_batch as sb

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.py"

_CONFIG = config_flags.DEFINE_config_file("config", str(QUICKSTART), "Base trainer config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (small_batch.json, small_batch.png, runs/).")
_MODELS = flags.DEFINE_list("models", ["nf_resnet26", "bn_resnet26"], "Registered models (the NF one and its BN twin).")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["64", "8", "4"], "Batch sizes (the paper: 1024, 8, 4).")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (model init and data order).")
_EPOCHS = flags.DEFINE_float("epochs", 6.0, "Epochs at every batch size (the paper: 15).")
_DATA = flags.DEFINE_enum("data", sb.EMBEDDED[0], list(sb.EMBEDDED), "Embedded data set.")
_DATA_ROOT = flags.DEFINE_string("data_root", "", "Where the embedded set is written (default data/<data>).")
_TRAIN = flags.DEFINE_string("train", "", "Training image folder or ArrayRecord dir (replaces the embedded set).")
_EVAL = flags.DEFINE_string("eval", "", "Evaluation image folder or ArrayRecord dir (with --train).")
flags.mark_flags_as_required(["workdir"])


def main(argv) -> None:
    del argv
    from nf.train import console

    console.quiet_libraries(verbose=console.verbosity_requested())  # one line per step, as nf-train
    console.start_backends(verbose=console.verbosity_requested())
    if bool(_TRAIN.value) != bool(_EVAL.value):
        raise app.UsageError("--train and --eval go together (image folders or ArrayRecord dirs)")
    if _TRAIN.value:
        data = sb.Data(prepare="", root=str(Path(_TRAIN.value).parent), train=_TRAIN.value, eval=_EVAL.value)
    else:
        data = sb.Data(prepare=_DATA.value, root=_DATA_ROOT.value or f"data/{_DATA.value}")
    batch_sizes = [int(b) for b in _BATCH_SIZES.value]
    sb.check_batch_sizes(batch_sizes)
    seeds = [int(s) for s in _SEEDS.value]
    base = _CONFIG.value
    start, load = time.time(), os.getloadavg()[0]
    print(f"Small-batch study: {_MODELS.value} x batch {batch_sizes} x seeds {seeds}, {_EPOCHS.value:g} epochs of")
    print(f"{data.train or data.root}; lr = {base.optimizer.lr:g} x batch / {base.batch_size} (linear rule):")
    print(sb.describe(base, batch_sizes, _EPOCHS.value, data.num_train()), flush=True)
    rows = sb.run_grid(
        base,
        _WORKDIR.value,
        models=_MODELS.value,
        batch_sizes=batch_sizes,
        seeds=seeds,
        epochs=_EPOCHS.value,
        data=data,
    )
    minutes = (time.time() - start) / 60
    print(f"\n{sb.format_table(rows)}")
    now = os.getloadavg()[0]
    print(f"\n{len(rows)} runs, {minutes:.1f} min wall (load average {load:.1f} at the start, {now:.1f} now)")
    print(f"  {Path(_WORKDIR.value) / 'small_batch.json'}\n  {Path(_WORKDIR.value) / 'small_batch.png'}")


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
