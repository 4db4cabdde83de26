"""One writer per workdir: `workdir/nf-train.lock`, taken before anything is written.

Local (and NFS) workdirs: an exclusive `flock` on the lock file, which the kernel drops when the
holder exits in any way (kill -9 included), so a lock can never outlive its process. The file
names the holder (process id, host, UTC start time, command) for the error a second trainer gets.
A file that still names a holder while nobody holds the lock was left by a process that died: the
new run takes it over with a warning. A clean exit empties the file (it is never deleted: deleting
would let two late-comers lock two different files).

Object stores (`gs://...`) have no locks: there the lock is an object holding the same fields,
written after checking that none exists. Two runs started within the same second can both pass
(a documented limitation); a leftover object of a dead process on this host is taken over, one of
another host must be deleted by hand (the error says how).

Multi-process runs: process 0 holds the lock for all of them. `nf-train` takes it right after the
JAX runtime is up, before the trainer's heavy imports, so a second run fails within seconds; the
trainer's own `WorkdirLock` is then a no-op (re-entrant within one process).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any

from absl import logging
from etils import epath

LOCK_NAME = "nf-train.lock"
_held: dict[str, int] = {}  # lock path -> how many `WorkdirLock`s of this process hold it (re-entrant)


class WorkdirBusyError(RuntimeError):
    """Another trainer holds the workdir's lock; the message names it."""


def _me() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(sys.argv)[:500],
    }


def _describe(holder: dict[str, Any]) -> str:
    return f"process {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"


def _parse(text: str) -> dict[str, Any] | None:
    try:
        holder = json.loads(text)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) else None


def _alive_here(holder: dict[str, Any]) -> bool | None:
    """Whether the holder process runs (None: it is on another host, unknown)."""
    if holder.get("host") != socket.gethostname():
        return None
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, KeyError, ValueError, TypeError):
        return True
    return True


class WorkdirLock:
    """`with WorkdirLock(workdir): ...` holds the workdir for this process (see the module docstring)."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.path = epath.Path(workdir) / LOCK_NAME
        self.enabled = enabled
        self._remote = "://" in str(workdir)
        self._fd: int | None = None
        self._nested = False

    def __enter__(self) -> WorkdirLock:
        if not self.enabled:
            return self
        key = str(self.path)
        if _held.get(key):  # this process holds it already (`nf-train` takes it before the trainer)
            _held[key] += 1
            self._nested = True
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._acquire_remote() if self._remote else self._acquire_local()
        _held[key] = 1
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _busy(self, holder: dict[str, Any] | None) -> WorkdirBusyError:
        who = _describe(holder) if holder else "another process (it has not written its details yet)"
        pid = holder.get("pid") if holder else None
        stop = f"stop it (`kill -TERM {pid}` saves a checkpoint first)" if pid else "stop it"
        return WorkdirBusyError(
            f"Workdir {self.path.parent} is in use by another nf-train run: {who} (lock {self.path}). "
            f"Two runs in one workdir overwrite each other's checkpoints and metrics. Wait for it to finish, "
            f"{stop}, or use another --workdir."
        )

    def _acquire_local(self) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _parse(os.pread(fd, 1 << 16, 0).decode(errors="replace"))
            os.close(fd)
            raise self._busy(holder) from None
        previous = _parse(os.pread(fd, 1 << 16, 0).decode(errors="replace"))
        if previous:
            logging.warning(
                "Taking over the lock of workdir %s: its holder (%s) exited without releasing it.",
                self.path.parent,
                _describe(previous),
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_me()).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def _acquire_remote(self) -> None:
        if self.path.exists():
            holder = _parse(self.path.read_text())
            if holder and _alive_here(holder) is not False:
                err = self._busy(holder)
                raise WorkdirBusyError(
                    f"{err} If that run is gone (an object store cannot tell), delete {self.path} and start again."
                )
            logging.warning(
                "Taking over the lock object %s of a process that no longer runs (%s).",
                self.path,
                _describe(holder or {}),
            )
        self.path.write_text(json.dumps(_me()))
        self._fd = -1

    def release(self) -> None:
        if self._nested:
            self._nested = False
            _held[str(self.path)] -= 1
            return
        if self._fd is None:
            return
        _held.pop(str(self.path), None)
        fd, self._fd = self._fd, None
        if fd == -1:
            self.path.unlink(missing_ok=True)
            return
        os.ftruncate(fd, 0)  # a clean exit: no holder named; the kernel drops the flock with the fd
        os.close(fd)
