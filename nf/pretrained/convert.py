"""Fill an nf model's parameters from another implementation's per-block tensors.

A family's conversion is one table from the source's names to nf's module paths; this module
does the rest once for every family: it addresses block `j` of stage `s` (the stage's first,
transition block, or member `j - 1` of the stacked blocks its scan runs), checks each tensor's
shape against the nf parameter it fills, stacks per-block tensors into the scanned layout, and
fails naming the source tensor or the nf parameter that is missing, repeated or mis-shaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import nnx

from nf.models import create_model

Path = tuple


class BlockSlot(NamedTuple):
    """Where block `j` of a stage lives: its module path and, for stacked blocks, the index."""

    path: Path
    index: int | None


def block_slot(stage: int, block: int) -> BlockSlot:
    """Block 0 is the stage's transition block `first`; blocks 1.. are stacked in `rest`."""
    if block == 0:
        return BlockSlot(("stages", stage, "first"), None)
    return BlockSlot(("stages", stage, "rest"), block - 1)


def stage_of(depths: Sequence[int], block: int) -> tuple[int, int]:
    """`(stage, index within the stage)` of the network's `block`-th block (0-based)."""
    for stage, depth in enumerate(depths):
        if block < depth:
            return stage, block
        block -= depth
    raise IndexError(f"block {block + sum(depths)} is past the network's {sum(depths)} blocks")


def build(name: str, *, abstract: bool, **options: Any) -> nnx.Module:
    """The registry model `name`; `abstract` skips the random initialization (shapes only), for a
    model whose every parameter is then filled from a file."""
    if abstract:
        return nnx.eval_shape(lambda: create_model(name, **options))
    return create_model(name, **options)


def _path_name(path: Path) -> str:
    return "/".join(str(p) for p in path)


class ParamFiller:
    """Collects source tensors for an nf model's parameters, then writes them all at once.

    `source` names the file in error messages; `skip` holds parameter paths left at their
    fresh initialization (e.g. a new classifier head).
    """

    def __init__(self, model: nnx.Module, source: str, *, skip: Sequence[Path] = ()):
        self.model, self.source = model, source
        self.params = {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
        self.skip = tuple(tuple(s) for s in skip)
        self.values: dict[Path, dict[int | None, tuple[str, np.ndarray]]] = {}

    def _skipped(self, path: Path) -> bool:
        return any(path[: len(s)] == s for s in self.skip)

    def set(self, path: Path, value: np.ndarray, name: str, index: int | None = None) -> None:
        """Fill nf parameter `path` (member `index` of a stacked parameter) from source tensor `name`."""
        path = tuple(path)
        if self._skipped(path):
            return
        if path not in self.params:
            raise ValueError(
                f"{self.source}: tensor {name!r} maps to {_path_name(path)}, which this nf model does not have "
                "(the file holds another architecture than the model name says)"
            )
        full = tuple(self.params[path].shape)
        stacked = index is not None
        wanted = full[1:] if stacked else full
        value = np.asarray(value)
        if tuple(value.shape) != wanted:
            raise ValueError(
                f"{self.source}: tensor {name!r} has shape {tuple(value.shape)}, but nf's {_path_name(path)} "
                f"needs {wanted}: the file holds another architecture (or another variant) than the model name says"
            )
        if stacked and not 0 <= index < full[0]:
            raise ValueError(
                f"{self.source}: tensor {name!r} is block {index + 1} of a stage that has {full[0] + 1} blocks here"
            )
        slot = self.values.setdefault(path, {})
        if index in slot:
            raise ValueError(f"{self.source}: tensors {slot[index][0]!r} and {name!r} both fill {_path_name(path)}")
        slot[index] = (name, value)

    def set_block(self, stage: int, block: int, path: Path, value: np.ndarray, name: str) -> None:
        """Fill `path` inside block `block` of stage `stage`."""
        slot = block_slot(stage, block)
        self.set(slot.path + tuple(path), value, name, slot.index)

    def finish(self) -> nnx.Module:
        """Write every collected tensor; fail naming the parameters nothing filled."""
        missing = []
        for path, variable in self.params.items():
            if self._skipped(path):
                continue
            got = self.values.get(path, {})
            n = variable.shape[0] if None not in got and got else None
            if not got or (n is not None and sorted(got) != list(range(n))):
                missing.append(_path_name(path))
        if missing:
            more = f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""
            raise ValueError(
                f"{self.source}: no tensor for nf parameter(s) " + ", ".join(missing[:10]) + more + " — the file is "
                "incomplete or holds another architecture than the model name says"
            )
        for path, got in self.values.items():
            variable = self.params[path]
            value = got[None][1] if None in got else np.stack([got[i][1] for i in range(len(got))])
            variable.value = jnp.asarray(value, variable.value.dtype)
        return self.model
