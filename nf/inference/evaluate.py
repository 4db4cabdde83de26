"""Evaluate a model workdir on an image folder or ArrayRecord source, without training.

The preprocessing is the card's (nf.inference.card) through the trainer's own eval pipeline
(nf.data.make_pipeline), and the metrics are the trainer's: its jitted eval step
(nf.train.trainer.make_eval_step) summing the classification task's top-1 / top-5 / loss over
the whole set (`evaluate_params`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from nf import data as nf_data
from nf.data.sources import METADATA_FILE
from nf.inference.card import ModelCard, Preprocessing
from nf.inference.checkpoint import load_trees


def open_eval_source(path: str, card: ModelCard):
    """The labelled source at `path` with labels in the card's class order.

    Image folders whose sub-folders are (some of) the card's class names take the card's order;
    otherwise the sorted folder names are the classes (ImageNet's convention), which must then
    be as many as the model's. ArrayRecord sources keep the classes they were written with."""
    names = card.class_names
    if names and not (Path(path) / METADATA_FILE).exists() and Path(path).is_dir():
        folders = {e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")}
        if folders and folders <= set(names):
            return nf_data.ImageFolderSource(path, classes=names)
    source = nf_data.open_source(path)
    if names and list(source.classes) == list(names):
        return source
    if source.num_classes != card.num_classes:
        raise nf_data.DataSourceError(
            f"{path} has {source.num_classes} classes {source.classes[:5]}... but the model has "
            f"{card.num_classes}; name the class folders as the model card's class_names "
            f"({(names or [])[:5]}...) or give all {card.num_classes} classes"
        )
    if names:
        logging.warning(
            "%s: class folders %s... are not the card's class names %s...; using their sorted order as labels",
            path,
            source.classes[:3],
            names[:3],
        )
    return source


def eval_batches(
    source,
    preprocessing: Preprocessing,
    batch_size: int,
    *,
    fast_jpeg: bool | None = None,
    workers: int = 0,
    read_threads: int = 4,
) -> Callable[[], Iterator[dict]]:
    """A factory of one-pass eval iterators with `preprocessing` (the trainer's eval pipeline).
    `fast_jpeg` (reduced-DCT JPEG decoding) defaults to on for the trainer's own preprocessing
    ("nf", as the trainer evaluates) and off for imported weights (their published numbers)."""
    transform = nf_data.ClassificationEval(preprocessing, fast_jpeg=fast_jpeg)
    loader = nf_data.LoaderSettings(batch_size=batch_size, worker_count=workers, read_threads=read_threads)

    def batches():
        return nf_data.make_pipeline(source, transform, loader)

    return batches


def evaluate_workdir(
    workdir: str,
    data: str | None = None,
    *,
    weights: Sequence[str] = ("ema",),
    batch_size: int = 64,
    image_size: int | None = None,
    step: int | None = None,
    config: ml_collections.ConfigDict | None = None,
    fast_jpeg: bool | None = None,
    workers: int = 0,
    read_threads: int = 4,
    progress_every_s: float | None = None,
) -> dict[str, Any]:
    """Top-1 / top-5 / loss of each of `weights` of `workdir` on `data` (default: the config's eval
    set), with the card's preprocessing at `image_size` (default the card's); returns a JSON-able
    report with the throughput (images/s over whole passes, data pipeline included, compile not).
    `progress_every_s`: print done/total images, images/s and ETA of each pass that often."""
    from nf.tasks import Classification
    from nf.train.console import with_progress
    from nf.train.sharding import batch_sharding, make_mesh, replicated
    from nf.train.trainer import ModelFns, evaluate_params, make_eval_step

    model, card, params, model_state = load_trees(workdir, tuple(weights), step, config)
    if data is None:
        if config is None:
            raise ValueError("pass --data=FOLDER|ARRAYRECORD_DIR (or --config, whose data.eval is used)")
        data = config.data.eval.format(workdir=workdir)
    preprocessing = card.preprocessing.at_size(image_size) if image_size else card.preprocessing
    source = open_eval_source(data, card)
    mesh = make_mesh({"data": -1})
    if batch_size % mesh.size:
        raise ValueError(f"batch_size={batch_size} is not divisible by the {mesh.size} devices")
    fns = ModelFns(model)
    task = Classification(ml_collections.ConfigDict(), card.num_classes)  # its eval sums and metrics
    eval_step = jax.jit(make_eval_step(fns, task))
    shard = batch_sharding(mesh)
    to_global = lambda b: jax.tree.map(lambda x: jax.make_array_from_process_local_data(shard, np.asarray(x)), b)
    model_state = jax.device_put(model_state, replicated(mesh))
    batches = eval_batches(
        source, preprocessing, batch_size, fast_jpeg=fast_jpeg, workers=workers, read_threads=read_threads
    )

    report: dict[str, Any] = {
        "workdir": os.path.abspath(workdir),
        "data": os.path.abspath(data),
        "num_images": len(source),
        "model": card.model,
        "preprocessing": preprocessing.to_dict(),
        "batch_size": batch_size,
        "devices": [str(d) for d in mesh.devices.flat],
        "results": {},
    }
    first = next(iter(batches()))  # compile outside the timed passes
    t0 = time.perf_counter()
    warm = jax.device_put(params[weights[0]], replicated(mesh))
    jax.block_until_ready(eval_step(warm, model_state, to_global(first)))
    report["compile_seconds"] = time.perf_counter() - t0
    seconds = 0.0
    for name in weights:
        p = jax.device_put(params[name], replicated(mesh))
        passes = batches
        if progress_every_s is not None:
            real = lambda batch: int(np.sum(batch["mask"]))  # padded slots are masked out
            passes = with_progress(batches, f"{name} weights", len(source), real, every_s=progress_every_s)
        t0 = time.perf_counter()
        report["results"][name] = evaluate_params(eval_step, p, model_state, passes, to_global, task)
        seconds += time.perf_counter() - t0
    report["images_per_sec"] = len(source) * len(weights) / seconds
    return report


def summary_lines(report: dict[str, Any]) -> list[str]:
    p = report["preprocessing"]
    lines = [
        f"{report['model']['name']} on {report['data']}: {report['num_images']} images at {p['image_size']}px "
        f"({p['kind']} preprocessing: {p['crop']}, crop_pct {p['crop_pct']:.4f}, {p['interpolation']})"
    ]
    for name, r in report["results"].items():
        lines.append(f"  {name:>3} weights: top-1 {r['top1']:.2%}  top-5 {r['top5']:.2%}  loss {r['loss']:.4f}")
    lines.append(
        f"  {report['images_per_sec']:.1f} images/s (batch {report['batch_size']}, data pipeline included; "
        f"compile {report['compile_seconds']:.1f}s not)"
    )
    return lines
