"""Does `pip install .` resolve to binary wheels on every supported platform and Python?

For each target (Linux x86-64 on Python 3.11-3.13, macOS arm64 on 3.11 and 3.12) this runs

    pip install --dry-run --only-binary=:all: --ignore-installed --platform TAG [--platform TAG ...]
        --python-version X.Y --target TMP --report REPORT.json .

and prints one line per target: the packages pip would install and the TensorFlow package it
picked (clu's metric writers need one: `tensorflow-cpu` on Linux x86-64, `tensorflow` elsewhere).
Linux gets one `--platform` per manylinux tag, since one old tag hides newer wheels (grain's
manylinux_2_28 ones).

pip evaluates environment markers (`sys_platform`, `platform_machine`, `python_version`) against
the machine it runs on, not against `--platform` / `--python-version` (pypa/pip#6117, #10050): on
a Linux host the macOS dry run would pick Linux's `tensorflow-cpu` and fail. So pip runs with its
marker environment set to the target's (`--host-markers` runs pip unchanged, as a user on the
target's own machine would not need). Needs the package index (PyPI); nothing is installed.

`--uv=PATH` is an independent second check: `uv pip compile pyproject.toml --python-platform P
--python-version X.Y --only-binary :all:` for each target (uv evaluates the target's markers and
wheel tags itself, no emulation; `pip install uv`). Linux: `x86_64-manylinux_2_34` (every tag up
to glibc 2.34, as pip's list); macOS: `aarch64-apple-darwin` with MACOSX_DEPLOYMENT_TARGET=14.0.

    python tools/resolve_platforms.py [--out=tools/results/resolve_platforms.json]
    python tools/resolve_platforms.py --uv=uv [--out=tools/results/resolve_platforms_uv.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MANYLINUX = ("manylinux2014", "manylinux_2_24", "manylinux_2_27", "manylinux_2_28", "manylinux_2_34")
# target -> (pip --platform tags, Python versions, PEP 508 marker values of that platform)
TARGETS: dict[str, tuple[tuple[str, ...], tuple[str, ...], dict[str, str]]] = {
    "linux-x86_64": (
        tuple(f"{tag}_x86_64" for tag in MANYLINUX),
        ("3.11", "3.12", "3.13"),
        dict(sys_platform="linux", platform_system="Linux", platform_machine="x86_64", os_name="posix"),
    ),
    "macos-arm64": (
        ("macosx_14_0_arm64",),
        ("3.11", "3.12"),
        dict(
            sys_platform="darwin",
            platform_system="Darwin",
            platform_machine="arm64",
            os_name="posix",
            platform_release="23.0.0",  # macOS 14's Darwin kernel
        ),
    ),
}
TENSORFLOW = ("tensorflow", "tensorflow-cpu")
# target -> (uv --python-platform, extra environment)
UV_PLATFORMS = {
    "linux-x86_64": ("x86_64-manylinux_2_34", {}),
    "macos-arm64": ("aarch64-apple-darwin", {"MACOSX_DEPLOYMENT_TARGET": "14.0"}),
}

# Runs pip with its marker environment updated from $NF_TARGET_MARKERS (pip vendors packaging).
_PIP_WITH_MARKERS = """
import json, os, sys
from pip._vendor.packaging import markers
_host = markers.default_environment
_target = json.loads(os.environ["NF_TARGET_MARKERS"])
markers.default_environment = lambda: {**_host(), **_target}
from pip._internal.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


def pip_command(tags: tuple[str, ...], python: str, target_dir: str, report: str, *, host_markers: bool) -> list[str]:
    platforms = [arg for tag in tags for arg in ("--platform", tag)]
    args = ["install", "--dry-run", "--only-binary=:all:", "--ignore-installed", *platforms]
    args += ["--python-version", python, "--target", target_dir, "--report", report, "--quiet", str(REPO)]
    if host_markers:
        return [sys.executable, "-m", "pip", *args]
    return [sys.executable, "-c", _PIP_WITH_MARKERS, *args]


def markers_for(values: dict[str, str], python: str) -> dict[str, str]:
    return {**values, "python_version": python, "python_full_version": f"{python}.0"}


def resolve(target: str, python: str, *, host_markers: bool = False) -> dict:
    """One dry run: {'ok', 'seconds', 'packages' {name: version}, 'tensorflow', 'error'}."""
    tags, _, values = TARGETS[target]
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        cmd = pip_command(tags, python, os.path.join(tmp, "target"), report, host_markers=host_markers)
        env = {**os.environ, "NF_TARGET_MARKERS": json.dumps(markers_for(values, python))}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
            return dict(ok=False, seconds=seconds, error="\n".join(errors[-3:]) or proc.stderr[-1000:])
        installs = json.loads(Path(report).read_text())["install"]
    packages = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"] for item in installs}
    return resolved(packages, seconds)


def resolved(packages: dict[str, str], seconds: float) -> dict:
    tf = [f"{name}=={packages[name]}" for name in TENSORFLOW if name in packages]
    return dict(ok=True, seconds=seconds, packages=packages, tensorflow=tf[0] if len(tf) == 1 else tf)


def uv_resolve(uv: str, target: str, python: str) -> dict:
    """The same resolution by `uv pip compile` (see the module docstring); the same dict."""
    platform_name, extra_env = UV_PLATFORMS[target]
    cmd = [uv, "pip", "compile", str(REPO / "pyproject.toml"), "--python-platform", platform_name]
    cmd += ["--python-version", python, "--only-binary", ":all:", "--no-header", "--no-annotate", "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env={**os.environ, **extra_env}, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        return dict(ok=False, seconds=seconds, error=proc.stderr.strip()[-1000:])
    pins = (line.split("==") for line in proc.stdout.splitlines() if "==" in line and not line.startswith("#"))
    return resolved({name.strip().lower().replace("_", "-"): version.strip() for name, version in pins}, seconds)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="write every resolution (packages and versions) to this JSON file")
    p.add_argument("--host-markers", action="store_true", help="evaluate markers on this machine (pip unchanged)")
    p.add_argument("--uv", help="resolve with this uv executable instead of pip (an independent check)")
    args = p.parse_args(argv)
    results, failed = {}, []
    for target, (_, pythons, _) in TARGETS.items():
        for python in pythons:
            if args.uv:
                r = uv_resolve(args.uv, target, python)
            else:
                r = resolve(target, python, host_markers=args.host_markers)
            results[f"{target}-py{python}"] = r
            if r["ok"]:
                n, tf, s = len(r["packages"]), r["tensorflow"], r["seconds"]
                print(f"ok    {target} Python {python}: {n} packages, {tf} ({s:.0f} s)")
            else:
                failed.append(f"{target} Python {python}")
                print(f"FAIL  {target} Python {python}:\n      " + r["error"].replace("\n", "\n      "))
    if args.out:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        meta = dict(
            date_utc=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            commit=commit,
            command="python tools/resolve_platforms.py"
            + (" --host-markers" if args.host_markers else "")
            + (f" --uv={args.uv}" if args.uv else ""),
            resolver=subprocess.run(
                [args.uv, "--version"] if args.uv else [sys.executable, "-m", "pip", "--version"],
                capture_output=True,
                text=True,
            ).stdout.strip(),
            machine=f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        )
        Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=1, sort_keys=True) + "\n")
    if failed:
        print(f"{len(failed)} target(s) do not resolve: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
