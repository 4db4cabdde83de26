"""Checkpoint fallback on real orbax folders: the newest step is damaged the ways a disk, a copy or a
person damages it; the trainer's restore must name the step and file, move it aside (never delete)
and resume from the newest intact step with that step's arrays and iterator position."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest


def _state(step: int) -> dict:
    import jax.numpy as jnp

    return {"step": jnp.asarray(step, jnp.int32), "w": jnp.arange(12.0).reshape(3, 4) * step, "b": {"x": jnp.ones(5)}}


def _dataset():
    import grain

    return grain.MapDataset.range(100).to_iter_dataset()


def _write(directory: Path, steps=(1, 2, 3)) -> None:
    """Saves after consuming `step` examples: step s holds w = arange * s and iterator position s."""
    from nf.train.checkpoint import Checkpoints

    it = iter(_dataset())
    ckpt = Checkpoints(str(directory), save_every=1, max_to_keep=5, background=True)
    for step in steps:
        next(it)
        ckpt.save(step, _state(step), it)
    ckpt.close()


def _restore(directory: Path):
    """(restored state or exception, next example of the restored iterator)."""
    import jax

    from nf.train.checkpoint import Checkpoints

    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(1))
    it = iter(_dataset())
    ckpt = Checkpoints(str(directory), save_every=1, max_to_keep=5)
    try:
        state = ckpt.restore_latest(abstract, it)
    finally:
        ckpt.close()
    return state, next(it)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _empty_state(step_dir: Path) -> None:
    shutil.rmtree(step_dir / "state")
    (step_dir / "state").mkdir()


def _truncate_arrays(step_dir: Path) -> None:
    for root, _, files in os.walk(step_dir / "state"):
        for name in files:
            if Path(root).name == "d":  # ocdbt data files hold the array bytes
                _truncate(Path(root) / name)


# Damage to orbax's files is named as orbax reports it (read through its public API, never by its
# file names); the test damages the files orbax 0.12 writes.
DAMAGES = {
    "truncated step metadata": (
        lambda d: _truncate(d / "_CHECKPOINT_METADATA"),
        "orbax cannot read the step's metadata (ValueError",
    ),
    "truncated _sharding": (lambda d: _truncate(d / "state" / "_sharding"), "/state cannot be read: ValueError"),
    "truncated _METADATA": (lambda d: _truncate(d / "state" / "_METADATA"), "/state cannot be read: JSONDecodeError"),
    "emptied state/": (_empty_state, "/state cannot be read: FileNotFoundError"),
    "missing array index": (lambda d: (d / "state" / "manifest.ocdbt").unlink(), "/state cannot be read: ValueError"),
    "missing data/": (lambda d: shutil.rmtree(d / "data"), "data (the input iterator's position) is missing"),
    "truncated data file": (
        lambda d: _truncate(d / "data" / "process_0-of-1.json"),
        "process_0-of-1.json is unreadable",
    ),
    "truncated array data": (_truncate_arrays, "cannot be read: ValueError"),
}


@pytest.mark.parametrize("kind", list(DAMAGES))
def test_damaged_latest_step_falls_back_to_the_previous_one(tmp_path, kind, caplog):
    directory = tmp_path / "checkpoints"
    _write(directory)
    damage_fn, reason = DAMAGES[kind]
    damage_fn(directory / "3")
    files_before = sorted(str(p.relative_to(directory / "3")) for p in (directory / "3").rglob("*"))

    with caplog.at_level("WARNING"):
        state, next_example = _restore(directory)
    assert int(state["step"]) == 2
    np.testing.assert_array_equal(np.asarray(state["w"]), np.arange(12.0).reshape(3, 4) * 2)
    assert next_example == 2  # the iterator of step 2 (two examples consumed), not of step 3 or 0
    text = caplog.text
    assert f"{directory}/3 is damaged" in text and reason in text, text
    moved = [p for p in directory.iterdir() if p.name.startswith("3.damaged-")]
    assert len(moved) == 1 and not (directory / "3").exists()
    assert f"moved it aside to {moved[0]}" in text
    # never deleted: every file of the damaged step is still there, under its new name
    assert sorted(str(p.relative_to(moved[0])) for p in moved[0].rglob("*")) == files_before

    # orbax keeps working next to the moved-aside folder: steps, saves, keep-N
    from nf.train.checkpoint import Checkpoints

    ckpt = Checkpoints(str(directory), save_every=1, max_to_keep=2)
    assert ckpt.manager.all_steps() == [1, 2]
    it = iter(_dataset())
    for step in (3, 4, 5):
        ckpt.save(step, _state(step), it)
    ckpt.close()
    assert sorted(p.name for p in directory.iterdir()) == sorted(["4", "5", moved[0].name])


def test_no_intact_step_fails_listing_what_was_found_and_changes_nothing(tmp_path):
    from nf.train.checkpoint import CheckpointDamagedError

    directory = tmp_path / "checkpoints"
    _write(directory, steps=(1, 2))
    _truncate(directory / "2" / "state" / "_sharding")
    shutil.rmtree(directory / "1" / "data")
    before = sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))
    with pytest.raises(CheckpointDamagedError) as e:
        _restore(directory)
    msg = str(e.value)
    assert f"No checkpoint in {directory} can be restored" in msg
    assert "step 2: " in msg and "2/state cannot be read: ValueError" in msg and "_sharding" in msg
    assert "step 1: " in msg and "data (the input iterator's position) is missing" in msg
    assert sorted(str(p.relative_to(directory)) for p in directory.rglob("*")) == before


def test_intact_steps_restore_the_newest(tmp_path):
    directory = tmp_path / "checkpoints"
    _write(directory)
    state, next_example = _restore(directory)
    assert int(state["step"]) == 3 and next_example == 3
    assert sorted(p.name for p in directory.iterdir()) == ["1", "2", "3"]
