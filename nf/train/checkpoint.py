"""Orbax checkpoints of the train state and the grain iterator, saved asynchronously."""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp


def _path_str(path) -> str:
    """`['stages']['0']['kernel']`: every key as a string, since orbax's metadata keys are strings
    while the live state has int keys for list entries (nnx.List stages)."""
    keys = (getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
    return "".join(f"['{k}']" for k in keys)


def _shapes(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_str(path): (tuple(leaf.shape), str(np.dtype(leaf.dtype))) for path, leaf in flat}


class Checkpoints:
    """`workdir/checkpoints/<step>/{state,data}`: keep-N, async saves, restore onto target shardings."""

    def __init__(self, directory: str, *, save_every: int, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        self.save_every = max(1, save_every)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=True,
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def due(self, step: int) -> bool:
        return step % self.save_every == 0

    def save(self, step: int, state: Any, data_iter: Any, *, force: bool = False) -> bool:
        """Start an async save when due (or `force`); returns whether one started."""
        if not (force or self.due(step)):
            return False
        args = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            args["data"] = grain.checkpoint.CheckpointSave(data_iter)
        return self.manager.save(step, args=ocp.args.Composite(**args), force=True)

    def check_compatible(self, step: int, abstract_state: Any) -> None:
        """Fail, naming the differing parameter paths, when the saved state has another architecture."""
        saved = self.manager.item_metadata(step)["state"]
        saved_shapes = _shapes(saved)
        wanted = _shapes(abstract_state)
        missing = sorted(set(wanted) - set(saved_shapes))
        extra = sorted(set(saved_shapes) - set(wanted))
        differ = sorted(k for k in set(wanted) & set(saved_shapes) if wanted[k][0] != saved_shapes[k][0])
        if missing or extra or differ:
            lines = [f"Checkpoint {self.directory}/{step} holds a different model than the config builds."]
            for title, keys in (
                ("missing in checkpoint", missing),
                ("unexpected in checkpoint", extra),
                ("shape differs", differ),
            ):
                if keys:
                    shown = [f"{k} {saved_shapes.get(k, ('',))[0]} vs {wanted.get(k, ('',))[0]}" for k in keys[:10]]
                    more = f" (+{len(keys) - 10} more)" if len(keys) > 10 else ""
                    lines.append(f"  {title}: " + "; ".join(shown) + more)
            lines.append("Use a fresh --workdir, or the config that wrote this checkpoint. Nothing was overwritten.")
            raise ValueError("\n".join(lines))

    def restore(self, step: int, abstract_state: Any, data_iter: Any) -> Any:
        """Restore the state onto the shardings of `abstract_state` (and the iterator in place)."""
        self.check_compatible(step, abstract_state)
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None:
            args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        return self.manager.restore(step, args=ocp.args.Composite(**args))["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
