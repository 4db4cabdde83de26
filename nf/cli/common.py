"""What the console scripts share: config files, errors as one line, absl flags for grain."""

from __future__ import annotations

import importlib.util
import os
import pickle
import sys
from collections.abc import Callable

import ml_collections


def load_config(spec: str | None) -> ml_collections.ConfigDict | None:
    """`get_config([ARG])` of an ml_collections config `FILE[:ARG]` or a packaged config's name (as
    `nf-train --config=...` reads it)."""
    if not spec:
        return None
    from nf.train.config_files import resolve

    path, sep, arg = resolve(spec).partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--config={spec!r} does not exist (a file, or a packaged config's name)")
    module_spec = importlib.util.spec_from_file_location("nf_cli_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"--config={spec!r} defines no get_config()")
    return module.get_config(arg) if sep else module.get_config()


def prepare_runtime() -> None:
    """grain reads absl flags (parse their defaults, as `app.run` would); quiet TensorFlow."""
    from absl import flags

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def console(main: Callable[[list[str] | None], int]) -> Callable[[], None]:
    """An entry point running `main(sys.argv[1:])`: expected errors (bad files, cards, flags) as
    one `error:` line and exit status 2 instead of a traceback."""

    def run() -> None:
        try:
            sys.exit(main(sys.argv[1:]))
        except (FileNotFoundError, FileExistsError, ValueError, pickle.UnpicklingError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return run
