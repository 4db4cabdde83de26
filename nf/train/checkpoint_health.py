"""Is a saved step usable? Structural checks of one orbax step folder, before anything is restored,
and moving a damaged one aside (never deleting it).

A step folder `checkpoints/<step>/` holds `state/` (orbax's StandardCheckpointHandler: `_METADATA`
with the tree, `_sharding`, `manifest.ocdbt` and the array data) and `data/` (grain's iterator
state, `process_<i>-of-<n>.json`). Orbax commits a step by renaming a temporary folder, so a step
folder is complete unless something damaged it afterwards (a full disk, a partial copy, a person).
The arrays themselves are checked by restoring them (`Checkpoints.restore_latest`).
"""

from __future__ import annotations

import json
import re
import time

from etils import epath

DATA_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json")  # grain: one iterator state per process
DAMAGED_SUFFIX = ".damaged-"  # `<step>.damaged-<UTC time>`: not a step name to orbax (digits only)


def _json(path: epath.Path) -> tuple[object | None, str | None]:
    try:
        return json.loads(path.read_text()), None
    except FileNotFoundError:
        return None, f"{path} is missing"
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"{path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def damage(step_dir: epath.Path, *, need_data: bool) -> str | None:
    """Why `step_dir` cannot be restored (naming the file), or None when its structure is intact:
    readable metadata, a non-empty array tree with its manifest, and (`need_data`) one readable
    iterator state per saving process."""
    step_dir = epath.Path(step_dir)
    meta = step_dir / "_CHECKPOINT_METADATA"
    if meta.exists():
        _, why = _json(meta)
        if why:
            return why
    state = step_dir / "state"
    if not state.is_dir():
        return f"{state} is missing"
    tree, why = _json(state / "_METADATA")
    if why:
        return why
    if not isinstance(tree, dict) or not tree.get("tree_metadata"):
        return f"{state / '_METADATA'} lists no arrays"
    if (state / "_sharding").exists():
        _, why = _json(state / "_sharding")
        if why:
            return why
    if tree.get("use_ocdbt", True) and not (state / "manifest.ocdbt").exists():
        return f"{state / 'manifest.ocdbt'} (the array index) is missing"
    if need_data:
        data = step_dir / "data"
        if not data.is_dir():
            return f"{data} (the input iterator's position) is missing"
        found = {int(m.group(1)): int(m.group(2)) for p in data.iterdir() if (m := DATA_FILE.fullmatch(p.name))}
        if not found:
            return f"{data} holds no iterator state (process_<i>-of-<n>.json)"
        counts = set(found.values())
        if len(counts) != 1 or sorted(found) != list(range(max(counts))):
            return f"{data} holds iterator states of processes {sorted(found)} of {sorted(counts)}: incomplete"
        for i, n in found.items():
            _, why = _json(data / f"process_{i}-of-{n}.json")
            if why:
                return why
    return None


def move_aside(step_dir: epath.Path) -> epath.Path:
    """Rename `<step>` to `<step>.damaged-<UTC time>` next to it (orbax ignores such names)."""
    step_dir = epath.Path(step_dir)
    target = step_dir.parent / f"{step_dir.name}{DAMAGED_SUFFIX}{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    step_dir.rename(target)
    return target


def damaged_folders(directory: epath.Path) -> list[str]:
    """Names of step folders moved aside earlier."""
    directory = epath.Path(directory)
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if DAMAGED_SUFFIX in p.name)
