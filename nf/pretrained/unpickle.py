"""Read DeepMind's released NFNet parameter files without executing pickled code.

`F0_haiku.npz` ... `F6_haiku.npz` are, despite the name, dill pickles of Haiku `FlatMapping`
dicts `{module_name: {param_name: array}}`. A pickle can call any importable function, so they
are read with an unpickler that resolves only the handful of globals such files use (numpy's
array reconstruction under its numpy 1 and numpy 2 module names, `numpy.ndarray`,
`numpy.dtype`, dill's `_create_array` and Haiku's `FlatMapping`) and refuses every other one
with an error that names it. Neither dill nor haiku is needed.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from typing import Any

import numpy as np

_reconstruct = np.ndarray.__reduce__(np.zeros(()))[0]  # numpy's own array reconstructor


def _create_array(f, args, state, npdict=None):
    """dill's `_create_array`, for the one constructor an array pickle may name."""
    if f is not _reconstruct:
        raise pickle.UnpicklingError(f"dill._dill._create_array called with {f!r}; only numpy arrays are allowed")
    array = f(*args)
    array.__setstate__(state)
    if npdict:
        raise pickle.UnpicklingError("array subclasses with attributes are not allowed")
    return array


def _flat_mapping(items: Any = ()) -> dict:
    """Haiku's FlatMapping, read as a plain dict."""
    return dict(items)


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("dill._dill", "_create_array"): _create_array,
    ("haiku._src.data_structures", "FlatMapping"): _flat_mapping,
    ("haiku.data_structures", "FlatMapping"): _flat_mapping,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, path: str):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            allowed = ", ".join(f"{m}.{n}" for m, n in ALLOWED_GLOBALS)
            raise pickle.UnpicklingError(
                f"{self.path}: refusing to load global {module}.{name}: a parameter file only needs {allowed}. "
                "The file is not a DeepMind NFNet parameter file, or it was tampered with; it was not executed."
            )
        return ALLOWED_GLOBALS[(module, name)]


def _check_tree(tree: Any, path: str) -> dict[str, dict[str, np.ndarray]]:
    if not isinstance(tree, dict) or not all(isinstance(v, dict) for v in tree.values()):
        raise ValueError(f"{path}: expected {{module_name: {{param_name: array}}}}, got {type(tree).__name__}")
    for module, params in tree.items():
        for name, value in params.items():
            if not isinstance(value, np.ndarray):
                raise ValueError(f"{path}: {module}/{name} is a {type(value).__name__}, not an array")
    return tree


def load_haiku_params(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """`{module_name: {param_name: array}}` from a DeepMind NFNet file (dill pickle), or from a real
    `.npz` archive whose keys are `module_name/param_name` (read without pickles)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such parameter file")
    if zipfile.is_zipfile(path):
        tree: dict[str, dict[str, np.ndarray]] = {}
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                module, _, name = key.rpartition("/")
                tree.setdefault(module, {})[name] = archive[key]
        return _check_tree(tree, path)
    with open(path, "rb") as f:
        try:
            tree = _RestrictedUnpickler(f, path).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
            if isinstance(e, pickle.UnpicklingError) and "refusing" in str(e):
                raise
            raise ValueError(f"{path}: not a readable DeepMind parameter file ({type(e).__name__}: {e})") from e
    return _check_tree(tree, path)
