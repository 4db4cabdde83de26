"""Disk space and a writable workdir: checked before they can cost a run, reported in one message
when they fail.

* `check_writable(workdir)`: before anything is compiled, the workdir is created and a probe file
  written, fsynced and removed; a read-only filesystem, missing permissions or a full disk is
  refused with one error naming the directory.
* `warn_if_short(directory, needed)`: before each checkpoint save, `shutil.disk_usage` against the
  size of the last saved step (or the state's bytes before the first save) with a margin; a
  warning names both figures, while there is still time to free space.
* `DiskFullError` / `disk_full_message`: a save that hits ENOSPC (Orbax raises it as
  `RESOURCE_EXHAUSTED ... [os_error_code='28']` from several of its threads) becomes one error
  naming the workdir, the bytes needed and free, the last intact step and what to do;
  `DiskFullLogFilter` drops the copies Orbax's threads log on the way.
Object stores (`gs://...`) have no free-space figure: only the local checks are made.
"""

from __future__ import annotations

import contextlib
import errno
import logging as std_logging
import os
import re
import shutil
from pathlib import Path

import jax
import numpy as np
from absl import logging
from etils import epath

from nf.train import checkpoint_health

DISK_FULL_EXIT_CODE = errno.ENOSPC  # nf-train's exit status after a full disk (28)
SAVE_MARGIN = 1.2  # a save needs the last step's size plus this fraction (metadata, TensorBoard, logs)
_ENOSPC_TEXT = re.compile(r"No space left on device|os_error_code='?28'?|\[Errno 28\]")


class WorkdirNotWritableError(OSError):
    """The workdir cannot be created or written; the message says which and why."""


class DiskFullError(OSError):
    """A checkpoint save ran out of disk space; the message says what was lost (nothing) and what to do."""


def is_disk_full(error: BaseException | None) -> bool:
    """Whether `error`, or an exception it was raised from, is ENOSPC (as OSError or as the text
    Orbax/TensorStore wrap it in)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if _ENOSPC_TEXT.search(str(error)):
            return True
        error = error.__cause__ or error.__context__
    return False


def _is_remote(path: str) -> bool:
    return "://" in str(path)


def _existing_ancestor(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes free to this user on the filesystem that holds (or will hold) `path`."""
    return shutil.disk_usage(_existing_ancestor(Path(path))).free


def tree_bytes(path: str | os.PathLike) -> int:
    """Bytes of the files under `path` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # removed meanwhile (orbax deleting an old step)
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def state_bytes(state) -> int:
    """Bytes of the arrays of a (global) train state: the first save's estimate."""
    return int(sum(np.prod(x.shape, dtype=np.int64) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state)))


def human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} TB"


def check_writable(workdir: str) -> None:
    """Create `workdir` and write, fsync and remove a probe file in it; `WorkdirNotWritableError`
    naming the directory otherwise (before any compile: a run that cannot save is refused early)."""
    if _is_remote(workdir):
        return
    probe = Path(workdir) / f".nf-write-probe-{os.getpid()}"
    try:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"nf")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        why = e.strerror or str(e)
        hint = (
            f"free space there ({human(free_bytes(workdir))} free)"
            if e.errno == errno.ENOSPC
            else "choose a --workdir you can write to, or fix its permissions / mount"
        )
        raise WorkdirNotWritableError(
            e.errno, f"--workdir={workdir} cannot be written ({why} at {e.filename or workdir}): {hint}. Nothing ran."
        ) from e


def last_intact_step(directory: str | os.PathLike) -> int | None:
    """The newest step folder of `directory` whose structure is intact (`checkpoint_health.damage`)."""
    directory = epath.Path(directory)  # local or gs://
    if not directory.is_dir():
        return None
    steps = sorted((int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir()), reverse=True)
    for step in steps:
        if checkpoint_health.damage(directory / str(step), need_data=False) is None:
            return step
    return None


