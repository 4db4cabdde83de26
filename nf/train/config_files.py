"""Config files by name: `--config=quickstart` or `nfnet_imagenet:f3` finds the config installed with
nf (the package `nf.configs`, the repository's `configs/`), so an installed nf runs without a
checkout; an existing path is used as given. Found by path, not imported: the configs import the
trainer's recipes, so the trainer must not import them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parents[1] / "configs"  # the configs installed with nf (nf.configs)


def resolve(spec: str) -> str:
    """`FILE[:ARG]` unchanged when FILE exists; otherwise the packaged config of FILE's name
    (`quickstart`, `quickstart.py` or `configs/quickstart.py` -> this folder's quickstart.py) with
    the same `:ARG`. An unknown name is returned unchanged (the config flag then names the file)."""
    file, sep, arg = spec.partition(":")
    if not file or os.path.exists(file):
        return spec
    packaged = HERE / f"{Path(file).name.removesuffix('.py')}.py"
    if packaged.name != "__init__.py" and packaged.is_file():
        return f"{packaged}{sep}{arg}"
    return spec


def resolve_argv(argv: Sequence[str], flag: str = "config") -> list[str]:
    """`argv` with the value of `--FLAG=SPEC` / `--FLAG SPEC` passed through `resolve`."""
    out, argv = [], list(argv)
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{flag}="):
            arg = f"--{flag}={resolve(arg.split('=', 1)[1])}"
        elif i and argv[i - 1] == f"--{flag}":
            arg = resolve(arg)
        out.append(arg)
    return out
