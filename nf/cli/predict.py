"""`nf-predict`: the top-k classes of image files with a model workdir's weights and preprocessing.

    nf-predict --workdir=runs/quickstart data/digits/test/3/0012.png data/digits/test/7/0101.png
    nf-predict --workdir=runs/f0 --class_names=imagenet_classes.txt --top_k=3 cat.jpg

Prints, per image, the top-k class names with their probabilities (class names from
--class_names, a text file with one name per line, else the model card's, else the indices).
"""

from __future__ import annotations

import argparse
import json

from nf.cli.common import console, load_config, prepare_runtime


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nf-predict", description=__doc__.split("\n\n")[0])
    p.add_argument("images", nargs="+", help="image files (JPEG, PNG, ...)")
    p.add_argument("--workdir", required=True, help="model workdir (checkpoints/ and nf_model.json)")
    p.add_argument("--top_k", type=int, default=5)
    p.add_argument("--class_names", help="text file: one class name per line, in class-index order")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema")
    p.add_argument("--image_size", type=int, default=0, help="0: the card's test size")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--config", help="the training config, for a workdir without nf_model.json")
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print [{image, top: [[class, probability], ...]}]")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.top_k <= 0 or args.batch_size <= 0:
        raise ValueError("--top_k and --batch_size must be positive")
    prepare_runtime()
    from nf.inference import load_model
    from nf.inference.predict import class_names, load_images, predict

    model, card = load_model(args.workdir, args.weights, args.step, load_config(args.config))
    names = class_names(card, args.class_names)
    p = card.preprocessing.at_size(args.image_size) if args.image_size else card.preprocessing
    probs, classes = predict(model, load_images(args.images, p), args.top_k, args.batch_size)
    rows = [
        {"image": image, "top": [[names[c], float(q)] for c, q in zip(cs, ps)]}
        for image, cs, ps in zip(args.images, classes, probs)
    ]
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for row in rows:
            print(row["image"])
            for name, q in row["top"]:
                print(f"  {q:8.4f}  {name}")
    return 0


run = console(main)

if __name__ == "__main__":
    run()
