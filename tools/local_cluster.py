"""A JAX cluster on localhost: N `nf-train` processes x M CPU devices each (`launch/local.sh`).

    launch/local.sh --processes=2 --devices=2 --workdir=runs/local -- --config=configs/quickstart.py

Every process runs `python -m nf.train` with the trainer arguments after `--`, plus
`--workdir`, `--coordinator_address=127.0.0.1:<free port> --num_processes=N --process_id=i`, and
`XLA_FLAGS=--xla_force_host_platform_device_count=M`, `JAX_PLATFORMS=cpu`. Output goes to
`<workdir>/logs/process_<i>.log`. SIGTERM/SIGINT to the launcher is forwarded to every process
(the trainer then saves one checkpoint at a step agreed by all and exits 0). When one process
fails, the others cannot finish their collectives; they are killed, the failing log's tail is
printed, and the launcher exits with the failing process's status.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.2


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(devices: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one CPU process with `devices` devices (other XLA flags kept)."""
    env = dict(os.environ if base is None else base)
    xla = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
    env["XLA_FLAGS"] = " ".join([*xla, f"--xla_force_host_platform_device_count={devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def commands(processes: int, workdir: str, train_args: list[str], port: int) -> list[list[str]]:
    """The `python -m nf.train` command line of every process."""
    common = [sys.executable, "-m", "nf.train", f"--workdir={workdir}", *train_args]
    cluster = [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={processes}"]
    return [[*common, *cluster, f"--process_id={i}"] for i in range(processes)]


def tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def run_cluster(
    processes: int, devices: int, workdir: str, train_args: list[str], port: int | None = None, env=None
) -> int:
    """Start the processes, forward SIGTERM/SIGINT, wait; returns 0 or the first failure's status."""
    if processes < 1 or devices < 1:
        raise ValueError(f"--processes and --devices must be >= 1, got {processes} and {devices}")
    logs = Path(workdir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    penv = process_env(devices, env)
    procs, files = [], []
    for i, cmd in enumerate(commands(processes, workdir, train_args, port)):
        f = open(logs / f"process_{i}.log", "w")  # noqa: SIM115 (closed below)
        files.append(f)
        procs.append(subprocess.Popen(cmd, env=penv, stdout=f, stderr=subprocess.STDOUT))
    print(f"{processes} process(es) x {devices} CPU device(s), coordinator 127.0.0.1:{port}, logs in {logs}/")

    def forward(signum, frame):
        print(f"launcher: forwarding {signal.Signals(signum).name} to {processes} process(es)", flush=True)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    failed = None
    try:
        while any(p.poll() is None for p in procs):
            bad = [i for i, p in enumerate(procs) if p.returncode not in (None, 0)]
            if bad:
                failed = bad[0]
                break
            time.sleep(POLL_S)
        if failed is None:
            bad = [i for i, p in enumerate(procs) if p.returncode != 0]
            failed = bad[0] if bad else None
        if failed is not None:
            for p in procs:  # they would wait for the failed one in every collective
                if p.poll() is None:
                    p.kill()
            for p in procs:
                p.wait()
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        for f in files:
            f.close()
    if failed is None:
        print(f"all {processes} process(es) finished; logs in {logs}/")
        return 0
    rc = procs[failed].returncode
    print(
        f"process {failed} failed (exit status {rc}); the others were stopped. Last lines of "
        f"{logs / f'process_{failed}.log'}:\n{tail(logs / f'process_{failed}.log')}",
        file=sys.stderr,
    )
    return rc if rc > 0 else 128 - rc  # killed by a signal: the shell's convention


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    train_args = []
    if "--" in argv:
        train_args = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=2, help="JAX processes (N).")
    parser.add_argument("--devices", type=int, default=2, help="CPU devices per process (M).")
    parser.add_argument("--workdir", required=True, help="nf-train workdir; logs go to WORKDIR/logs/.")
    parser.add_argument("--port", type=int, default=0, help="Coordinator port (default: a free one).")
    args = parser.parse_args(argv)
    if any(a.startswith(("--workdir", "--process_id", "--num_processes", "--coordinator_address")) for a in train_args):
        parser.error("give --workdir before `--`; the launcher sets the cluster flags itself")
    return run_cluster(args.processes, args.devices, args.workdir, train_args, args.port or None)


if __name__ == "__main__":
    sys.exit(main())
