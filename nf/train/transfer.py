"""Start a model from a classification checkpoint (`--config.init_from=PATH`): a workdir of
nf-train, nf-import or nf.inference.save_model (the same layout).

Dense models (segmentation, depth): the backbone is the classification model without its
classifier (nf.tasks.dense), so the saved `params` (or `ema`) and `model_state` trees hold the
backbone's tree plus the classifier. Only the backbone's leaves are read (an orbax partial
restore onto the trainer's shardings); the head keeps its fresh initialization. The backbone's
paths and shapes must all be in the checkpoint; saved entries under a top-level module the
backbone does not have (the classifier) are skipped, any other difference fails naming the paths.

Classifiers (fine-tuning): every parameter but the classifier (the variables tagged
`classifier=True`, found by that tag) is read; the classifier is read too when its shape matches
(same classes), else it keeps its fresh initialization (a new head for the new classes).

`backbone_scales` gives the optimizer's per-leaf update scale for `config.freeze_backbone` (0)
and `config.backbone_lr_mult`: the backbone subtree of a dense model, every non-classifier leaf
of a classifier.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from nf.heads import BACKBONE_KEY
from nf.inference.checkpoint import check_shapes, find_checkpoint, path_str
from nf.models.pure import LeafInfo

PARAM_SOURCES = ("ema", "raw")  # which saved weights initialize the backbone


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
    """The backbone's paths and shapes must all be in the checkpoint; saved entries under a
    top-level module the backbone does not have (the classifier) are not compared."""
    wanted_shapes = {k: tuple(v.shape) for k, v in _flat(wanted).items()}
    top_level = {k.split("]")[0] for k in wanted_shapes}  # the backbone's modules, e.g. "['stages'"
    saved_shapes = {k: tuple(v.shape) for k, v in _flat(saved).items() if k.split("]")[0] in top_level}
    check_shapes(
        f"The checkpoint {state_dir} ({item})",
        saved_shapes,
        wanted_shapes,
        "Set config.model to the architecture that wrote the checkpoint (output_stride may differ).",
    )


def restore_backbone(init_from: str, source: str, state: dict, abstract_state: dict, info: Any = None) -> dict:
    """`state` with its params, EMA and model state's backbone subtrees read from `init_from`
    (a classifier's: all but a classifier of another shape; `info` is its `leaf_info` tree).

    `source` picks the saved weights: "ema" (the averaged ones) or "raw"; both the trained
    params and the EMA start from them."""
    if source not in PARAM_SOURCES:
        raise ValueError(f"config.init_from_params={source!r} is unknown; valid: {PARAM_SOURCES}")
    if BACKBONE_KEY not in state["params"]:
        if info is None:
            raise ValueError("restoring a classifier needs its leaf_info tree (the classifier's tags)")
        return restore_classifier(init_from, source, state, abstract_state, info)
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


def _is_info(x: Any) -> bool:
    return isinstance(x, LeafInfo)


def _prune(tree: Any, keep: Any) -> Any:
    """The nested dict `tree` with only the leaves where the matching `keep` leaf is True."""
    if isinstance(tree, dict):
        out = {k: _prune(v, keep[k]) for k, v in tree.items()}
        return {k: v for k, v in out.items() if not (isinstance(v, dict) and not v)}
    return tree if keep else {}


def _merge(base: Any, update: Any) -> Any:
    """`base` with the leaves of the (partial) nested dict `update` put in."""
    if isinstance(base, dict):
        return {k: _merge(v, update[k]) if k in update else v for k, v in base.items()}
    return update


def restore_classifier(init_from: str, source: str, state: dict, abstract_state: dict, info: Any) -> dict:
    """Fine-tuning: `state` with every non-classifier parameter (and the model state) read from
    `init_from`; the classifier too when its shapes match the checkpoint's, else kept fresh."""
    state_dir = find_checkpoint(init_from)
    saved_item = "ema" if source == "ema" else "params"
    wanted = abstract_state["params"]
    head = {k for k, i in _flat_info(info).items() if i.classifier}
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(state_dir)
        meta = getattr(meta, "item_metadata", meta)
        if saved_item not in meta:
            raise ValueError(f"{state_dir} is not a trainer checkpoint: it has no {saved_item!r} entry")
        saved_flat, wanted_flat = _flat(meta[saved_item]), _flat(wanted)
        same_head = all(k in saved_flat and saved_flat[k].shape == wanted_flat[k].shape for k in head)
        body = {k: v for k, v in wanted_flat.items() if k not in head}
        _check_all(state_dir, saved_item, {k: v for k, v in saved_flat.items() if k not in head}, body)
        keep = jax.tree.map(lambda i: same_head or not i.classifier, info, is_leaf=_is_info)
        target = {saved_item: _prune(wanted, keep)}
        if jax.tree.leaves(abstract_state["model_state"]):  # BatchNorm statistics
            _check_all(
                state_dir, "model_state", _flat(meta.get("model_state", {})), _flat(abstract_state["model_state"])
            )
            target["model_state"] = abstract_state["model_state"]
        restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), target)
        restored = ckptr.restore(
            state_dir, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
        )
    if not same_head:
        shapes = {k: tuple(saved_flat[k].shape) if k in saved_flat else None for k in sorted(head)}
        logging.info("init_from %s: a new classifier (checkpoint's %s), the rest restored", state_dir, shapes)
    params = _merge(state["params"], restored[saved_item])
    state = dict(state, params=params, ema=jax.tree.map(lambda x: x.copy(), params))
    if "model_state" in restored:
        state["model_state"] = restored["model_state"]
    return state


def _flat_info(info: Any) -> dict[str, LeafInfo]:
    return {path_str(p): i for p, i in jax.tree_util.tree_flatten_with_path(info, is_leaf=_is_info)[0]}


def _check_all(state_dir: str, item: str, saved_flat: dict, wanted_flat: dict) -> None:
    """Every wanted path with its shape in the checkpoint, and nothing else there."""
    check_shapes(
        f"The checkpoint {state_dir} ({item})",
        {k: v.shape for k, v in saved_flat.items()},
        {k: v.shape for k, v in wanted_flat.items()},
        "Set config.model to the architecture that wrote the checkpoint (its nf_model.json says which).",
    )


def backbone_scales(info: Any, *, freeze: bool = False, lr_mult: float = 1.0) -> Any | None:
    """Per-leaf update scales (a pure-dict tree of floats like the params of `info`, the trainer's
    per-parameter `LeafInfo`): 0 (frozen) or `lr_mult`
    on the backbone, 1 elsewhere; None when nothing is scaled. The backbone is the `backbone`
    subtree of a dense model, every leaf but the classifier of a classifier."""
    if lr_mult < 0:
        raise ValueError(f"config.backbone_lr_mult={lr_mult} must be >= 0 (0 freezes the backbone)")
    scale = 0.0 if freeze else float(lr_mult)
    if scale == 1.0:
        return None
    if BACKBONE_KEY in info:
        return {
            k: jax.tree.map(lambda i: scale if k == BACKBONE_KEY else 1.0, sub, is_leaf=_is_info)
            for k, sub in info.items()
        }
    return jax.tree.map(lambda i: 1.0 if i.classifier else scale, info, is_leaf=_is_info)
