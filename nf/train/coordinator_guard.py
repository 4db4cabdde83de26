"""When worker 0 (the coordinator) dies, the survivors' last line still names it and the resume step.

Worker 0 hosts JAX's coordination service. When its process dies, the JAX runtime of every other
worker aborts itself (a C++ fatal log, SIGABRT) within milliseconds, as soon as its connection to
the service resets: before any Python thread of that worker can run, and with no hook a public JAX
API exposes (JAX's fault-tolerance guide: if process 0 fails, every process fails). The report
therefore comes from outside the worker: `start` spawns a small guard process (no JAX until it
must speak) that holds the read end of a pipe whose write end only the worker holds. The pipe
reaches end-of-file when the worker's process is gone. If the worker wrote a note first (its
watched block ended, or its watchdog already named a lost worker), the guard exits silently;
otherwise, when the coordinator's HOST:PORT no longer accepts connections, it writes the
lost-worker line (worker 0, the last intact checkpoint step) on the worker's stderr, after the
runtime's abort trace. The worker's exit status stays the runtime's (SIGABRT): nothing in the
process can change it.

Run as `python -m nf.train.coordinator_guard ADDRESS WORKER COUNT WORKDIR` (by `start` only).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

PROBE_TIMEOUT_S = 2.0  # a coordinator host that is down does not refuse: it stops answering
_WHY = "its coordination service closed the connection: the process died"


class Guard:
    """The worker's end of the pipe to its guard process."""

    def __init__(self, write_fd: int, process: subprocess.Popen):
        self._fd, self.process = write_fd, process

    def note(self) -> None:
        """Tell the guard to stay silent: this worker's end is explained (finished or reported)."""
        if self._fd is not None:
            try:
                os.write(self._fd, b"noted")
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


def start(address: str, worker: int, count: int, workdir: str) -> Guard:
    """Spawn the guard of this worker (not worker 0, which hosts the coordinator)."""
    read_fd, write_fd = os.pipe()  # not inheritable: programs this worker starts never hold the write end
    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    process = subprocess.Popen(
        [sys.executable, "-m", "nf.train.coordinator_guard", address, str(worker), str(count), workdir],
        stdin=read_fd,
        env={**os.environ, "PYTHONPATH": path},
        start_new_session=True,  # a Ctrl-C meant for the worker does not reach it
    )
    os.close(read_fd)
    return Guard(write_fd, process)


def lost_worker_message(worker: int, count: int, me: int, workdir: str, *, why: str) -> str:
    """The survivors' last line: who stopped answering (and `why` we know), and the step to resume from."""
    from nf.train import disk_space  # imports JAX: only when there is something to say

    directory = os.path.join(workdir, "checkpoints")
    step = disk_space.last_intact_step(directory)
    resume = (
        f"resume from step {step} (the last intact checkpoint in {directory})"
        if step is not None
        else f"start from step 0 (no checkpoint was saved yet in {directory})"
    )
    return (
        f"error: worker {worker} of {count} stopped answering ({why}); worker {me} stops too. "
        f"Restart all {count} workers with the same command: they {resume}."
    )


def coordinator_answers(address: str) -> bool:
    """Whether HOST:PORT accepts a TCP connection within `PROBE_TIMEOUT_S`."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def main(argv: list[str]) -> int:
    """Wait for the worker's end; name worker 0 if it died unexplained and the coordinator is gone."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # it ends on its own, when the worker does
    address, worker, count, workdir = argv[1], int(argv[2]), int(argv[3]), argv[4]
    note = b""
    while chunk := os.read(0, 64):
        note += chunk
    if note or coordinator_answers(address):
        return 0  # explained, or the worker died of its own cause while the coordinator runs
    sys.stderr.write(lost_worker_message(0, count, worker, workdir, why=_WHY) + "\n")
    sys.stderr.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
