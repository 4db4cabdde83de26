"""The console scripts of pyproject.toml: every entry point imports and is callable (each in its
own interpreter, as an installed script runs; absl flags of different tools share names), and
tools/ holds no wrapper of one."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MOVED_TOOLS = {"spp": "nf-spp", "model_stats": "nf-model-stats", "make_arrayrecord": "nf-make-arrayrecord"}


def scripts() -> dict[str, str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def test_every_console_script_imports_and_is_callable():
    entries = scripts()
    assert {"nf-train", "nf-eval", "nf-predict", "nf-export", *MOVED_TOOLS.values()} <= set(entries)
    procs = {}
    for name, target in entries.items():
        module, _, attr = target.partition(":")
        code = f"import {module} as m; assert callable(m.{attr}), {target!r}"
        procs[name] = subprocess.Popen([sys.executable, "-c", code], cwd="/", stderr=subprocess.PIPE, text=True)
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name} ({entries[name]}): {err[-2000:]}"


def test_tools_hold_no_wrappers_of_console_scripts():
    """The CLIs are console scripts (the tests run them as such); tools/ keeps no checkout copy."""
    for tool, script in MOVED_TOOLS.items():
        assert scripts()[script] == f"nf.cli.{tool}:run"
    targets = {target.partition(":")[0] for target in scripts().values()}
    wrappers = [
        p.name for p in (REPO / "tools").glob("*.py") if any(f"from {t} import" in p.read_text() for t in targets)
    ]
    assert wrappers == []
