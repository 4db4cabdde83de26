"""`nf-eval`: evaluate a model workdir (trained by nf-train, imported by nf-import, or written by
nf.inference.save_model) without training.

    nf-eval --workdir=runs/quickstart --data=data/digits/test
    nf-eval --workdir=runs/f0 --data=/data/imagenet/val --weights=ema --batch_size=128
    nf-eval --workdir=runs/old --config=configs/quickstart.py        # a workdir without nf_model.json
    nf-eval --workdir=runs/f0 --data=tfds:imagenet2012:validation --tfds_data_dir=/data/tfds

Uses the preprocessing of the model card (timm, DeepMind, or the trainer's own), prints top-1 /
top-5 and the throughput, and writes the report as JSON (default WORKDIR/eval.json).
"""

from __future__ import annotations

import argparse
import json
import os

from nf.cli.common import console, load_config, prepare_runtime

WEIGHT_CHOICES = {"ema": ("ema",), "raw": ("raw",), "both": ("raw", "ema")}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nf-eval", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="model workdir (checkpoints/ and nf_model.json)")
    p.add_argument("--data", help="image folder (one sub-folder per class), ArrayRecord directory or tfds:NAME:SPLIT")
    p.add_argument(
        "--tfds_data_dir",
        help="where tfds:NAME:SPLIT datasets are prepared, as data.tfds_data_dir in training "
        "(default: the --config's, else $TFDS_DATA_DIR or ~/tensorflow_datasets)",
    )
    p.add_argument("--weights", choices=sorted(WEIGHT_CHOICES), default="ema", help="EMA, raw or both weights")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--image_size", type=int, default=0, help="0: the card's test size")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--config", help="the training config, for a workdir without nf_model.json")
    p.add_argument("--out", help="JSON report path (default WORKDIR/eval.json)")
    p.add_argument("--workers", type=int, default=0, help="grain worker processes")
    p.add_argument("--read_threads", type=int, default=4, help="decoding threads per process")
    p.add_argument(
        "--progress_every_s", type=float, default=10.0, help="seconds between progress lines (done/total, ETA)"
    )
    p.add_argument(
        "--fast_jpeg",
        choices=("auto", "on", "off"),
        default="auto",
        help="reduced-DCT JPEG decoding; auto: on for the trainer's preprocessing, off for imported weights",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    prepare_runtime()
    from nf.inference.evaluate import evaluate_workdir, summary_lines

    if args.batch_size <= 0 or args.image_size < 0:
        raise ValueError("--batch_size must be positive and --image_size >= 0")
    report = evaluate_workdir(
        args.workdir,
        args.data,
        weights=WEIGHT_CHOICES[args.weights],
        batch_size=args.batch_size,
        image_size=args.image_size or None,
        step=args.step,
        config=load_config(args.config),
        fast_jpeg=None if args.fast_jpeg == "auto" else args.fast_jpeg == "on",
        workers=args.workers,
        read_threads=args.read_threads,
        progress_every_s=args.progress_every_s,
        tfds_data_dir=args.tfds_data_dir,
    )
    out = args.out or os.path.join(args.workdir, "eval.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
    print("\n".join([*summary_lines(report), f"  report: {out}"]), flush=True)
    return 0


run = console(main)

if __name__ == "__main__":
    run()
