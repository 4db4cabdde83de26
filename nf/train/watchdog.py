"""A multi-process run whose worker dies: the survivors name it and the step to resume from.

Without this, the survivors wait in their next collective until JAX's coordination service
misses the dead worker's heartbeats (100 s by default) and aborts them with a C++ trace that names
neither the worker nor a step. Here each process runs a daemon thread that bumps its own counter
in the coordination service's key-value store every `BEAT_S` seconds and reads the others'; a
counter that has not moved for `timeout_s` seconds (`nf-train --worker_timeout`) means that
worker stopped answering (killed, crashed, or frozen). The thread then prints one line naming
the worker and the last intact checkpoint step (on disk, `nf.train.disk_space.last_intact_step`)
and ends this process at once with `WORKER_LOST_EXIT_CODE` (the collective it may be blocked in
would never return). Counters, not clocks, so hosts need not agree on the time. A worker that
finishes normally marks itself done first, so a slower peer is not reported when it exits.
When worker 0 dies the service dies with it and JAX's runtime aborts every survivor at once, before
this thread can speak: `nf.train.coordinator_guard` (a process outside the worker) then names
worker 0, when the coordinator's address is known (`--coordinator_address` or
JAX_COORDINATOR_ADDRESS).

The coordination client comes from `orbax.checkpoint.multihost.get_jax_distributed_client`, the
accessor Orbax's own multi-host barriers use: JAX 0.10 has no public one (`jax.distributed` offers
only initialize/shutdown, `multihost_utils.live_devices` is a barrier, not a background probe).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator

import jax
from absl import logging

from nf.train import coordinator_guard

BEAT_S = 1.0  # seconds between heartbeats
WORKER_LOST_EXIT_CODE = 75  # EX_TEMPFAIL: restarting every worker with the same command resumes the run
_BEAT_KEY = "nf_watchdog/beat/{}"
_DONE_KEY = "nf_watchdog/done/{}"


def _client():
    """JAX's coordination-service client (see the module docstring for why through Orbax)."""
    from orbax.checkpoint import multihost

    return multihost.get_jax_distributed_client()


class Watchdog(threading.Thread):
    """The heartbeat thread of one process (module docstring)."""

    def __init__(
        self,
        workdir: str,
        timeout_s: float,
        *,
        me: int | None = None,
        count: int | None = None,
        guard: coordinator_guard.Guard | None = None,
    ):
        super().__init__(name="nf-watchdog", daemon=True)
        self.workdir, self.timeout_s, self.guard = workdir, timeout_s, guard
        self.me = jax.process_index() if me is None else me
        self.count = jax.process_count() if count is None else count
        self._stop = threading.Event()
        self.lost: tuple[int, float] | None = None  # (worker, seconds silent) once one is found

    def run(self) -> None:
        client = _client()
        answered = start = time.monotonic()  # the last time the coordination service answered
        seen = {peer: ("", start) for peer in range(self.count) if peer != self.me}
        while not self._stop.wait(BEAT_S):
            try:
                client.key_value_increment(_BEAT_KEY.format(self.me), 1)
                now = answered = time.monotonic()
                for peer, (value, since) in list(seen.items()):
                    if _try_get(client, _DONE_KEY.format(peer)) is not None:
                        del seen[peer]  # finished normally
                        continue
                    beat = _try_get(client, _BEAT_KEY.format(peer)) or ""
                    if beat != value:
                        seen[peer] = (beat, now)
                    elif now - since > self.timeout_s:
                        self._lost(peer, now - since)
            except Exception as e:  # the coordination service (served by worker 0) is gone
                if self._stop.is_set():
                    return
                if self.me != 0:
                    self._lost(0, time.monotonic() - answered)
                logging.warning("The worker watchdog stops: the coordination service failed (%s)", e)
                return

    def _lost(self, worker: int, silent_s: float) -> None:
        self.lost = (worker, silent_s)
        if self.guard is not None:
            self.guard.note()  # reported here: the guard stays silent
        sys.stdout.flush()
        why = f"no heartbeat for {silent_s:.0f} s: its process died or hangs"
        sys.stderr.write(
            coordinator_guard.lost_worker_message(worker, self.count, self.me, self.workdir, why=why) + "\n"
        )
        sys.stderr.flush()
        os._exit(WORKER_LOST_EXIT_CODE)

    def finish(self) -> None:
        """A normal end: tell the peers this worker is done (not lost), stop beating."""
        with contextlib.suppress(Exception):
            _client().key_value_set(_DONE_KEY.format(self.me), "1", allow_overwrite=True)
        self._stop.set()


def _try_get(client, key: str) -> str | None:
    try:
        return client.key_value_try_get(key)
    except Exception as e:  # NOT_FOUND: not written yet
        if "NOT_FOUND" in str(e) or "not found" in str(e).lower():
            return None
        raise


@contextlib.contextmanager
def watch_workers(workdir: str, timeout_s: float, coordinator_address: str | None = None) -> Iterator[Watchdog | None]:
    """Run the body with a `Watchdog` when this is one of several processes, and on workers other
    than 0 a `coordinator_guard` when the coordinator's HOST:PORT is known (`coordinator_address`,
    else JAX_COORDINATOR_ADDRESS). When the body fails in the runtime (a collective erroring because
    a peer vanished), wait up to `timeout_s` for the watchdog to name the lost worker before the
    error propagates."""
    if jax.process_count() == 1:
        yield None
        return
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    me, count = jax.process_index(), jax.process_count()
    guard = coordinator_guard.start(address, me, count, workdir) if address and me != 0 else None
    dog = Watchdog(workdir, timeout_s, me=me, count=count, guard=guard)
    dog.start()
    try:
        yield dog
    except jax.errors.JaxRuntimeError:  # e.g. a collective failing because a peer vanished
        deadline = time.monotonic() + timeout_s + 2 * BEAT_S
        while dog.is_alive() and time.monotonic() < deadline:  # it exits the process if a peer is lost
            time.sleep(BEAT_S / 4)
        raise
    finally:
        if guard is not None:
            guard.note()  # the watched block is over: whatever ends this process now is its own story
    dog.finish()
