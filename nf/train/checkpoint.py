"""Orbax checkpoints of the train state and the grain iterator, saved asynchronously."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from nf.inference.checkpoint import check_shapes, shape_map
from nf.train import checkpoint_health, disk_space
from nf.train.checkpoint_health import DATA_FILE
from nf.train.checkpoint_health import first_line as _first_line


class CheckpointDamagedError(RuntimeError):
    """No saved step of a workdir can be restored; the message lists each one and why."""


class _IteratorSnapshot:
    """An input iterator's state at save time, for grain's handler (which calls `get_state`) while
    the live iterator moves on."""

    def __init__(self, state: dict[str, Any]):
        self._json = json.dumps(state, indent=4).encode()

    def get_state(self) -> bytes:
        return self._json


class Checkpoints:
    """`workdir/checkpoints/<step>/{state,data}`: keep-N, async saves, restore onto target shardings.

    Orbax's async save still blocks for its bookkeeping and the device-to-host copy (tens of ms of
    Python per save, about one quickstart step). With `background=True` (single-process runs) the
    loop only snapshots the state on device (the next step donates its buffers) and the iterator's
    state, and a worker thread makes the orbax call; the cost is one extra copy of the train state
    on the device until orbax has copied it to the host. Multi-process runs call orbax directly:
    its cross-process barriers must keep the same order as the training loop on every process.
    """

    def __init__(self, directory: str, *, save_every: int, max_to_keep: int = 3, background: bool = False):
        self.directory = directory if "://" in directory else os.path.abspath(directory)  # gs://... as is
        self.save_every = max(1, save_every)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            create=True,
            enable_async_checkpointing=True,
            # In the background worker the step's directories are made before orbax returns: a
            # failure there (the folder removed or replaced) then fails this save, re-raised at the
            # next one. Orbax's asynchronous creation would leave the save waiting for a signal
            # that never comes (orbax 0.12.8: the loop hangs at the next save).
            async_options=ocp.AsyncOptions(create_directories_asynchronously=not background),
        )
        handlers = {"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler()}
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="checkpoint") if background else None
        self._pending: Future | None = None
        self._saving: tuple[int, int] | None = None  # (step, estimated bytes) of the last save started
        self._disk_full = False

    def latest_step(self) -> int | None:
        self._join()
        return self.manager.latest_step()

    def due(self, step: int) -> bool:
        return step % self.save_every == 0

    def save(self, step: int, state: Any, data_iter: Any, *, force: bool = False) -> bool:
        """Start an async save when due (or `force`); returns whether one started."""
        if not (force or self.due(step)):
            return False
        self._join()  # one save at a time, in step order; re-raises a failed background save
        needed = disk_space.checkpoint_estimate(self.directory, self.manager.latest_step(), state)
        if jax.process_index() == 0:
            disk_space.warn_if_short(self.directory, step, needed)
        self._saving = (step, needed)
        if self._worker is None:
            with self._disk_full_as_one_error():
                return self._save(step, state, data_iter)
        snapshot = jax.device_put(state, may_alias=False)  # a buffer copy: same shardings, nothing to compile
        iterator = _IteratorSnapshot(data_iter.get_state()) if data_iter is not None else None
        self._pending = self._worker.submit(self._save, step, snapshot, iterator)
        return True

    def _save(self, step: int, state: Any, data_iter: Any) -> bool:
        args = {"state": ocp.args.StandardSave(state)}
        if data_iter is not None:
            args["data"] = grain.checkpoint.CheckpointSave(data_iter)
        return self.manager.save(step, args=ocp.args.Composite(**args), force=True)

    def _join(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            with self._disk_full_as_one_error():
                pending.result()

    @contextlib.contextmanager
    def _disk_full_as_one_error(self):
        """ENOSPC from a save (raised by Orbax here or by its threads) -> one `DiskFullError`
        naming the workdir, the bytes needed and free and the last intact step; the failed save's
        temporary folder is removed (it is never read and only takes space)."""
        try:
            yield
        except Exception as e:
            if not disk_space.is_disk_full(e) or self._disk_full:
                raise
            self._disk_full = True
            step, needed = self._saving or (None, 0)
            if step is not None and jax.process_index() == 0:
                disk_space.remove_unfinished_save(self.directory, step)
            raise disk_space.DiskFullError(
                errno.ENOSPC, disk_space.disk_full_message(self.directory, step, needed)
            ) from e

    def check_compatible(self, step: int, abstract_state: Any, saved: Any = None) -> None:
        """Fail, naming the differing parameter paths, when the saved state has another architecture
        (`saved`: the step's state metadata, read here when not given)."""
        if saved is None:
            saved = self.manager.item_metadata(step)["state"]
        check_shapes(
            f"Checkpoint {self.directory}/{step}",
            shape_map(saved),
            shape_map(abstract_state),
            "It holds a different model than the config builds: use a fresh --workdir, or the config that "
            "wrote this checkpoint. Nothing was overwritten.",
        )

    def saved_data_states(self, step: int) -> dict[int, tuple[int, dict]]:
        """{process index: (process count, iterator state)} of `step`'s data item (empty if none)."""
        directory = epath.Path(self.directory) / str(step) / "data"
        if not directory.exists():
            return {}
        found = {m: p for p in directory.iterdir() if (m := DATA_FILE.fullmatch(p.name))}
        return {int(m.group(1)): (int(m.group(2)), json.loads(p.read_text())) for m, p in found.items()}

    def restore(self, step: int, abstract_state: Any, data_iter: Any, *, checked: bool = False) -> Any:
        """Restore the state onto the shardings of `abstract_state` (any mesh, any process count) and
        the iterator in place. An iterator saved by another process count cannot be restored by
        grain; it is repositioned by `set_state_from_other_sharding`, with a warning."""
        if not checked:
            self.check_compatible(step, abstract_state)
        saved = self.saved_data_states(step)
        saved_count = {n for n, _ in saved.values()}
        follows = saved_count == {jax.process_count()}
        args = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iter is not None and follows:
            args["data"] = grain.checkpoint.CheckpointRestore(data_iter)
        state = self.manager.restore(step, args=ocp.args.Composite(**args))["state"]
        if data_iter is not None and saved and not follows:
            n = max(saved_count)
            if saved_count != {n} or sorted(saved) != list(range(n)):
                raise ValueError(
                    f"{self.directory}/{step}/data holds iterator states of processes {sorted(saved)} "
                    f"(counts {sorted(saved_count)}): incomplete; restore an earlier step"
                )
            position = data_iter.set_state_from_other_sharding([saved[i][1] for i in range(n)])
            num_examples = saved[0][1]["fingerprint"]["num_examples"]
            logging.warning(
                "Checkpoint %s/%d: the data iterator was saved by %d process(es), this run has %d; grain's state "
                "cannot follow, so a new iterator (same seed) resumes at global example %d (epoch %d, example %d "
                "of %d). Every global batch holds the same examples as without the change (none repeated or "
                "skipped), split differently over the processes; per-process MixUp/CutMix/RandAugment draws "
                "differ from an uninterrupted run.",
                self.directory,
                step,
                n,
                jax.process_count(),
                position,
                position // num_examples,
                position % num_examples,
                num_examples,
            )
        return state

    def restore_latest(self, abstract_state: Any, data_iter: Any) -> Any | None:
        """Restore the newest intact step (None when there is none at all).

        A damaged step (`checkpoint_health.damage`, or its restore fails) is named in a warning and,
        once an older step has restored, moved aside to `<step>.damaged-<UTC time>` (never deleted).
        When no step restores, nothing is moved and the error lists every step and why. A state of
        another architecture is a config error, not damage: `check_compatible` raises.
        """
        self._join()
        steps = sorted(self.manager.all_steps(), reverse=True)
        if not steps:
            return None
        damaged: list[tuple[int, str]] = []
        for step in steps:
            why = checkpoint_health.damage(epath.Path(self.directory) / str(step), need_data=data_iter is not None)
            if why is None:
                try:
                    saved = self.manager.item_metadata(step)["state"]
                except Exception as e:  # a missing or truncated array file
                    why = f"its array metadata cannot be read: {_first_line(e)}"
            if why is None:
                self.check_compatible(step, abstract_state, saved)
                try:
                    state = self.restore(step, abstract_state, data_iter, checked=True)
                except Exception as e:  # a truncated array file, an unreadable iterator state, ...
                    why = f"restoring it failed: {_first_line(e)}"
                else:
                    self._set_aside(damaged)
                    logging.info("Resuming from %s/%d", self.directory, step)
                    return state
            logging.warning("Checkpoint %s/%d is damaged: %s", self.directory, step, why)
            damaged.append((step, why))
        earlier = checkpoint_health.damaged_folders(self.directory)
        lines = [f"No checkpoint in {self.directory} can be restored; found:"]
        lines += [f"  step {step}: {why}" for step, why in damaged]
        lines += [f"  {name}: moved aside earlier" for name in earlier]
        lines.append(
            "Nothing was changed. Repair or remove the damaged step folders (or use a fresh --workdir) "
            "to start again from step 0."
        )
        raise CheckpointDamagedError("\n".join(lines))

    def _set_aside(self, damaged: list[tuple[int, str]]) -> None:
        if not damaged:
            return
        if jax.process_index() == 0:
            for step, why in damaged:
                moved = checkpoint_health.move_aside(epath.Path(self.directory) / str(step))
                logging.warning(
                    "Checkpoint step %d was damaged (%s); moved it aside to %s (not deleted) and resumed "
                    "from the newest intact step.",
                    step,
                    why,
                    moved,
                )
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("nf_checkpoint_set_aside")
        self.manager.reload()

    def wait(self) -> None:
        self._join()
        with self._disk_full_as_one_error():
            self.manager.wait_until_finished()

    def close(self) -> None:
        try:
            if not self._disk_full:  # after a full disk, reported once: nothing more to wait for
                self.wait()
        finally:
            if self._worker is not None:
                self._worker.shutdown()
            # After a full disk nf-train exits at once (the failed save is reported once); closing
            # the manager would close Orbax's event loop under TensorStore callbacks still in
            # flight, which then print "Event loop is closed" tracebacks.
            if not self._disk_full:
                self.manager.close()
