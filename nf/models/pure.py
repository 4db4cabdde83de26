"""An NNX model as pure functions of pure-dict trees, the form the trainer's jitted step and the
checkpoints hold: `(params, model state)` = the model's `nnx.Param` leaves and everything else
(BatchNorm statistics). The trainer and the inference tools split and merge models only here.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
from flax import nnx


class LeafInfo(NamedTuple):
    """Structural facts about one parameter leaf (from its variable's metadata)."""

    stack_axes: int  # leading axes that index scanned blocks
    unit_rank: int  # rank of one block's tensor
    classifier: bool  # the final linear layer


def leaf_info(params: nnx.State) -> Any:
    """A pure-dict tree of LeafInfo with the structure of `nnx.to_pure_dict(params)`."""

    def info(v: nnx.Variable) -> LeafInfo:
        stack = v.get_metadata().get("stack_axes", 0)
        return LeafInfo(stack, len(v.shape) - stack, bool(v.get_metadata().get("classifier", False)))

    return nnx.to_pure_dict(jax.tree.map(info, params, is_leaf=lambda x: isinstance(x, nnx.Variable)))


def model_trees(model: nnx.Module) -> tuple[dict, dict]:
    """(params, model state) of `model` as pure dicts: the trainer's checkpoint trees."""
    _, params, rest = nnx.split(model, nnx.Param, ...)
    return nnx.to_pure_dict(params), nnx.to_pure_dict(rest)


def with_values(model: nnx.Module, params: dict, model_state: dict) -> nnx.Module:
    """A copy of `model` holding `params` and `model_state` (pure dicts of its structure)."""
    graphdef, params_state, rest_state = nnx.split(nnx.clone(model), nnx.Param, ...)
    nnx.replace_by_pure_dict(params_state, params)
    nnx.replace_by_pure_dict(rest_state, model_state)
    return nnx.merge(graphdef, params_state, rest_state)


def _from_pure(template: nnx.State, pure: Any) -> nnx.State:
    state = jax.tree.map(lambda x: x, template)  # fresh Variables; the template is not mutated
    nnx.replace_by_pure_dict(state, pure)
    return state


class ModelFns:
    """Pure functions of (params, model_state) around an NNX model's graph definition; `info` is
    the parameters' `LeafInfo` tree (the optimizer's and the sharding's structural facts)."""

    def __init__(self, model: nnx.Module):
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        self.params_template, self.rest_template = nnx.eval_shape(lambda: (params, rest))
        self.info = leaf_info(params)

    def init_values(self, model: nnx.Module) -> tuple[Any, Any]:
        return model_trees(model)

    def apply(self, params, model_state, images, *, train: bool, key=None, collect_stats: bool = False):
        model = self.merged(params, model_state)
        out = model(images, train=train, key=key, collect_stats=collect_stats)
        return out, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.Param)))

    def merged(self, params, model_state) -> nnx.Module:
        return nnx.merge(
            self.graphdef, _from_pure(self.params_template, params), _from_pure(self.rest_template, model_state)
        )
