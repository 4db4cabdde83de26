"""Model workdirs: an Orbax checkpoint in the trainer's layout plus the model card.

    DIR/nf_model.json                    the card (nf.data.card)
    DIR/checkpoints/<step>/state         {"step", "params", "ema", "model_state"[, "opt_state"]}

`save_model` writes step 0 with `ema` equal to `params` (an imported or exported model); `nf-train`
writes the same layout with the optimizer state. `load_model` reads either: a partial restore of
the chosen weights and the model state only, so the optimizer state is never read. Such a workdir
is also a valid `init_from` for fine-tuning (nf.train.transfer).

This module is the one place that knows the layout: the trainer's checkpoints
(nf.train.checkpoint) and `init_from` (nf.train.transfer) find step folders and compare saved
trees through it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx

from nf.data.card import CARD_FILE, ModelCard, card_from_config
from nf.data.preprocessing import ModelCardError
from nf.models.pure import model_trees, with_values

WEIGHTS = {"ema": "ema", "raw": "params"}  # --weights -> the saved item
CHECKPOINTS = "checkpoints"  # a workdir's folder of step folders `<step>/state`


def _abs(path: str | os.PathLike) -> str:
    path = os.fspath(path)
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def path_str(path) -> str:
    """`['stages']['0']['kernel']`: every key as a string, since orbax's metadata keys are strings
    while the live state has int keys for list entries (nnx.List stages)."""
    keys = (getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
    return "".join(f"['{k}']" for k in keys)


def check_shapes(where: str, saved: dict[str, tuple], wanted: dict[str, tuple], hint: str) -> None:
    """Fail, naming the paths, unless `saved` ({path: shape}) holds every wanted path with its shape
    and nothing else; `hint` says what to do."""
    missing = sorted(set(wanted) - set(saved))
    extra = sorted(set(saved) - set(wanted))
    differ = sorted(k for k in set(wanted) & set(saved) if tuple(saved[k]) != tuple(wanted[k]))
    if missing or extra or differ:
        lines = [f"{where} holds another model than the one built:"]
        for title, keys in (("missing in checkpoint", missing), ("unexpected in checkpoint", extra)):
            if keys:
                more = f" (+{len(keys) - 10} more)" if len(keys) > 10 else ""
                lines.append(f"  {title}: " + "; ".join(keys[:10]) + more)
        if differ:
            shown = [f"{k} {tuple(saved[k])} vs {tuple(wanted[k])}" for k in differ[:10]]
            lines.append("  shape differs (checkpoint vs model): " + "; ".join(shown))
        lines.append(hint)
        raise ValueError("\n".join(lines))


def shape_map(tree: Any) -> dict[str, tuple[int, ...]]:
    """{path_str: shape} of a tree's leaves (arrays, ShapeDtypeStructs or orbax metadata)."""
    return {path_str(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def step_folders(directory: str | os.PathLike) -> dict[int, epath.Path]:
    """The step folders `<step>` (digits only: orbax's names) of a checkpoints folder, by step;
    empty when the folder does not exist."""
    directory = epath.Path(directory)
    if not directory.is_dir():
        return {}
    return {int(p.name): p for p in directory.iterdir() if p.name.isdigit()}


def find_checkpoint(path: str) -> str:
    """The `<step>/state` directory of `path` (local or gs://): a workdir, its `checkpoints` folder
    (latest step) or one step directory."""
    if "://" not in path:
        path = os.path.abspath(os.path.expanduser(path))
    root = epath.Path(path)
    if (root / "state").is_dir():
        return os.fspath(root / "state")
    for folder in (root / CHECKPOINTS, root):
        steps = [step for step, p in step_folders(folder).items() if (p / "state").is_dir()]
        if steps:
            return os.fspath(folder / str(max(steps)) / "state")
    raise FileNotFoundError(
        f"init_from={path!r} holds no checkpoint: expected a workdir with checkpoints/<step>/state, "
        "a checkpoints folder or one <step> folder (train the classifier first, or set "
        "--config.init_from='' to train from scratch)."
    )


def save_model(model: nnx.Module, workdir: str | os.PathLike, card: ModelCard) -> str:
    """Writes `model` as step 0 of `workdir/checkpoints` (params = EMA) and `workdir/nf_model.json`;
    returns the checkpoint's `state` directory. Refuses a workdir that already holds checkpoints."""
    workdir = _abs(workdir)
    directory = epath.Path(workdir) / CHECKPOINTS
    if step_folders(directory):
        raise FileExistsError(f"{directory} already holds checkpoints; choose an empty --workdir (nothing written)")
    built = nnx.eval_shape(card.build_model)  # shapes only: no random init of a big model
    want, got = shape_map(model_trees(built)[0]), shape_map(model_trees(model)[0])
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))[:6]
        raise ValueError(
            f"the model does not match its card (model {card.name!r}, {card.num_classes} classes): "
            f"differing parameters {diff}"
        )
    params, model_state = model_trees(model)
    state = {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "ema": jax.tree.map(jnp.copy, params),
        "model_state": model_state,
    }
    options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
    with ocp.CheckpointManager(
        os.fspath(directory), options=options, item_handlers={"state": ocp.StandardCheckpointHandler()}
    ) as manager:
        manager.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(state)), force=True)
        manager.wait_until_finished()
    card.save(workdir)
    return os.fspath(directory / "0" / "state")


