"""Evaluate a model workdir on an image folder or ArrayRecord source, without training.

The preprocessing is the card's (nf.data.card) through the trainer's own eval pipeline
(nf.data.make_pipeline), and the metrics are the trainer's: the trainer evaluates with this
module's eval step (`make_eval_step`, a task's eval sums of the model's outputs) and its sum over
the whole set (`evaluate_params`); here they run the classification task's top-1 / top-5 / loss.
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
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from nf import data as nf_data
from nf.data.card import ModelCard
from nf.data.preprocessing import Preprocessing
from nf.data.sources import METADATA_FILE
from nf.data.tfds_source import TFDS_PREFIX
from nf.inference.checkpoint import load_trees
from nf.inference.progress import with_progress
from nf.models.pure import ModelFns
from nf.tasks import Classification, Task
from nf.tasks.base import model_images


def make_eval_step(fns: ModelFns, task: Task) -> Callable:
    """`(params, model_state, batch) -> the task's eval sums` of the model's outputs (to jit)."""

    def eval_step(params, model_state, batch):
        outputs, _ = fns.apply(params, model_state, model_images(batch), train=False)
        return task.eval_sums(outputs, batch)

    return eval_step


def evaluate_params(eval_step, params, model_state, eval_batches, to_global, task: Task) -> dict[str, float]:
    """The task's metrics of one set of weights over one pass of the eval set (every example
    once): per-batch sums added up on the host in float64 and finalized once."""
    totals = None
    for batch in eval_batches():
        sums = eval_step(params, model_state, to_global(batch))
        sums = jax.tree.map(lambda x: np.asarray(x).astype(np.float64), sums)
        totals = sums if totals is None else jax.tree.map(np.add, totals, sums)
    return task.finalize(totals)


def global_batch_fn(shard: jax.sharding.Sharding) -> Callable[[dict], dict]:
    """This process's batch -> global arrays with `shard` (its leading axis split over devices)."""
    return lambda batch: jax.tree.map(lambda x: jax.make_array_from_process_local_data(shard, np.asarray(x)), batch)


def open_eval_source(path: str, card: ModelCard, tfds_data_dir: str | None = None):
    """The labelled source at `path` with labels in the card's class order (`"tfds:NAME:SPLIT"`:
    a TFDS dataset prepared under `tfds_data_dir`, default TFDS's own).

    Image folders whose sub-folders are (some of) the card's class names take the card's order;
    otherwise the sorted folder names are the classes (ImageNet's convention), which must then
    be as many as the model's. ArrayRecord sources keep the classes they were written with."""
    names = card.class_names
    if names and not (Path(path) / METADATA_FILE).exists() and Path(path).is_dir():
        folders = {e.name for e in os.scandir(path) if e.is_dir() and not e.name.startswith(".")}
        if folders and folders <= set(names):
            return nf_data.ImageFolderSource(path, classes=names)
    source = nf_data.open_source(path, tfds_data_dir=tfds_data_dir)
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
    tfds_data_dir: str | None = None,
) -> dict[str, Any]:
    """Top-1 / top-5 / loss of each of `weights` of `workdir` on `data` (default: the config's eval
    set), with the card's preprocessing at `image_size` (default the card's); returns a JSON-able
    report with the throughput (images/s over whole passes, data pipeline included, compile not).
    `progress_every_s`: print done/total images, images/s and ETA of each pass that often.
    `tfds_data_dir`: where `data="tfds:NAME:SPLIT"` is prepared (default: the config's
    `data.tfds_data_dir`, then TFDS's own: $TFDS_DATA_DIR or ~/tensorflow_datasets)."""
    model, card, params, model_state = load_trees(workdir, tuple(weights), step, config)
    if data is None:
        if config is None:
            raise ValueError("pass --data=FOLDER|ARRAYRECORD_DIR (or --config, whose data.eval is used)")
        data = config.data.eval.format(workdir=workdir)
    preprocessing = card.preprocessing.at_size(image_size) if image_size else card.preprocessing
    if tfds_data_dir is None and config is not None:
        tfds_data_dir = config.data.get("tfds_data_dir") or None  # as the trainer reads it
    source = open_eval_source(data, card, tfds_data_dir)
    mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(AxisType.Auto,))  # data parallel
    batch_shard, replicated = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    if batch_size % mesh.size:
        raise ValueError(f"batch_size={batch_size} is not divisible by the {mesh.size} devices")
    fns = ModelFns(model)
    task = Classification(ml_collections.ConfigDict(), card.num_classes)  # its eval sums and metrics
    eval_step = jax.jit(make_eval_step(fns, task))
    to_global = global_batch_fn(batch_shard)
    model_state = jax.device_put(model_state, replicated)
    batches = eval_batches(
        source, preprocessing, batch_size, fast_jpeg=fast_jpeg, workers=workers, read_threads=read_threads
    )

    report: dict[str, Any] = {
        "workdir": os.path.abspath(workdir),
        "data": data if data.startswith(TFDS_PREFIX) else os.path.abspath(data),
        "num_images": len(source),
        "model": card.model,
        "preprocessing": preprocessing.to_dict(),
        "batch_size": batch_size,
        "devices": [str(d) for d in mesh.devices.flat],
        "results": {},
    }
    first = next(iter(batches()))  # compile outside the timed passes
    t0 = time.perf_counter()
    warm = jax.device_put(params[weights[0]], replicated)
    jax.block_until_ready(eval_step(warm, model_state, to_global(first)))
    report["compile_seconds"] = time.perf_counter() - t0
    seconds = 0.0
    for name in weights:
        p = jax.device_put(params[name], replicated)
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
