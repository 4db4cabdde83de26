"""Multi-process start-up and the cross-process stop decision.

Every worker of a TPU pod (or of a local CPU cluster, `launch/local.sh`) runs the same `nf-train`
command; JAX's multi-controller runtime (`jax.distributed`) connects them before any device is
touched. `initialize` is called first thing by `nf.train`:

* explicit `--coordinator_address/--num_processes/--process_id` (any cluster, e.g. localhost);
* otherwise, on a Cloud TPU VM (worker env variables or TPU chips on the PCI bus), or with
  `--distributed=on`, `jax.distributed.initialize()` with JAX's own cluster detection;
* otherwise a single process.

`StopSignal` turns SIGTERM (a preemption notice) or SIGINT (Ctrl-C) into one agreed stop step:
alone, a Python signal handler sets a flag read at step boundaries (a second Ctrl-C exits at once,
without saving); `catch_stop_signals_early` (first thing in `main`) remembers a signal that arrives
while the run is still starting, so it stops at its first step boundary instead of dying unsaved.
With several processes, JAX's preemption sync manager (its SIGTERM notifier tells the coordination
service, which tells every process) picks the step (the largest step any process had reached, plus
one) at which all of them save and exit; SIGINT keeps Python's default there (KeyboardInterrupt on
that process), since no agreed stop exists for it. The per-step check is a local flag read, so a
run without preemption pays nothing for it.
"""

from __future__ import annotations

import glob
import os
import signal
import socket
import sys
import time

import jax
from absl import logging
from jax.experimental import multihost_utils

# Environment variables that mark a worker of a Cloud TPU pod (GCE TPU VMs, GKE, multislice) or a
# cluster launched with JAX's own variables.
TPU_POD_ENV = (
    "TPU_WORKER_HOSTNAMES",
    "TPU_PROCESS_ADDRESSES",
    "CLOUD_TPU_TASK_ID",
    "MEGASCALE_COORDINATOR_ADDRESS",
    "JAX_COORDINATOR_ADDRESS",
)
MODES = ("auto", "on", "off")


class CoordinatorError(ConnectionError):
    """The JAX coordination service could not be reached or did not accept this process."""


# TPU chips on the PCI bus: Google's vendor id and the TPU device ids (v3, v4, v5p, v5e, v6e, 7x
# and one unnamed), as Cloud TPU VMs expose them under /sys/bus/pci/devices/*/{vendor,device}.
GOOGLE_PCI_VENDOR = "0x1ae0"
TPU_PCI_DEVICES = frozenset({"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"})


def tpu_chips_on_pci(sysfs: str = "/sys/bus/pci/devices") -> int:
    """The number of TPU chips on this host's PCI bus (reads /sys only: no network, no JAX)."""
    count = 0
    for vendor in glob.glob(os.path.join(sysfs, "*", "vendor")):
        try:
            with open(vendor) as f, open(os.path.join(os.path.dirname(vendor), "device")) as g:
                count += f.read().strip() == GOOGLE_PCI_VENDOR and g.read().strip() in TPU_PCI_DEVICES
        except OSError:
            continue
    return count


def on_cloud_tpu() -> bool:
    """A Cloud TPU worker: one of TPU_POD_ENV is set, or TPU chips are on this host's PCI bus."""
    return any(os.environ.get(k) for k in TPU_POD_ENV) or tpu_chips_on_pci() > 0


