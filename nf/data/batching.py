"""The task-independent batching engine: a source -> host-local numpy batches, deterministic and
checkpointable (grain `MapDataset`, so every batch is a pure function of its index).

    loader = LoaderSettings(batch_size=128, seed=0, shard_index=jax.process_index(),
                            shard_count=jax.process_count())
    it = make_pipeline(source, transform, loader)

`transform` is a task's `PipelineTransform` (what each example and batch becomes, train or eval:
`nf.data.classification.ClassificationTrain`/`ClassificationEval`, the segmentation and depth
transforms); `loader` is the `LoaderSettings` every task shares (which examples, in what order,
on which process, with how much parallelism).

* train: source -> global shuffle(seed) per epoch -> repeat(num_epochs or forever) -> the task's
  per-example `transform` seeded by (seed, global example index) -> this process's share
  `[shard_index::shard_count]` (disjoint across processes within each epoch; every process gets
  the same number of examples) -> corrupt images replaced by the next good one (on_corrupt="skip")
  -> batch -> the task's `finalize(batch_index, batch)`.
* eval: single pass, no shuffle; process i takes examples i, i+n, ...; the last batch is padded
  (mask False) so every process yields the same number of batches and each example is counted
  exactly once over all processes.

Classification (`nf.data.classification`), segmentation (`nf.data.segmentation`) and depth
(`nf.data.depth`) differ only in their per-example transform and batch finalization.

`mp_prefetch` worker processes (worker_count > 0) each compute whole batches (worker w gets
batches w, w+W, ...; grain interleaves them back in order), so the batches are identical for any
worker count. The iterator's state is the number of batches consumed (plus a fingerprint of the
settings that decide batch contents), so it can be saved with
`grain.checkpoint.CheckpointSave(it)` inside an orbax `Composite` and restored with
`CheckpointRestore(it)` -- even with a different worker count.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grain
import numpy as np
from absl import flags, logging

from nf.data import transforms as T

MAX_CONSECUTIVE_CORRUPT = 64


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class LoaderSettings:
    """Which examples a process reads, in what order, with how much parallelism: the settings every
    task's pipeline shares (what an example becomes is the task's `PipelineTransform`).

    Attributes:
      batch_size: per-process batch size.
      seed: the example order, augmentation and MixUp/CutMix are functions of (seed, index). Pass the
        same seed on every process (the global shuffle is shared; shards differ by shard_index).
      num_epochs: train only; None repeats forever. Eval is always one pass.
      shard_index, shard_count: this process and the number of processes (jax.process_index(),
        jax.process_count()); each process sees a disjoint share of every epoch.
      worker_count: grain worker processes (0: in this process, with `read_threads` threads).
      prefetch: batches buffered ahead (per worker when worker_count > 0).
      read_threads: background threads per process computing batches (in each worker when
        worker_count > 0), overlapping the train step; PIL decodes without the GIL.
      drop_remainder: train with finite num_epochs: drop the last partial batch.
    """

    batch_size: int
    seed: int = 0
    num_epochs: int | None = None
    shard_index: int = 0
    shard_count: int = 1
    worker_count: int = 0
    prefetch: int = 2
    read_threads: int = 1
    drop_remainder: bool = True

    def __post_init__(self):
        _check_positive_int("batch_size", self.batch_size)
        _check_positive_int("shard_count", self.shard_count)
        if _check_positive_int("seed", self.seed, minimum=0) >= 2**32:
            raise ValueError(f"seed must be < 2**32, got {self.seed}")
        if not 0 <= self.shard_index < self.shard_count:
            raise ValueError(f"shard_index must be in [0, shard_count={self.shard_count}), got {self.shard_index}")
        if self.num_epochs is not None:
            _check_positive_int("num_epochs", self.num_epochs)
        _check_positive_int("worker_count", self.worker_count, minimum=0)
        _check_positive_int("prefetch", self.prefetch)
        _check_positive_int("read_threads", self.read_threads)

    def order(self) -> dict[str, int]:
        """The settings that decide which examples form which batch (the iterator's fingerprint)."""
        return {
            "batch_size": int(self.batch_size),
            "seed": int(self.seed),
            "shard_index": int(self.shard_index),
            "shard_count": int(self.shard_count),
        }


class PipelineTransform(Protocol):
    """What a task's input pipeline does to examples and batches (train or eval)."""

    train: bool  # shuffled, augmented, repeated (True) or one padded, masked pass (False)

    def example_map(self) -> grain.transforms.RandomMap | grain.transforms.Map:
        """Source record -> one example dict holding `mask` (bool) and `_corrupt` (int32) besides its
        data; a `RandomMap` (train, seeded by the global example index) or a `Map` (eval), turning a
        `{"padding": True}` record into a blank, mask-False example of the same shapes."""

    def batch_map(self, source, loader: LoaderSettings) -> grain.transforms.MapWithIndex | None:
        """`finalize(batch_index, batch)` for stacked batches, or None."""

    def fingerprint(self) -> dict[str, Any]:
        """Task-specific entries of the iterator's fingerprint (resuming with others raises)."""


class _ReplaceCorrupt(grain.MapDataset):
    """Slot i holds example i, or (if i is a skipped corrupt image) the next good example.

    Keeps the batch shape and stays a pure function of the index (so worker counts and resumption
    do not change anything). `_corrupt` stays 1 in slot i iff example i itself was corrupt, so the
    iterator counts every skipped image once.
    """

    def __init__(self, parent: grain.MapDataset):
        super().__init__(parent)

    def __len__(self) -> int:
        return len(self._parent)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        n = len(self._parent)
        element = self._parent[index]
        if not element["_corrupt"]:
            return element
        for k in range(1, MAX_CONSECUTIVE_CORRUPT + 1):
            other = self._parent[(index + k) % n]
            if not other["_corrupt"]:
                return {**other, "_corrupt": np.int32(1)}
        raise T.CorruptImageError(
            f"{MAX_CONSECUTIVE_CORRUPT + 1} corrupt images in a row (at position {index} of this process's stream); "
            "is the dataset damaged? The warnings above name the files"
        )

    def __str__(self) -> str:
        return "ReplaceCorrupt"


class _EvalShard:
    """Eval records of one process: its strided share of the source, then padding records."""

    def __init__(self, source, shard_index: int, shard_count: int, length: int):
        self.source, self.shard_index, self.shard_count, self.length = source, shard_index, shard_count, length
        self._n = len(source)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, k):
        g = int(k) * self.shard_count + self.shard_index
        return self.source[g] if g < self._n else {"padding": True}


