"""Is a saved step usable? Structural checks of one orbax step folder, before anything is restored,
and moving a damaged one aside (never deleting it).

A step folder `checkpoints/<step>/` holds orbax's step metadata, `state/` (the arrays, saved by
orbax's StandardCheckpointHandler) and `data/` (grain's iterator state, `process_<i>-of-<n>.json`).
Orbax commits a step by renaming a temporary folder, so a step folder is complete unless something
damaged it afterwards (a full disk, a partial copy, a person). The orbax parts are checked through
orbax's public API only (`orbax.checkpoint.metadata.get_step_metadata` and the handler's
`metadata()`, which reads the tree, the shardings and every array's metadata), never by orbax's
file names, which are its own to change; the arrays' bytes are checked by restoring them
(`Checkpoints.restore_latest`).
"""

from __future__ import annotations

import json
import re
import time

import orbax.checkpoint as ocp
from etils import epath

DATA_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json")  # grain: one iterator state per process
DAMAGED_SUFFIX = ".damaged-"  # `<step>.damaged-<UTC time>`: not a step name to orbax (digits only)


def first_line(e: BaseException) -> str:
    """`Type: first line of the message` of an exception, for one-line reports."""
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text[:300]}"


def _json(path: epath.Path) -> tuple[object | None, str | None]:
    try:
        return json.loads(path.read_text()), None
    except FileNotFoundError:
        return None, f"{path} is missing"
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"{path} is unreadable ({first_line(e)})"


def _orbax_damage(step_dir: epath.Path) -> str | None:
    """Why orbax cannot read the step's metadata or its array tree's metadata, or None."""
    try:
        ocp.metadata.get_step_metadata(step_dir)
    except Exception as e:  # missing or unparsable: orbax says which file
        return f"{step_dir}: orbax cannot read the step's metadata ({first_line(e)})"
    state = step_dir / "state"
    if not state.is_dir():
        return f"{state} is missing"
    try:
        tree = ocp.StandardCheckpointHandler().metadata(state).tree
    except Exception as e:  # a missing or truncated metadata, sharding or array index file
        return f"{state} cannot be read: {first_line(e)}"
    if not tree:
        return f"{state} holds no arrays"
    return None


def damage(step_dir: epath.Path, *, need_data: bool) -> str | None:
    """Why `step_dir` cannot be restored (naming the file), or None when its structure is intact:
    orbax reads its step metadata and the metadata of a non-empty array tree, and (`need_data`)
    there is one readable iterator state per saving process."""
    step_dir = epath.Path(step_dir)
    why = _orbax_damage(step_dir)
    if why or not need_data:
        return why
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
