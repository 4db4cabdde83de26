"""What a task's data builder (`Task.build_data`) returns, and the pieces every builder shares:
embedded data sets (`data.prepare`), `{workdir}` in paths, and this process's shard of the input
(each process of a multi-host run reads its own examples)."""

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


def loader_settings(config: ml_collections.ConfigDict, *, train: bool) -> nf_data.LoaderSettings:
    """This process's `LoaderSettings` (its shard, its share of `config.batch_size`, the seed); the
    training loader also takes `data.workers` processes and `data.prefetch` batches ahead."""
    parallel = dict(worker_count=config.data.get("workers", 0), prefetch=config.data.get("prefetch", 2))
    return nf_data.LoaderSettings(
        batch_size=config.batch_size // jax.process_count(),
        seed=config.seed,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        **(parallel if train else {}),
    )


def on_corrupt(config: ml_collections.ConfigDict) -> str:
    """`data.on_corrupt`: "error" (default) or "skip" for files that cannot be decoded."""
    return config.data.get("on_corrupt", "error")
