"""Where and when a result was measured: the fields every `tools/results/*.json` carries."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance() -> dict:
    """Machine (CPU model, core count, load), UTC date and the commit (with `+dirty` when the
    tree has uncommitted changes) of this measurement."""
    git = ["git", "-C", str(REPO)]
    commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return {
        "machine": f"{cpu_model()}, {os.cpu_count()} cores",
        "load_average": list(os.getloadavg()),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit + ("+dirty" if dirty.stdout.strip() else ""),
        "python": sys.version.split()[0],
    }
