"""Model statistics shared by `tools/model_stats.py`, `tools/benchmark.py` and the tests.

- `count_params`: number of `nnx.Param` scalars, from an abstract model (`nnx.eval_shape`: no
  parameter memory is allocated).
- `forward_flops` / `forward_macs`: FLOPs from XLA's cost analysis of the jitted forward pass
  (`jax.jit(f).lower(...).compile().cost_analysis()['flops']`); MACs are FLOPs / 2.

XLA's cost analysis counts the body of a `while` loop once, whatever its trip count, so a
network whose stages run under `jax.lax.scan` would be undercounted (NF-ResNet-50 would
report about the cost of NF-ResNet-26). `xla_flops` therefore traces with every scan unrolled
(`unrolled_scans`); the executed program is unchanged.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

ModelOrFactory = nnx.Module | Callable[[], nnx.Module]


@contextlib.contextmanager
def unrolled_scans() -> Iterator[None]:
    """Within the block, `jax.lax.scan` fully unrolls its loop (for cost analysis only)."""
    original = jax.lax.scan

    @functools.wraps(original)
    def scan(*args, **kwargs):
        kwargs["unroll"] = True
        return original(*args, **kwargs)

    jax.lax.scan = scan
    try:
        yield
    finally:
        jax.lax.scan = original


def abstract_model(model: ModelOrFactory) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """`(graphdef, variables, rest)` of a model without allocating its variables.

    `variables` holds every `nnx.Variable` (params, batch stats) as `jax.ShapeDtypeStruct`s;
    `rest` holds the remaining array attributes (e.g. per-block constants stored as numpy
    arrays) as *concrete* values, since the forward pass may need them at trace time.
    `model` is a module (concrete or abstract) or a zero-argument factory.
    """
    if isinstance(model, nnx.Module):
        graphdef, variables, rest = nnx.split(model, nnx.Variable, ...)
        if any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(rest)):
            raise ValueError(
                "This abstract model lost its non-Variable array attributes to ShapeDtypeStructs; "
                "pass the factory (e.g. `lambda: create_model(name)`) instead of nnx.eval_shape's output."
            )
        return graphdef, jax.tree.map(_to_spec, variables), rest

    captured = {}

    def build():
        graphdef, variables, rest = nnx.split(model(), nnx.Variable, ...)
        captured["graphdef"], captured["rest"] = graphdef, rest  # non-traced values leave the trace intact
        return variables

    variables = jax.eval_shape(build)
    return captured["graphdef"], variables, captured["rest"]


def _to_spec(x: Any) -> Any:
    return jax.ShapeDtypeStruct(x.shape, x.dtype) if hasattr(x, "shape") and hasattr(x, "dtype") else x


def count_params(model: ModelOrFactory) -> int:
    """Number of scalars in the model's `nnx.Param` leaves (`model` may be a factory)."""
    if not isinstance(model, nnx.Module):
        model = nnx.eval_shape(model)
    return int(sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))))


def _cost_flops(cost: Any) -> float:
    if isinstance(cost, (list, tuple)):  # older jax returned one dict per device program
        cost = cost[0]
    if not cost or "flops" not in cost:
        raise RuntimeError(f"XLA cost analysis returned no 'flops' entry: {cost!r}")
    return float(cost["flops"])


def xla_flops(fn: Callable[..., Any], *args: Any, compiled: bool = True, unroll: bool = True) -> float:
    """FLOPs of `jax.jit(fn)(*args)` from XLA's cost analysis; args may be ShapeDtypeStructs.

    `compiled=True` analyses the optimized module (`.compile().cost_analysis()`); `False` the
    lowered, unoptimized one (no compile, ~1% higher: it still holds ops XLA later removes).
    `unroll=True` unrolls scans so loop bodies are counted once per iteration.
    """

    def fresh(*a):  # a new function object: jit's trace cache must not return a jaxpr traced
        return fn(*a)  # earlier, without the unrolling

    ctx = unrolled_scans() if unroll else contextlib.nullcontext()
    with ctx:
        lowered = jax.jit(fresh).lower(*args)
    return _cost_flops(lowered.compile().cost_analysis() if compiled else lowered.cost_analysis())


def forward_flops(
    model: ModelOrFactory,
    image_size: int,
    *,
    batch_size: int = 1,
    in_channels: int | None = None,
    train: bool = False,
    compiled: bool = True,
) -> float:
    """FLOPs of one forward pass on a `(batch_size, image_size, image_size, C)` float32 batch."""
    graphdef, variables, rest = abstract_model(model)
    if in_channels is None:
        in_channels = getattr(nnx.merge(graphdef, variables, rest), "in_channels", 3)

    def forward(variables, x):
        return nnx.merge(graphdef, variables, rest)(x, train=train)

    x = jax.ShapeDtypeStruct((batch_size, image_size, image_size, in_channels), jnp.float32)
    return xla_flops(forward, variables, x, compiled=compiled)


def forward_macs(model: ModelOrFactory, image_size: int, **kwargs: Any) -> float:
    """Multiply-accumulates of one forward pass (cost-analysis FLOPs / 2)."""
    return forward_flops(model, image_size, **kwargs) / 2


def model_stats(name: str, image_size: int | None = None, *, compiled: bool = True, **overrides: Any) -> dict:
    """`{"model", "image_size", "params", "macs"}` of a registered model at batch 1."""
    from nf.models.registry import DEFAULT_IMAGE_SIZE, create_model

    image_size = image_size or DEFAULT_IMAGE_SIZE[name]

    def factory():
        return create_model(name, **overrides)

    return {
        "model": name,
        "image_size": int(image_size),
        "params": count_params(factory),
        "macs": round(forward_macs(factory, image_size, compiled=compiled)),
    }
