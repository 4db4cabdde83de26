"""Start a dense model from a classification checkpoint (`--config.init_from=PATH`).

The dense model's backbone is the classification model without its classifier (nf.models.dense),
so the saved `params` (or `ema`) and `model_state` trees hold the backbone's tree plus the
classifier. Only the backbone's leaves are read (an orbax partial restore onto the trainer's
shardings); the head keeps its fresh initialization. The backbone's paths and shapes must all be
in the checkpoint; saved entries under a top-level module the backbone does not have (the
classifier) are skipped, any other difference fails naming the paths.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from nf.models.dense import BACKBONE_KEY
from nf.train.checkpoint import path_str

PARAM_SOURCES = ("ema", "raw")  # which saved weights initialize the backbone


def find_checkpoint(path: str) -> str:
    """The `<step>/state` directory of `path` (local or gs://): a workdir, its `checkpoints` folder
    (latest step) or one step directory."""
    if "://" not in path:
        path = os.path.abspath(os.path.expanduser(path))
    root = epath.Path(path)
    if (root / "state").is_dir():
        return os.fspath(root / "state")
    for folder in (root / "checkpoints", root):
        steps = [
            int(p.name)
            for p in (folder.iterdir() if folder.is_dir() else [])
            if p.name.isdigit() and (p / "state").is_dir()
        ]
        if steps:
            return os.fspath(folder / str(max(steps)) / "state")
    raise FileNotFoundError(
        f"init_from={path!r} holds no checkpoint: expected a workdir with checkpoints/<step>/state, "
        "a checkpoints folder or one <step> folder (train the classifier first, or set "
        "--config.init_from='' to train from scratch)."
    )


def check_init_from(init_from: str, workdir: str) -> None:
    """Fail early (before anything is built or written) when a fresh run's `init_from` holds no
    checkpoint; a workdir with its own checkpoints resumes from them and never reads it."""
    try:
        find_checkpoint(os.fspath(epath.Path(workdir) / "checkpoints"))
    except FileNotFoundError:
        find_checkpoint(init_from)


def _flat(tree: Any) -> dict[str, Any]:
    return {path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _check(state_dir: str, item: str, saved: Any, wanted: Any) -> None:
    saved_flat, wanted_flat = _flat(saved), _flat(wanted)
    top_level = {k.split("]")[0] for k in wanted_flat}  # the backbone's modules, e.g. "['stages'"
    missing = sorted(set(wanted_flat) - set(saved_flat))
    extra = sorted(k for k in set(saved_flat) - set(wanted_flat) if k.split("]")[0] in top_level)
    differ = sorted(
        k for k in set(wanted_flat) & set(saved_flat) if tuple(saved_flat[k].shape) != tuple(wanted_flat[k].shape)
    )
    if missing or extra or differ:
        lines = [f"The checkpoint {state_dir} ({item}) holds another backbone than the config builds:"]
        for title, keys in (("missing in checkpoint", missing), ("unexpected in checkpoint", extra)):
            if keys:
                more = f" (+{len(keys) - 10} more)" if len(keys) > 10 else ""
                lines.append(f"  {title}: " + "; ".join(keys[:10]) + more)
        if differ:
            shown = [f"{k} {tuple(saved_flat[k].shape)} vs {tuple(wanted_flat[k].shape)}" for k in differ[:10]]
            lines.append("  shape differs (checkpoint vs config): " + "; ".join(shown))
        lines.append("Set config.model to the architecture that wrote the checkpoint (output_stride may differ).")
        raise ValueError("\n".join(lines))


def restore_backbone(init_from: str, source: str, state: dict, abstract_state: dict) -> dict:
    """`state` with its params, EMA and model state's backbone subtrees read from `init_from`.

    `source` picks the saved weights: "ema" (the averaged ones) or "raw"; both the trained
    params and the EMA start from them."""
    if source not in PARAM_SOURCES:
        raise ValueError(f"config.init_from_params={source!r} is unknown; valid: {PARAM_SOURCES}")
    if BACKBONE_KEY not in state["params"]:
        raise ValueError("init_from restores a backbone: it needs a dense task (config.task = segmentation or depth)")
    state_dir = find_checkpoint(init_from)
    saved_item = "ema" if source == "ema" else "params"
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(state_dir)
        meta = getattr(meta, "item_metadata", meta)
        if saved_item not in meta:
            raise ValueError(f"{state_dir} is not a trainer checkpoint: it has no {saved_item!r} entry")
        target = {saved_item: abstract_state["params"][BACKBONE_KEY]}
        _check(state_dir, saved_item, meta[saved_item], target[saved_item])
        backbone_state = abstract_state["model_state"].get(BACKBONE_KEY, {})
        if jax.tree.leaves(backbone_state):  # BatchNorm statistics
            _check(state_dir, "model_state", meta.get("model_state", {}), backbone_state)
            target["model_state"] = backbone_state
        restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), target)
        restored = ckptr.restore(
            state_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
        )
    backbone = restored[saved_item]
    state = dict(state)
    state["params"] = {**state["params"], BACKBONE_KEY: backbone}
    state["ema"] = {**state["ema"], BACKBONE_KEY: jax.tree.map(lambda x: x.copy(), backbone)}
    if "model_state" in restored:
        state["model_state"] = {**state["model_state"], BACKBONE_KEY: restored["model_state"]}
    return state
