"""Installed size and time of `pip install -e SRC` into a fresh venv, as a new user gets it.

    python tools/measure_install.py --src=. --label=after --out=tools/results/install_after.json

pip runs against the package index alone (no pip config files, no local wheel folders, no pip
cache), so the time includes every download. The size is the venv's on disk (`du -s`), less that
of an empty venv.
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


def du_bytes(path: str) -> int:
    return int(subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True).stdout.split()[0])


def measure(src: str, python: str, spec: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k == "PIP_CERT"}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_CACHE_DIR="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    with tempfile.TemporaryDirectory() as tmp:
        venv = os.path.join(tmp, "venv")
        subprocess.run([python, "-m", "venv", venv], check=True)
        empty = du_bytes(venv)
        pip = [os.path.join(venv, "bin", "python"), "-m", "pip"]
        t0 = time.perf_counter()
        subprocess.run([*pip, "install", "-q", "-e", f"{src}{spec}"], env=env, check=True)
        seconds = time.perf_counter() - t0
        size = du_bytes(venv) - empty
        freeze = subprocess.run([*pip, "freeze"], capture_output=True, text=True, env=env).stdout.split()
        pkgs = subprocess.run([*pip, "list", "--format=json"], capture_output=True, text=True, env=env).stdout
        biggest = sorted(
            (
                (du_bytes(str(p)), p.name)
                for p in Path(venv, "lib").glob("python3.*/site-packages/*")
                if p.is_dir() and not p.name.endswith(("-info", "__pycache__"))
            ),
            reverse=True,
        )[:8]
    return dict(
        seconds=round(seconds, 1),
        installed_bytes=size,
        installed_mib=round(size / 2**20, 1),
        packages=len(json.loads(pkgs)),
        largest_mib={name: round(b / 2**20, 1) for b, name in biggest},
        freeze=[line for line in freeze if not line.startswith("-e")],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", default=".", help="the project folder to install")
    p.add_argument("--spec", default="", help="extras, e.g. '[test]'")
    p.add_argument("--python", default=sys.executable, help="the interpreter of the fresh venv")
    p.add_argument("--label", default="", help="what was installed (e.g. 'before: main 9af7c21')")
    p.add_argument("--out", help="write the figures to this JSON file")
    args = p.parse_args(argv)
    result = measure(os.path.abspath(args.src), args.python, args.spec)
    load = os.getloadavg()
    result["meta"] = dict(
        label=args.label,
        date_utc=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        machine=f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, load {load[0]:.1f}",
        python=subprocess.run([args.python, "--version"], capture_output=True, text=True).stdout.strip(),
        command=f"python tools/measure_install.py --src={args.src} --spec='{args.spec}' --label='{args.label}'",
    )
    print(
        f"{args.label}: {result['seconds']} s, {result['installed_mib']} MiB, {result['packages']} packages; "
        f"largest {result['largest_mib']}"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