def build_batches(
    source,
    transform: grain.transforms.RandomMap | grain.transforms.Map,
    finalize: grain.transforms.MapWithIndex | None,
    *,
    train: bool,
    loader: LoaderSettings,
) -> grain.MapDataset:
    """The task-independent pipeline (module docstring) as a grain `MapDataset` of batches: `transform`
    and `finalize` are a `PipelineTransform`'s `example_map()` and `batch_map(...)`."""
    batch_size, num_epochs = loader.batch_size, loader.num_epochs
    shard_index, shard_count = loader.shard_index, loader.shard_count
    n = len(source)
    if n == 0:
        raise ValueError(f"{source!r} is empty")
    if train:
        ds = grain.MapDataset.source(source).shuffle(seed=loader.seed).repeat(num_epochs)
        # Augment before sharding: the randomness is keyed by the global example index.
        ds = ds.random_map(transform, seed=int(np.random.SeedSequence([loader.seed, 1]).generate_state(1)[0]))
        if n * (num_epochs or 1) < shard_count:
            raise ValueError(f"{n} examples cannot be split over shard_count={shard_count} processes")
        per_process = len(ds) // shard_count if num_epochs is not None else sys.maxsize
        ds = ds[shard_index::shard_count]
        if num_epochs is not None:
            ds = ds[:per_process]  # same number of examples (so of batches) in every process
            if loader.drop_remainder and per_process < batch_size:
                raise ValueError(
                    f"batch_size={batch_size} is larger than the {per_process} examples per process "
                    f"({n} examples x {num_epochs} epochs / {shard_count} processes) and drop_remainder=True"
                )
        ds = _ReplaceCorrupt(ds)
        ds = ds.batch(batch_size, drop_remainder=loader.drop_remainder)
    else:
        per_process = -(-n // shard_count)
        padded = -(-per_process // batch_size) * batch_size
        ds = grain.MapDataset.source(_EvalShard(source, shard_index, shard_count, padded)).map(transform)
        ds = ds.batch(batch_size, drop_remainder=False)
    return ds if finalize is None else ds.map_with_index(finalize)


class DataIterator(grain.DatasetIterator):
    """Iterator over the batches of `build_batches`, with worker processes and a small state.

    State (JSON): {"next_batch": k, "num_skipped": s, "fingerprint": {...}}. Restoring re-opens
    the pipeline at batch k (no replay), with any worker count; a fingerprint mismatch (other
    seed, batch size, sharding, dataset size, train/eval) raises instead of silently changing the
    data. Changing num_epochs, image_size or the augmentation options on resume is allowed (the
    example order does not depend on them).

    Attributes:
      num_batches: batches in a full pass (None when infinite).
      num_skipped: corrupt images skipped so far (on_corrupt="skip"); each one is also logged
        with its file name where it was decoded.
    """

    def __init__(
        self,
        batches: grain.MapDataset,
        *,
        worker_count: int = 0,
        prefetch: int = 2,
        read_threads: int = 1,
        fingerprint: dict[str, Any] | None = None,
    ):
        super().__init__()
        self._batches = batches
        self._worker_count = _check_positive_int("worker_count", worker_count, minimum=0)
        self._prefetch = _check_positive_int("prefetch", prefetch)
        self._read_threads = _check_positive_int("read_threads", read_threads)
        self._fingerprint = dict(fingerprint or {})
        self._next_batch = 0
        self._num_skipped = 0
        self._num_converted: dict[str, int] = {}  # conversion kind (transforms.CONVERSIONS) -> images
        self._inner: grain.DatasetIterator | None = None
        self.num_batches = None if len(batches) >= sys.maxsize else len(batches)

    @property
    def num_skipped(self) -> int:
        return self._num_skipped

    def input_summary(self) -> str:
        """One line for the run summary: files skipped and image reads converted to 8-bit RGB so far
        (a grayscale file read in every epoch counts once per read)."""
        total = sum(self._num_converted.values())
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self._num_converted.items()))
        line = f"  input: {self._num_skipped} unreadable file(s) skipped, {total} image read(s) converted to 8-bit RGB"
        return line + (f" ({kinds})" if kinds else "")

    @property
    def next_batch(self) -> int:
        return self._next_batch

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("infinite training iterator has no len(); pass num_epochs to make it finite")
        return self.num_batches

    def _open(self) -> grain.DatasetIterator:
        if self._inner is None:
            if self._worker_count > 0 and not flags.FLAGS.is_parsed():
                # grain's spawned workers read absl flags; parse them (defaults) like `app.run` would.
                flags.FLAGS.mark_as_parsed()
            ds = self._batches[self._next_batch :]
            threads = self._read_threads
            read = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(threads, self._prefetch))
            it_ds = ds.to_iter_dataset(read)
            if self._worker_count > 0:
                it_ds = it_ds.mp_prefetch(
                    grain.MultiprocessingOptions(num_workers=self._worker_count, per_worker_buffer_size=self._prefetch)
                )
            self._inner = iter(it_ds)
        return self._inner

    def __next__(self) -> dict[str, np.ndarray]:
        self._assert_not_closed()
        if self.num_batches is not None and self._next_batch >= self.num_batches and self._inner is None:
            raise StopIteration
        try:
            batch = dict(next(self._open()))
        except StopIteration:
            self._close_inner()
            raise
        self._next_batch += 1
        converted = np.asarray(batch.pop("_converted", 0)).ravel()
        for code in converted[converted > 0]:
            kind = T.CONVERSIONS[int(code) - 1]
            self._num_converted[kind] = self._num_converted.get(kind, 0) + 1
        skipped = int(np.sum(batch.pop("_corrupt")))
        if skipped:
            self._num_skipped += skipped
            logging.warning(
                "batch %d: %d corrupt image(s) skipped (%d so far); their file names are in the warnings above "
                "(or in the grain worker logs)",
                self._next_batch - 1,
                skipped,
                self._num_skipped,
            )
        return batch

    def get_state(self) -> dict[str, Any]:
        return {
            "next_batch": self._next_batch,
            "num_skipped": self._num_skipped,
            "num_converted": dict(self._num_converted),
            "fingerprint": dict(self._fingerprint),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        saved = state.get("fingerprint", {})
        diff = {k: (saved.get(k), v) for k, v in self._fingerprint.items() if k in saved and saved.get(k) != v}
        if diff:
            details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(diff.items()))
            raise ValueError(
                f"cannot restore the data iterator: the checkpoint was written for a different pipeline ({details}); "
                "restoring would silently change the data order"
            )
        self._close_inner()
        self._next_batch = int(state["next_batch"])
        self._num_skipped = int(state.get("num_skipped", 0))
        self._num_converted = dict(state.get("num_converted", {}))

    def set_state_from_other_sharding(self, states: Sequence[dict[str, Any]]) -> int:
        """Position this iterator where the processes that saved `states` (one per process, another
        process count) left off; returns the global example position.

        Batch k of every process together holds global stream positions [k*G, (k+1)*G) for global
        batch G = batch_size * shard_count, whatever the process count, so continuing at the saved
        batch index repeats and skips nothing as long as G is unchanged (checked). Only the split
        of each global batch over processes (and per-process MixUp/CutMix/RandAugment draws) differ.
        """
        mine = self._fingerprint
        global_batch = mine["batch_size"] * mine["shard_count"]
        for state in states:
            saved = state.get("fingerprint", {})
            same = {k: (saved.get(k), mine[k]) for k in ("train", "num_examples", "seed") if saved.get(k) != mine[k]}
            if saved.get("batch_size", 0) * saved.get("shard_count", 0) != global_batch:
                same["global batch"] = (saved.get("batch_size", 0) * saved.get("shard_count", 0), global_batch)
            if same:
                details = ", ".join(f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in sorted(same.items()))
                raise ValueError(
                    f"cannot restore the data iterator on {mine['shard_count']} process(es): the checkpoint was "
                    f"written for a different pipeline ({details}); restoring would silently change the data order"
                )
        positions = sorted({int(s["next_batch"]) for s in states})
        if len(positions) != 1:
            raise ValueError(f"the saved data iterators of the processes disagree on the batch index: {positions}")
        self._close_inner()
        self._next_batch = positions[0]
        # Keep the global count of skipped corrupt images (held by process 0 from now on).
        self._num_skipped = sum(int(s.get("num_skipped", 0)) for s in states) if mine["shard_index"] == 0 else 0
        return positions[0] * global_batch

    def start_prefetch(self) -> None:
        if self.num_batches is None or self._next_batch < self.num_batches:
            self._open().start_prefetch()

    def _close_inner(self) -> None:
        if self._inner is not None:
            self._inner.close()
            self._inner = None

    def close(self) -> None:
        self._close_inner()
        super().close()

    def __str__(self) -> str:
        return f"DataIterator(next_batch={self._next_batch}, workers={self._worker_count})"


def make_pipeline(source, transform: PipelineTransform, loader: LoaderSettings) -> DataIterator:
    """Every task's input pipeline: `source` read as `loader` says, each example and batch made by
    `transform` (a `PipelineTransform`); returns the checkpointable iterator of numpy batch dicts.

    The iterator's fingerprint is the loader's `order()`, the dataset size, train/eval and the
    transform's own entries.
    """
    train = bool(transform.train)
    batches = build_batches(
        source, transform.example_map(), transform.batch_map(source, loader), train=train, loader=loader
    )
    fingerprint = {"train": train, "num_examples": len(source), **loader.order(), **transform.fingerprint()}
    return DataIterator(
        batches,
        worker_count=loader.worker_count,
        prefetch=loader.prefetch,
        read_threads=loader.read_threads,
        fingerprint=fingerprint,
    )
