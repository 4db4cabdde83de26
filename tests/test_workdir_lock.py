"""One writer per workdir: real processes holding the lock, a kill -9 holder, a clean release."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nf.train.workdir_lock import LOCK_NAME, WorkdirBusyError, WorkdirLock

HOLD = """
import sys, time
from nf.train.workdir_lock import WorkdirLock
with WorkdirLock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(workdir: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    workdir = tmp_path / "run"
    proc = _holder(workdir, 60)
    try:
        t0 = time.perf_counter()
        with pytest.raises(WorkdirBusyError) as e:
            WorkdirLock(str(workdir)).__enter__()
        assert time.perf_counter() - t0 < 1.0
        msg = str(e.value)
        assert f"Workdir {workdir} is in use by another nf-train run: process {proc.pid} on host" in msg
        assert socket.gethostname() in msg and f"kill -TERM {proc.pid}" in msg and "another --workdir" in msg
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path, caplog):
    workdir = tmp_path / "run"
    proc = _holder(workdir, 60)
    proc.send_signal(signal.SIGKILL)  # no clean-up runs: the file still names it
    proc.wait()
    assert json.loads((workdir / LOCK_NAME).read_text())["pid"] == proc.pid
    with caplog.at_level("WARNING"), WorkdirLock(str(workdir)):
        assert f"holder (process {proc.pid} on host" in caplog.text and "exited without releasing" in caplog.text
        assert json.loads((workdir / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert (workdir / LOCK_NAME).read_text() == ""  # released cleanly: names nobody


def test_a_cleanly_released_lock_is_free_without_a_warning(tmp_path, caplog):
    workdir = tmp_path / "run"
    proc = _holder(workdir, 0)
    proc.wait()
    with caplog.at_level("WARNING"), WorkdirLock(str(workdir)):
        pass
    assert "Taking over" not in caplog.text
    with WorkdirLock(str(workdir), enabled=False), WorkdirLock(str(workdir)):  # enabled=False: processes 1..n-1
        pass


def test_the_lock_is_reentrant_within_one_process(tmp_path):
    """`nf-train` takes it before the trainer, whose own lock is then a no-op; a later holder of
    the same process (after both released) takes it afresh."""
    workdir = tmp_path / "run"
    with WorkdirLock(str(workdir)):
        with WorkdirLock(str(workdir)):
            pass
        assert json.loads((workdir / LOCK_NAME).read_text())["pid"] == os.getpid()  # still held
        proc = subprocess.run([sys.executable, "-c", HOLD, str(workdir), "0"], capture_output=True, text=True)
        assert proc.returncode != 0 and "is in use by another nf-train run" in proc.stderr
    assert (workdir / LOCK_NAME).read_text() == ""
    _holder(workdir, 0).wait()  # free again for another process
