"""The trainer's view of the input pipeline: sources from the config, this process's shard."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import jax
import ml_collections

from nf import data as nf_data

PREPARERS: dict[str, Callable[[str], object]] = {"digits": nf_data.prepare_digits}


@dataclass
class TrainData:
    num_classes: int
    num_train: int
    train_iter: Callable[[], nf_data.DataIterator]
    eval_batches: Callable[[], Iterator[dict]]


def _resolve(path: str, workdir: str) -> str:
    return path.format(workdir=workdir)


def build(config: ml_collections.ConfigDict, workdir: str) -> TrainData:
    """Open the train/eval sources (preparing embedded data sets if asked) and pipeline factories."""
    cfg = config.data
    train_path, eval_path = _resolve(cfg.train, workdir), _resolve(cfg.eval, workdir)
    if cfg.get("prepare"):
        if cfg.prepare not in PREPARERS:
            raise ValueError(f"config.data.prepare={cfg.prepare!r} is unknown; valid: {sorted(PREPARERS)}")
        PREPARERS[cfg.prepare](_resolve(cfg.root, workdir))  # no-op when already prepared
    train_source = nf_data.open_source(train_path)
    eval_source = nf_data.open_source(eval_path, classes=getattr(train_source, "classes", None))
    n_proc, index = jax.process_count(), jax.process_index()
    per_process = config.batch_size // n_proc
    common = dict(
        seed=config.seed,
        shard_index=index,
        shard_count=n_proc,
        on_corrupt=cfg.get("on_corrupt", "error"),
        num_classes=train_source.num_classes,
    )

    def train_iter():
        return nf_data.make_pipeline(
            train_source,
            train=True,
            batch_size=per_process,
            image_size=cfg.image_size,
            worker_count=cfg.get("workers", 0),
            prefetch=cfg.get("prefetch", 2),
            mixup_alpha=cfg.get("mixup_alpha", 0.0),
            cutmix=cfg.get("cutmix", False),
            randaugment_layers=cfg.get("randaugment_layers", 0),  # 0 = off
            randaugment_magnitude=cfg.get("randaugment_magnitude", 0.0),
            crop_area_range=tuple(cfg.get("crop_area_range", (0.08, 1.0))),
            hflip=cfg.get("hflip", True),
            **common,
        )

    def eval_batches():
        return nf_data.make_pipeline(
            eval_source,
            train=False,
            batch_size=per_process,
            image_size=cfg.get("eval_image_size") or cfg.image_size,  # test px; defaults to the train px
            eval_crop=cfg.get("eval_crop", "center_crop"),
            crop_padding=cfg.get("crop_padding", 32),
            **common,
        )

    return TrainData(train_source.num_classes, len(train_source), train_iter, eval_batches)