def initialize(
    mode: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = 300,
) -> bool:
    """Start `jax.distributed` when asked or detected (see the module docstring); returns whether it
    did. Must run before anything touches a JAX device."""
    if mode not in MODES:
        raise ValueError(f"--distributed={mode!r} is not one of {MODES}")
    explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes, "process_id": process_id}
    given = {k: v for k, v in explicit.items() if v is not None}
    if given and mode == "off":
        raise ValueError(f"--distributed=off contradicts --{' --'.join(sorted(given))}; drop one of them")
    if given and len(given) < len(explicit):
        missing = sorted(set(explicit) - set(given))
        raise ValueError(
            f"--{' --'.join(sorted(given))} given without --{' --'.join(missing)}: a multi-process run needs "
            "--coordinator_address=HOST:PORT (of process 0), --num_processes and --process_id on every process"
        )
    if given:
        if num_processes < 1:
            raise ValueError(f"--num_processes must be >= 1, got {num_processes}")
        if not 0 <= process_id < num_processes:
            raise ValueError(
                f"--process_id={process_id} is out of range for --num_processes={num_processes}: "
                f"use 0 .. {num_processes - 1}, one distinct id per process (0 runs the coordinator)"
            )
        _split_address(coordinator_address)  # validates HOST:PORT
    elif mode == "off" or (mode == "auto" and not on_cloud_tpu()):
        return False

    if given:  # the runtime aborts the process (no Python error) when it cannot connect: check first
        check_coordinator(coordinator_address, process_id, num_processes, timeout_s)
    # CPU devices talk through gloo (no effect on TPU/GPU, whose collectives are built in).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    where = coordinator_address or "the address JAX detects for this cluster"
    logging.info("Connecting to the JAX coordinator at %s (timeout %d s)", where, timeout_s)
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            initialization_timeout=timeout_s,
        )
    except Exception as e:  # where the runtime raises instead of aborting (e.g. XlaRuntimeError)
        who = f"process {process_id} of {num_processes}" if given else "this worker"
        raise CoordinatorError(
            f"Could not join the JAX cluster through the coordinator at {where} within {timeout_s} s "
            f"({who}). Check that process 0 is running with the same --coordinator_address and "
            "--num_processes, that HOST:PORT is reachable from this host (firewall, port), or raise "
            f"--coordinator_timeout. Underlying error: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e
    logging.info("Process %d of %d joined the JAX cluster", jax.process_index(), jax.process_count())
    return True


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--coordinator_address={address!r} must be HOST:PORT")
    return host.strip("[]"), int(port)


def check_coordinator(address: str, process_id: int, num_processes: int, timeout_s: float) -> None:
    """Process 0: HOST must be this machine and PORT free (it serves the coordinator there).
    Others: wait up to `timeout_s` for HOST:PORT to accept connections. Raises CoordinatorError."""
    host, port = _split_address(address)
    who = f"process {process_id} of {num_processes}"
    if process_id == 0:
        try:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
                s.bind((host, port))
        except OSError as e:
            raise CoordinatorError(
                f"Process 0 serves the JAX coordinator at {address}, but cannot bind it ({e.strerror}): "
                "HOST must be an address of process 0's machine and PORT must be free; pick another "
                "--coordinator_address"
            ) from e
        return
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, max(timeout_s, 0.1))):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise CoordinatorError(
                    f"Could not join the JAX cluster through the coordinator at {address} within {timeout_s} s "
                    f"({who}): {e.strerror or e}. Check that process 0 is running with the same "
                    "--coordinator_address and --num_processes, that HOST:PORT is reachable from this host "
                    "(firewall, port), or raise --coordinator_timeout."
                ) from e
            time.sleep(0.25)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_early_signals: list[str] = []  # names of stop signals caught before the training loop started
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT, as a shell reports a Ctrl-C


def _exit_now(reason: str) -> None:
    sys.stderr.write(f"{reason}: exiting now without saving; the last completed checkpoint is intact.\n")
    sys.stderr.flush()
    os._exit(INTERRUPTED_EXIT_CODE)


def _early_handler(signum, frame):
    name = signal.Signals(signum).name
    if signum == signal.SIGINT and "SIGINT" in _early_signals:
        _exit_now("Second SIGINT")
    _early_signals.append(name)
    logging.warning("%s received while starting: the run stops (and saves) at its first step boundary.", name)


def catch_stop_signals_early() -> None:
    """Install the start-up handlers (first thing in `main`): a SIGTERM or SIGINT that arrives
    before `StopSignal` exists is remembered, not fatal; a second SIGINT exits at once."""
    _early_signals.clear()
    for sig in STOP_SIGNALS:
        signal.signal(sig, _early_handler)


class StopSignal:
    """SIGTERM or SIGINT -> stop at one step agreed by every process (see the module docstring).

    Call `should_stop(step)` exactly once per step, with the step just dispatched; once it returns
    True the caller saves that step and exits. `flag` says whether a stop was decided, `reason`
    which signal decided it.
    """

    def __init__(self):
        self.reason = _early_signals[0] if _early_signals else None
        self.flag = self.reason is not None
        # With several processes, JAX's preemption notifier owns SIGTERM (a Python handler installed
        # now would replace it, and the other processes would never hear of the notice).
        self._shared = jax.process_count() > 1
        if self._shared:
            self._previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler)}
        else:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in STOP_SIGNALS}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and self.flag:
            _exit_now("Second SIGINT")
        logging.warning(
            "%s received: saving a checkpoint at the next step boundary, then exiting%s.",
            name,
            " (Ctrl-C again to exit at once, without saving)" if signum == signal.SIGINT else "",
        )
        self.flag = True
        self.reason = self.reason or name

    def should_stop(self, step: int) -> bool:
        if self._shared and not self.flag and multihost_utils.reached_preemption_sync_point(step):
            logging.warning(
                "SIGTERM received (preemption notice reached the cluster): all %d processes save step %d, then exit.",
                jax.process_count(),
                step,
            )
            self.flag = True
            self.reason = "SIGTERM"
        return self.flag

    def restore(self) -> None:
        """Hand the signals back (the start-up handlers give way to Python's defaults)."""
        defaults = {signal.SIGTERM: signal.SIG_DFL, signal.SIGINT: signal.default_int_handler}
        for sig, previous in self._previous.items():
            signal.signal(sig, defaults[sig] if previous is _early_handler else previous)


def host_copy(tree):
    """numpy copies of a tree of (possibly sharded, possibly multi-process) arrays, on every process.
    With arrays spread over several processes this is a collective: every process must call it."""
    if all(getattr(x, "is_fully_addressable", True) for x in jax.tree.leaves(tree)):
        return jax.device_get(tree)
    return multihost_utils.process_allgather(tree, tiled=True)