def checkpoint_estimate(directory: str, latest_step: int | None, state) -> int:
    """Bytes the next save will write: the last saved step's size on disk, else the state's bytes."""
    if latest_step is not None:
        size = tree_bytes(Path(directory) / str(latest_step))
        if size:
            return size
    return state_bytes(state)


def warn_if_short(directory: str, step: int, needed: int) -> bool:
    """Warn (and return True) when the filesystem of `directory` has less than `needed` x
    `SAVE_MARGIN` bytes free for the save of `step`."""
    if _is_remote(directory):
        return False
    free = free_bytes(directory)
    if free >= needed * SAVE_MARGIN:
        return False
    logging.warning(
        "Low disk space: the checkpoint of step %d needs about %s in %s, only %s are free; the save will "
        "probably fail. Free space there now (the run keeps going until then).",
        step,
        human(needed * SAVE_MARGIN),
        directory,
        human(free),
    )
    return True


def remove_unfinished_save(directory: str, step: int) -> None:
    """Delete the temporary folder of a save of `step` that failed (Orbax commits a step by renaming
    `<step>.orbax-checkpoint-tmp*`; an uncommitted one is never read and only takes space)."""
    for path in Path(directory).glob(f"{step}.orbax-checkpoint-tmp*"):
        shutil.rmtree(path, ignore_errors=True)


def disk_full_message(directory: str, step: int | None, needed: int) -> str:
    """The one message of a save that ran out of space (`directory`: the checkpoints folder)."""
    workdir = os.path.dirname(os.path.abspath(directory))
    free = free_bytes(directory)
    last = last_intact_step(directory)
    saving = f"saving the checkpoint of step {step}" if step is not None else "writing the workdir"
    kept = (
        f"The last intact checkpoint is step {last} ({directory}/{last}); nothing saved before was lost."
        if last is not None
        else "No checkpoint was saved yet: the run starts from step 0 again."
    )
    resume = f"step {last}" if last is not None else "the start"
    if needed > 0:
        need = needed * SAVE_MARGIN
        space = (
            f"A checkpoint needs about {human(need)} ({needed:,} bytes and a {SAVE_MARGIN - 1:.0%} margin); "
            f"{human(free)} ({free:,} bytes) are free. {kept} Free at least {human(max(need - free, 0))} on that "
            "filesystem"
        )
    else:
        space = f"{human(free)} ({free:,} bytes) are free. {kept} Free space on that filesystem"
    return (
        f"Disk full: {saving} in {workdir} failed (No space left on device). {space} (or move the whole "
        f"workdir to a larger disk), then run the same command again: it resumes from {resume}."
    )


def disk_full_report(error: BaseException, workdir: str) -> str | None:
    """The message for an exception that ended a run on a full disk (a `DiskFullError`'s own, or one
    for ENOSPC from anywhere else: metrics, TensorBoard), None when the disk was not full."""
    seen, chain = set(), error
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        if isinstance(chain, DiskFullError):
            return chain.strerror
        chain = chain.__cause__ or chain.__context__
    if not is_disk_full(error):
        return None
    directory = os.path.join(workdir, "checkpoints")
    last = last_intact_step(directory)
    return disk_full_message(directory, None, tree_bytes(Path(directory) / str(last)) if last is not None else 0)


class DiskFullLogFilter(std_logging.Filter):
    """Drops log records about ENOSPC (Orbax logs the same failure from each of its threads);
    the run reports it once, as `DiskFullError`."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not (is_disk_full(error) or _ENOSPC_TEXT.search(record.getMessage()))


def filter_disk_full_logs() -> None:
    """Install `DiskFullLogFilter` on the root logger's handlers (absl's among them)."""
    for handler in std_logging.getLogger().handlers:
        if not any(isinstance(f, DiskFullLogFilter) for f in handler.filters):
            handler.addFilter(DiskFullLogFilter())
