"""What a task's data builder (`Task.build_data`) returns, and the pieces every builder shares:
embedded data sets (`data.prepare`), `{workdir}` in paths, and this process's shard of the input
(each process of a multi-host run reads its own examples)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

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
    train_iter: Callable[[], nf_data.DataIterator]  # checkpointable (grain iterator state)
    eval_batches: Callable[[], Iterator[dict]]  # one pass over the eval set, padded batches masked
    class_names: list[str] | None = None  # the classes' names when the source knows them (folder names)


def resolve(path: str, workdir: str) -> str:
    """`path` with `{workdir}` replaced (configs name data relative to the run's workdir)."""
    return path.format(workdir=workdir)


def prepare(cfg: ml_collections.ConfigDict, workdir: str) -> None:
    """Write an embedded data set (`data.prepare`, one of `PREPARERS`) to `data.root` unless it is there."""
    if cfg.get("prepare"):
        if cfg.prepare not in PREPARERS:
            raise ValueError(f"config.data.prepare={cfg.prepare!r} is unknown; valid: {sorted(PREPARERS)}")
        PREPARERS[cfg.prepare](resolve(cfg.root, workdir))  # no-op when already prepared


def pipeline_common(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """This process's shard and batch size, the seed and the loader settings every pipeline shares."""
    cfg = config.data
    return dict(
        seed=config.seed,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        batch_size=config.batch_size // jax.process_count(),
        on_corrupt=cfg.get("on_corrupt", "error"),
    )


def loader_options(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The training loader's parallelism: `data.workers` processes, `data.prefetch` batches ahead."""
    return dict(worker_count=cfg.get("workers", 0), prefetch=cfg.get("prefetch", 2))
