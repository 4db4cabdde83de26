"""The input pipeline: a source -> host-local numpy batches, deterministic and checkpointable.

    it = make_pipeline(source, train=True, batch_size=128, image_size=32, seed=0,
                       shard_index=jax.process_index(), shard_count=jax.process_count(),
                       worker_count=2)
    batch = next(it)

Batch format (every batch, train and eval; B = per-process `batch_size`, C = `num_classes`):

    image         float32 (B, px, px, 3)  normalized (transforms.normalize), NHWC
    label         int32   (B,)            class index of the (primary) image
    label_onehot  float32 (B, C)          the training target: one-hot, or the MixUp/CutMix
                                          mixture (rows sum to 1); all-zero rows where mask is False
    mask          bool    (B,)            True for a real example; False for eval padding and for
                                          a skipped corrupt eval image. Always True in training.

Losses should use `label_onehot` (label smoothing goes on top of it); accuracy uses `label`
and `mask`.

How it is built (grain `MapDataset`, so every batch is a pure function of its index):

* train: source -> global shuffle(seed) per epoch -> repeat(num_epochs or forever) -> per-example
  random augmentation seeded by (seed, global example index; uint8) -> this process's share
  `[shard_index::shard_count]` (disjoint across processes within each epoch; every process gets
  the same number of examples) -> corrupt images replaced by the next good one (on_corrupt="skip")
  -> batch -> one-hot, MixUp/CutMix (on float 0..255 images) with a numpy Generator seeded by
  (seed, shard_index, step) -> RandAugment (uint8, optional) with a Generator per example from
  (seed, shard_index, step, example in batch) -> normalize.
* eval: single pass, no shuffle; process i takes examples i, i+n, ...; the last batch is padded
  (mask False) so every process yields the same number of batches and each example is counted
  exactly once over all processes.

The task-independent part (shuffle, repeat, sharding, corrupt-file replacement, eval padding,
batching, the iterator) is `build_batches` / `make_iterator`; classification (`make_pipeline`),
segmentation (`nf.data.segmentation`) and depth (`nf.data.depth`) differ only in their
per-example transform and batch finalization.

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
from typing import Any

import grain
import numpy as np
from absl import flags, logging

from nf.data import transforms as T
from nf.data.randaugment import RandAugment

MAX_CONSECUTIVE_CORRUPT = 64


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


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


class _FinalizeBatch(grain.transforms.MapWithIndex):
    """Batch index -> one-hot targets, MixUp/CutMix, RandAugment, normalization.

    Order (paper App. A, the NFNet recipe "MixUp + CutMix then RandAugment"): the uint8 images
    become float32 in 0..255; MixUp/CutMix (numpy Generator seeded by (seed, shard, step)) mix them
    (linear, so this equals mixing normalized images); RandAugment then works on the mixture
    rounded to uint8, each example with its own Generator from (seed, shard, step, example);
    finally `normalize`. Without mixing or RandAugment the uint8 batch is normalized directly.
    """

    def __init__(
        self,
        num_classes: int,
        seed: int,
        shard_index: int,
        mixup_alpha: float,
        cutmix: bool,
        randaugment: RandAugment | None = None,
        mean: Sequence[float] = tuple(T.MEAN_RGB),
        std: Sequence[float] = tuple(T.STDDEV_RGB),
    ):
        self.num_classes, self.seed, self.shard_index = num_classes, seed, shard_index
        self.mean, self.std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
        self.mixup_alpha, self.cutmix = mixup_alpha, cutmix
        self.randaugment = randaugment

    def map_with_index(self, index: int, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        labels = batch["label"]
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = labels[(labels < 0) | (labels >= self.num_classes)][0]
            raise ValueError(f"label {int(bad)} is outside [0, num_classes={self.num_classes})")
        mask = batch["mask"].astype(bool)
        targets = T.one_hot(labels, self.num_classes, mask)
        image = batch["image"]
        mixing = self.mixup_alpha > 0 or self.cutmix
        if mixing or self.randaugment is not None:
            image = np.asarray(image, np.float32)  # 0..255
            image[~mask] = self.mean  # blank slots are zero after normalization, as below
            if mixing:
                rng = np.random.default_rng([self.seed, self.shard_index, index])
                image, targets = T.mix_batch(image, targets, rng, mixup_alpha=self.mixup_alpha, cutmix=self.cutmix)
            if self.randaugment is not None:
                image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
                image = self.randaugment.augment_batch(image, (self.seed, self.shard_index, index), mask)
        image = T.normalize(image, self.mean, self.std)
        image[~mask] = 0.0
        return {
            "image": image,
            "label": labels.astype(np.int32),
            "label_onehot": targets,
            "mask": mask,
            **{k: v for k, v in batch.items() if k.startswith("_")},  # bookkeeping (_corrupt, _converted)
        }


def build_batches(
    source,
    transform: grain.transforms.RandomMap | grain.transforms.Map,
    finalize: grain.transforms.MapWithIndex | None = None,
    *,
    train: bool,
    batch_size: int,
    seed: int = 0,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    drop_remainder: bool = True,
) -> grain.MapDataset:
    """The task-independent pipeline (module docstring) as a grain `MapDataset` of batches.

    `transform` maps a source record to one example dict holding `mask` (bool) and `_corrupt`
    (int32) besides its data; it is a `RandomMap` (train: seeded by the global example index) or
    a `Map` (eval), and must turn a `{"padding": True}` record into a blank, mask-False example of
    the same shapes. `finalize(batch_index, batch)` (optional) post-processes stacked batches.
    Classification, segmentation and depth all go through here.
    """
    batch_size = _check_positive_int("batch_size", batch_size)
    shard_count = _check_positive_int("shard_count", shard_count)
    seed = _check_positive_int("seed", seed, minimum=0)
    if seed >= 2**32:
        raise ValueError(f"seed must be < 2**32, got {seed}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index must be in [0, shard_count={shard_count}), got {shard_index}")
    if num_epochs is not None:
        num_epochs = _check_positive_int("num_epochs", num_epochs)
    n = len(source)
    if n == 0:
        raise ValueError(f"{source!r} is empty")
    if train:
        ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat(num_epochs)
        # Augment before sharding: the randomness is keyed by the global example index.
        ds = ds.random_map(transform, seed=int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]))
        if n * (num_epochs or 1) < shard_count:
            raise ValueError(f"{n} examples cannot be split over shard_count={shard_count} processes")
        per_process = len(ds) // shard_count if num_epochs is not None else sys.maxsize
        ds = ds[shard_index::shard_count]
        if num_epochs is not None:
            ds = ds[:per_process]  # same number of examples (so of batches) in every process
            if drop_remainder and per_process < batch_size:
                raise ValueError(
                    f"batch_size={batch_size} is larger than the {per_process} examples per process "
                    f"({n} examples x {num_epochs} epochs / {shard_count} processes) and drop_remainder=True"
                )
        ds = _ReplaceCorrupt(ds)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    else:
        per_process = -(-n // shard_count)
        padded = -(-per_process // batch_size) * batch_size
        ds = grain.MapDataset.source(_EvalShard(source, shard_index, shard_count, padded)).map(transform)
        ds = ds.batch(batch_size, drop_remainder=False)
    return ds if finalize is None else ds.map_with_index(finalize)


def make_dataset(
    source,
    *,
    train: bool,
    batch_size: int,
    image_size: int,
    seed: int = 0,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    num_classes: int | None = None,
    mixup_alpha: float = 0.0,
    cutmix: bool = False,
    randaugment_layers: int = 0,
    randaugment_magnitude: float = 0.0,
    drop_remainder: bool = True,
    eval_crop: str = "center_crop",
    crop_padding: int = T.CROP_PADDING,
    crop_pct: float | None = None,
    interpolation: str = "bicubic",
    mean: Sequence[float] = tuple(T.MEAN_RGB),
    std: Sequence[float] = tuple(T.STDDEV_RGB),
    crop_area_range: tuple[float, float] = (0.08, 1.0),
    crop_aspect_range: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    on_corrupt: str = "error",
    fast_jpeg: bool = True,
) -> grain.MapDataset:
    """The classification pipeline as a grain `MapDataset` of batches (module docstring); no iteration yet."""
    if mixup_alpha < 0:
        raise ValueError(f"mixup_alpha must be >= 0 (0 turns MixUp off), got {mixup_alpha}")
    if num_classes is None:
        num_classes = getattr(source, "num_classes", None)
        if num_classes is None:
            raise ValueError(f"{source!r} has no `num_classes`; pass num_classes=")
    randaugment = RandAugment(randaugment_layers, randaugment_magnitude)  # validated in eval too
    if not (train and randaugment.num_layers):
        randaugment = None
    finalize = _FinalizeBatch(
        num_classes, seed, shard_index, mixup_alpha if train else 0.0, cutmix and train, randaugment, mean, std
    )
    if train:
        transform = T.TrainTransform(
            image_size,
            area_range=crop_area_range,
            aspect_range=crop_aspect_range,
            hflip=hflip,
            on_corrupt=on_corrupt,
            fast_jpeg=fast_jpeg,
        )
    else:
        transform = T.EvalTransform(
            image_size,
            eval_crop=eval_crop,
            crop_padding=crop_padding,
            crop_pct=crop_pct,
            interpolation=interpolation,
            on_corrupt=on_corrupt,
            fast_jpeg=fast_jpeg,
        )
    return build_batches(
        source,
        transform,
        finalize,
        train=train,
        batch_size=batch_size,
        seed=seed,
        num_epochs=num_epochs,
        shard_index=shard_index,
        shard_count=shard_count,
        drop_remainder=drop_remainder,
    )


class DataIterator(grain.DatasetIterator):
    """Iterator over the batches of `make_dataset`, with worker processes and a small state.

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


