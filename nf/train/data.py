"""The trainer's view of the input pipeline: sources from the config, this process's shard."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import jax
import ml_collections

from nf import data as nf_data

PREPARERS: dict[str, Callable[[str], object]] = {
    "digits": nf_data.prepare_digits,
    "digit_parity": nf_data.prepare_digit_parity,
    "digit_scenes": nf_data.prepare_digit_scenes,
    "textured_digits": nf_data.prepare_textured_digits,
}


@dataclass
class TrainData:
    num_classes: int | None  # None: the task has no classes (depth)
    num_train: int
    train_iter: Callable[[], nf_data.DataIterator]
    eval_batches: Callable[[], Iterator[dict]]
    class_names: list[str] | None = None  # the classes' names when the source knows them (folder names)


def _resolve(path: str, workdir: str) -> str:
    return path.format(workdir=workdir)


def build(config: ml_collections.ConfigDict, workdir: str) -> TrainData:
    """Open the train/eval sources (preparing embedded data sets if asked) and pipeline factories."""
    task = config.get("task", "classification")
    if task in DENSE_BUILDERS:
        return DENSE_BUILDERS[task](config, workdir)
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
            crop_area_range=tuple(cfg.get("crop_area_range", nf_data.INCEPTION_CROP_AREA)),
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

    classes = getattr(train_source, "classes", None)
    return TrainData(
        train_source.num_classes, len(train_source), train_iter, eval_batches, list(classes) if classes else None
    )


def _prepare(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    """Write an embedded data set (`data.prepare`) to `data.root` unless it is there."""
    if cfg.get("prepare"):
        if cfg.prepare not in PREPARERS:
            raise ValueError(f"config.data.prepare={cfg.prepare!r} is unknown; valid: {sorted(PREPARERS)}")
        PREPARERS[cfg.prepare](_resolve(cfg.root, workdir))  # no-op when already prepared


def _pipeline_common(config: ml_collections.ConfigDict) -> dict:
    """This process's shard, the seed and the loader settings every dense pipeline shares."""
    cfg = config.data
    return dict(
        seed=config.seed,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        batch_size=config.batch_size // jax.process_count(),
        on_corrupt=cfg.get("on_corrupt", "error"),
    )


def build_segmentation(config: ml_collections.ConfigDict, workdir: str) -> TrainData:
    """VOC-format folders (`data.path` with ImageSets/Segmentation/<split>.txt): random scale,
    flip and crop for training, centre crop for evaluation (nf.data.segmentation)."""
    cfg = config.data
    _prepare(cfg, workdir)
    root = _resolve(cfg.path, workdir)
    sources = {
        split: nf_data.VOCSource(
            root, cfg[key], num_classes=cfg.num_classes, mask_dir=cfg.get("mask_dir", "SegmentationClass")
        )
        for split, key in (("train", "train_split"), ("eval", "eval_split"))
    }
    common = _pipeline_common(config)

    def train_iter():
        return nf_data.make_segmentation_pipeline(
            sources["train"],
            train=True,
            crop_size=cfg.crop_size,
            scale_range=tuple(cfg.get("scale_range", (0.5, 2.0))),
            hflip=cfg.get("hflip", True),
            worker_count=cfg.get("workers", 0),
            prefetch=cfg.get("prefetch", 2),
            **common,
        )

    def eval_batches():
        return nf_data.make_segmentation_pipeline(
            sources["eval"], train=False, crop_size=cfg.get("eval_crop_size") or cfg.crop_size, **common
        )

    return TrainData(cfg.num_classes, len(sources["train"]), train_iter, eval_batches)


def build_depth(config: ml_collections.ConfigDict, workdir: str) -> TrainData:
    """NYU Depth v2 (`data.path`: the labeled .mat, a list file or a folder of <split>.txt lists of
    RGB / 16-bit depth PNG pairs): resize, centre crop, flip and colour jitter (nf.data.depth)."""
    cfg = config.data
    _prepare(cfg, workdir)
    root = _resolve(cfg.path, workdir)
    sources = {
        split: nf_data.open_nyu(root, cfg[key]) for split, key in (("train", "train_split"), ("eval", "eval_split"))
    }
    sizes = dict(image_size=tuple(cfg.image_size), resize_to=tuple(cfg.resize_to) if cfg.get("resize_to") else None)
    common = _pipeline_common(config)

    def train_iter():
        return nf_data.make_depth_pipeline(
            sources["train"],
            train=True,
            hflip=cfg.get("hflip", True),
            color=cfg.get("color", True),
            worker_count=cfg.get("workers", 0),
            prefetch=cfg.get("prefetch", 2),
            **sizes,
            **common,
        )

    def eval_batches():
        return nf_data.make_depth_pipeline(sources["eval"], train=False, **sizes, **common)

    return TrainData(None, len(sources["train"]), train_iter, eval_batches)


DENSE_BUILDERS: dict[str, Callable[[ml_collections.ConfigDict, str], TrainData]] = {
    "segmentation": build_segmentation,
    "depth": build_depth,
}