def state_dir(workdir: str | os.PathLike, step: int | None = None) -> str:
    """`workdir/checkpoints/<step>/state` (the latest step by default), failing with what is there."""
    workdir = _abs(workdir)
    if step is None:
        return find_checkpoint(workdir)
    path = epath.Path(workdir) / CHECKPOINTS / str(step) / "state"
    if not path.is_dir():
        steps = sorted(step_folders(epath.Path(workdir) / CHECKPOINTS))
        raise FileNotFoundError(f"{path} does not exist; saved steps in {workdir}: {steps or 'none'}")
    return os.fspath(path)


def check_tree(where: str, saved: Any, wanted: Any, hint: str) -> None:
    """Fail naming the paths when the saved tree's paths or shapes differ from the wanted ones."""
    check_shapes(where, shape_map(saved), shape_map(wanted), hint)


def restore_trees(path: str, target: dict[str, Any]) -> dict[str, Any]:
    """Partial restore of the items of `target` (abstract arrays with shardings) from a `state`
    directory; other saved items (opt_state, step) are not read."""
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(path)
        meta = getattr(meta, "item_metadata", meta)
        for item, wanted in target.items():
            if item not in meta:
                raise ValueError(f"{path} is not a trainer checkpoint: it has no {item!r} entry")
            check_tree(f"{path} ({item})", meta[item], wanted, "Use the model card (or --config) that wrote it.")
        restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), target)
        return ckptr.restore(
            path, args=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
        )


def read_card(workdir: str | os.PathLike, config: ml_collections.ConfigDict | None = None) -> ModelCard:
    """The workdir's card, or (with `config`, e.g. `--config` for a workdir without a card) the card
    of the classifier `config` trains: classes from its training data."""
    if config is None:
        return ModelCard.load(_abs(workdir))
    from nf import data as nf_data
    from nf.tasks import Classification, task_class

    task = task_class(config)
    if not issubclass(task, Classification):
        raise ModelCardError(f"config.task={task.name!r}: only classifiers have model cards")

    train = config.data.train.format(workdir=_abs(workdir))
    source = nf_data.open_source(train)
    return card_from_config(config, source.num_classes, getattr(source, "classes", None), {"kind": "nf-train"})


def load_trees(
    workdir: str | os.PathLike,
    weights: Sequence[str] = ("ema",),
    step: int | None = None,
    config: ml_collections.ConfigDict | None = None,
) -> tuple[nnx.Module, ModelCard, dict[str, dict], dict]:
    """`(model, card, {weights: params pure dict}, model state pure dict)` of `workdir`: the
    model built from its card (or from `config`) with its initial values, and each of `weights`
    ("ema", "raw") of `step` (default the latest) read in one partial restore."""
    unknown = [w for w in weights if w not in WEIGHTS]
    if unknown or not weights:
        raise ValueError(f"weights={list(weights)!r}: choose from {sorted(WEIGHTS)}")
    card = read_card(workdir, config)
    model = card.build_model()
    path = state_dir(workdir, step)
    params, model_state = model_trees(model)
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one), tree)
    target = {WEIGHTS[w]: abstract(params) for w in weights}
    if jax.tree.leaves(model_state):  # BatchNorm statistics
        target["model_state"] = abstract(model_state)
    restored = restore_trees(path, target)
    return model, card, {w: restored[WEIGHTS[w]] for w in weights}, restored.get("model_state", model_state)


def load_model(
    workdir: str | os.PathLike,
    weights: str = "ema",
    step: int | None = None,
    config: ml_collections.ConfigDict | None = None,
) -> tuple[nnx.Module, ModelCard]:
    """The model of `workdir` (built from its card, or from `config`) with its `weights` ("ema" or
    "raw") of `step` (default the latest), and the card."""
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r} is unknown; valid: {sorted(WEIGHTS)}")
    model, card, params, model_state = load_trees(workdir, (weights,), step, config)
    return with_values(model, params[weights], model_state), card


__all__ = [
    "CARD_FILE",
    "CHECKPOINTS",
    "WEIGHTS",
    "load_model",
    "load_trees",
    "model_trees",
    "read_card",
    "save_model",
    "state_dir",
    "step_folders",
    "with_values",
]