def make_pipeline(
    source,
    *,
    train: bool,
    batch_size: int,
    image_size: int,
    seed: int = 0,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    worker_count: int = 0,
    prefetch: int = 2,
    read_threads: int = 1,
    num_classes: int | None = None,
    mixup_alpha: float = 0.0,
    cutmix: bool = False,
    randaugment_layers: int = 0,
    randaugment_magnitude: float = 0.0,
    drop_remainder: bool = True,
    eval_crop: str = "center_crop",
    crop_padding: int = T.CROP_PADDING,
    crop_pct: float | None = None,
    interpolation: str = "bicubic",
    mean: Sequence[float] = tuple(T.MEAN_RGB),
    std: Sequence[float] = tuple(T.STDDEV_RGB),
    crop_area_range: Sequence[float] = (0.08, 1.0),
    crop_aspect_range: Sequence[float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    on_corrupt: str = "error",
    fast_jpeg: bool = True,
) -> DataIterator:
    """Builds the input pipeline and returns its (checkpointable) iterator of numpy batch dicts.

    Args:
      source: a random-access source of {"image": bytes, "label": int, "path": str} records
        (`nf.data.ImageFolderSource`, `nf.data.ArrayRecordImageSource`) with `num_classes`.
      train: training (shuffled, augmented, repeated) or evaluation (one padded pass) pipeline.
      batch_size: per-process batch size.
      image_size: output side px.
      seed: data order, augmentation and MixUp/CutMix are functions of (seed, index). Pass the
        same seed on every process (the global shuffle is shared; shards differ by shard_index).
      num_epochs: train only; None repeats forever. Eval is always one pass.
      shard_index, shard_count: this process and the number of processes (jax.process_index(),
        jax.process_count()); each process sees a disjoint share of every epoch.
      worker_count: grain worker processes (0: in this process, with `read_threads` threads).
      prefetch: batches buffered ahead (per worker when worker_count > 0).
      read_threads: background threads per process computing batches (in each worker when
        worker_count > 0). Batches are computed off the main thread, overlapping the train step;
        more threads help mostly for large JPEGs (PIL decodes without the GIL).
      num_classes: defaults to `source.num_classes`.
      mixup_alpha, cutmix: train only. MixUp ratio ~ Beta(mixup_alpha, mixup_alpha) (0: off);
        CutMix on/off; both on: half the batch each (paper App. A).
      randaugment_layers, randaugment_magnitude: train only. RandAugment (`nf.data.randaugment`)
        with this many random ops per image (0: off) at this magnitude (10-scale), applied after
        MixUp/CutMix on the uint8-rounded images, before normalization (the NFNet recipe).
      drop_remainder: train with finite num_epochs: drop the last partial batch.
      eval_crop: "center_crop" (NF-RegNet), "resize_crop" (NFNet) or "resize_short_crop" (timm),
        see `transforms.EvalTransform`.
      crop_padding: eval crops px of px + crop_padding (default 32; 0: the whole image).
      crop_pct, interpolation: eval only; the crop fraction (overrides crop_padding) and the
        resampling filter (`transforms.INTERPOLATIONS`).
      mean, std: per-channel normalization on the 0..255 scale (default ImageNet's).
      crop_area_range, crop_aspect_range, hflip: train augmentation (Inception crop + flip).
      on_corrupt: "error" raises `CorruptImageError` naming the file; "skip" logs a warning naming
        the file, counts it (`it.num_skipped`) and replaces it (train) or masks it out (eval).
      fast_jpeg: decode large JPEGs at a reduced DCT scale when the crop allows (never below px).
    """
    batches = make_dataset(
        source,
        train=train,
        batch_size=batch_size,
        image_size=image_size,
        seed=seed,
        num_epochs=num_epochs,
        shard_index=shard_index,
        shard_count=shard_count,
        num_classes=num_classes,
        mixup_alpha=mixup_alpha,
        cutmix=cutmix,
        randaugment_layers=randaugment_layers,
        randaugment_magnitude=randaugment_magnitude,
        drop_remainder=drop_remainder,
        eval_crop=eval_crop,
        crop_padding=crop_padding,
        crop_pct=crop_pct,
        interpolation=interpolation,
        mean=tuple(mean),
        std=tuple(std),
        crop_area_range=tuple(crop_area_range),
        crop_aspect_range=tuple(crop_aspect_range),
        hflip=hflip,
        on_corrupt=on_corrupt,
        fast_jpeg=fast_jpeg,
    )
    return open_iterator(
        batches,
        num_examples=len(source),
        train=train,
        batch_size=batch_size,
        seed=seed,
        shard_index=shard_index,
        shard_count=shard_count,
        worker_count=worker_count,
        prefetch=prefetch,
        read_threads=read_threads,
    )


def open_iterator(
    batches: grain.MapDataset,
    *,
    num_examples: int,
    train: bool,
    batch_size: int,
    seed: int,
    shard_index: int,
    shard_count: int,
    worker_count: int = 0,
    prefetch: int = 2,
    read_threads: int = 1,
    **fingerprint: Any,
) -> DataIterator:
    """A `DataIterator` over `build_batches` output, fingerprinted by the settings that decide the
    example order (plus any task-specific `fingerprint` entries, e.g. the crop size)."""
    fingerprint = {
        "train": bool(train),
        "num_examples": int(num_examples),
        "batch_size": int(batch_size),
        "seed": int(seed),
        "shard_index": int(shard_index),
        "shard_count": int(shard_count),
        **fingerprint,
    }
    return DataIterator(
        batches, worker_count=worker_count, prefetch=prefetch, read_threads=read_threads, fingerprint=fingerprint
    )


def make_iterator(
    source,
    transform: grain.transforms.RandomMap | grain.transforms.Map,
    finalize: grain.transforms.MapWithIndex | None = None,
    *,
    train: bool,
    batch_size: int,
    seed: int = 0,
    num_epochs: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    drop_remainder: bool = True,
    worker_count: int = 0,
    prefetch: int = 2,
    read_threads: int = 1,
    **fingerprint: Any,
) -> DataIterator:
    """`build_batches` + `open_iterator`: any task's checkpointable iterator from its transform."""
    order = {"seed": seed, "shard_index": shard_index, "shard_count": shard_count}
    batches = build_batches(
        source,
        transform,
        finalize,
        train=train,
        batch_size=batch_size,
        num_epochs=num_epochs,
        drop_remainder=drop_remainder,
        **order,
    )
    return open_iterator(
        batches,
        num_examples=len(source),
        train=train,
        batch_size=batch_size,
        worker_count=worker_count,
        prefetch=prefetch,
        read_threads=read_threads,
        **order,
        **fingerprint,
    )


def steps_per_epoch(num_examples: int, batch_size: int, shard_count: int = 1) -> int:
    """Training steps per epoch for per-process `batch_size` over `shard_count` processes."""
    return num_examples // (batch_size * shard_count)
