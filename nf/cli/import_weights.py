"""nf-import: a published weights file -> an nf workdir that evaluation, prediction, export and
`init_from` fine-tuning read.

    nf-import --source=deepmind --name=F0 --weights=F0_haiku.npz --workdir=runs/nfnet_f0
    nf-import --source=timm --name=eca_nfnet_l0 --weights=model.safetensors --workdir=runs/eca_l0
    nf-import --source=timm --name=eca_nfnet_l0 --workdir=runs/eca_l0   # from the Hugging Face Hub
    nf-import --list                                                     # every published weight

writes `DIR/checkpoints/0/state` (Orbax, the trainer's layout: params = EMA = the file's weights)
and `DIR/nf_model.json` (the model, its classes, the source's eval preprocessing and provenance:
source, file, SHA-256, published top-1). timm's weights without `--weights` come from the Hub
repository timm's own config names, through huggingface_hub's cache (nf.pretrained.hub).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import os
import time
from typing import Any

from nf.cli.common import console, prepare_runtime
from nf.inference import ModelCard, save_model
from nf.pretrained import SOURCES, catalog_entry, import_weights, model_name, model_options, preprocessing
from nf.pretrained.catalog import known_weights


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_class_names(path: str, num_classes: int) -> list[str]:
    with open(path) as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) != num_classes:
        raise ValueError(f"{path} lists {len(names)} class names; the model has {num_classes} classes")
    return names


def import_to_workdir(
    source: str,
    name: str,
    weights: str | None,
    workdir: str,
    num_classes: int | None = None,
    class_names: str | None = None,
    revision: str | None = None,
    **overrides: Any,
) -> ModelCard:
    """Import `weights` and write them to `workdir` with their model card; `overrides` (model
    options, e.g. the widths and depths of a reduced file) are recorded in the card. timm's
    weights without a file are fetched from the Hub (at `revision`, default its main branch)."""
    hub = None
    if weights is None:
        if source != "timm":
            raise ValueError(
                f"{source} weights are not on the Hugging Face Hub: pass --weights=FILE (nf-import --list)"
            )
        from nf.pretrained.hub import fetch_timm, timm_hub_id

        hub = dict(repo=timm_hub_id(name), revision=revision)
        weights = fetch_timm(name, revision)
    weights = os.path.abspath(weights)
    model = import_weights(weights, source=source, name=name, num_classes=num_classes, **overrides)
    classes = int(model.head.kernel.shape[-1])
    card = ModelCard(
        model={"name": model_name(source, name), **model_options(source, name), **overrides},
        num_classes=classes,
        preprocessing=preprocessing(source, name),
        class_names=read_class_names(class_names, classes) if class_names else None,
        source={
            "kind": source,
            "name": name,
            "file": weights,
            "sha256": sha256(weights),
            "hub": hub,  # None: a local file
            "bytes": os.path.getsize(weights),
            "requested_num_classes": num_classes,  # None: the file's head was kept
            "published_top1": (catalog_entry(source, name) or {}).get("top1"),
            "imported_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        },
    )
    save_model(model, workdir, card)
    return card


def weights_table() -> str:
    """`nf-import --list`: every published weight nf imports, one line each."""
    lines = [f"{'name':<14} {'source':<9} {'nf model':<19} {'from':<55} {'top-1':>6} {'params':>7}"]
    for w in known_weights():
        where, params = w["hub_id"] or w["url"], f"{w['params'] / 1e6:.1f}M"
        lines.append(f"{w['name']:<14} {w['source']:<9} {w['nf_name']:<19} {where:<55} {w['top1']:>6.2f} {params:>7}")
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nf-import", description=__doc__.split("\n\n")[0])
    p.add_argument("--list", action="store_true", help="print every published weight nf imports and exit")
    p.add_argument("--source", choices=SOURCES, help="who published the file")
    p.add_argument("--name", help="DeepMind's variant (F0..F6) or timm's model name (eca_nfnet_l0)")
    p.add_argument(
        "--weights",
        help="the weights file (F0_haiku.npz, model.safetensors); timm's default: fetched from the Hugging Face Hub",
    )
    p.add_argument("--revision", help="with timm's weights from the Hub: a branch, tag or commit (default: main)")
    p.add_argument("--workdir", help="an empty or new directory for the checkpoint and card")
    p.add_argument("--num_classes", type=int, default=None, help="classes of a fresh head (default: the file's)")
    p.add_argument("--class_names", help="text file: one class name per line, in class-index order")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.list:
        print(weights_table())
        return 0
    missing = [f"--{flag}" for flag in ("source", "name", "workdir") if getattr(args, flag) is None]
    if missing:
        p.error(f"the following arguments are required: {', '.join(missing)} (or --list)")
    prepare_runtime()
    t0 = time.perf_counter()
    card = import_to_workdir(
        args.source, args.name, args.weights, args.workdir, args.num_classes, args.class_names, args.revision
    )
    p = card.preprocessing
    print(
        f"Imported {args.source} {args.name} as {card.name} ({card.num_classes} classes) into {args.workdir} "
        f"in {time.perf_counter() - t0:.1f} s\n"
        f"  eval preprocessing: {p.kind}, {p.image_size} px, crop_pct {p.crop_pct:.3f}, {p.interpolation}\n"
        f"  sha256 {card.source['sha256']}" + (f" (from {card.source['hub']['repo']})" if card.source["hub"] else "")
    )
    return 0


run = console(main)

if __name__ == "__main__":
    run()
