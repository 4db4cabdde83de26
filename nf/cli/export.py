"""`nf-export`: a model workdir's inference forward pass as serialized StableHLO (`jax.export`).

    nf-export --workdir=runs/quickstart --out=exports/quickstart.stablehlo
    nf-export --workdir=runs/f0 --out=f0.stablehlo --image_size=256 --platforms=cpu,cuda,tpu

Writes FILE (Scaled WS folded, weights inside, batch size symbolic) and FILE.json (input shape and
dtype, preprocessing, class names). Load with `jax.export.deserialize(open(FILE, "rb").read())`
and call `.call(images)` on NHWC float32 images normalized as FILE.json says.
"""

from __future__ import annotations

import argparse

from nf.cli.common import console, load_config, prepare_runtime


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nf-export", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="model workdir (checkpoints/ and nf_model.json)")
    p.add_argument("--out", required=True, help="output file (FILE.json is written beside it)")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema")
    p.add_argument("--image_size", type=int, default=0, help="0: the card's test size")
    p.add_argument("--platforms", default="", help="comma-separated, e.g. cpu,cuda,tpu (default: this backend)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--config", help="the training config, for a workdir without nf_model.json")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.image_size < 0:
        raise ValueError("--image_size must be >= 0")
    prepare_runtime()
    from nf.inference import load_model
    from nf.inference.export import export_model, write_export

    model, card = load_model(args.workdir, args.weights, args.step, load_config(args.config))
    size = args.image_size or card.preprocessing.image_size
    platforms = [p.strip() for p in args.platforms.split(",") if p.strip()] or None
    exported = export_model(model, size, platforms)
    out, meta = write_export(exported, args.out, card, size)
    print(f"wrote {out} ({', '.join(exported.platforms)}; input (batch, {size}, {size}, 3) float32) and {meta}")
    return 0


run = console(main)

if __name__ == "__main__":
    run()
