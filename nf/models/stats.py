"""Model statistics shared by `nf-model-stats`, `tools/benchmark.py` and the tests.

- `count_params`: number of `nnx.Param` scalars, from an abstract model (`nnx.eval_shape`: no
  parameter memory is allocated).
- `forward_macs`: multiply-accumulates of the convolutions and matrix products of the forward
  pass, read from its jaxpr (no compile; convs traced as lax's conv, `set_conv_impl(model, "lax")`, since
  conv2d's narrow-group path is no conv or matmul): every output element of a conv costs kh*kw*cin/groups,
  of a matmul the contracted size; scan bodies count once per iteration. This is the convention of
  published figures (NFNet-F0: 12.38B at 256px) and counts padded positions like any other.
- `xla_flops`: FLOPs from XLA's cost analysis of a jitted function (what the benchmark divides by
  time; XLA skips padded positions and adds element-wise work).

XLA's cost analysis counts the body of a `while` loop once, whatever its trip count, so a
network whose stages run under `jax.lax.scan` would be undercounted (NF-ResNet-50 would
report about the cost of NF-ResNet-26). `xla_flops` therefore traces with every scan unrolled
(`unrolled_scans`); the executed program is unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.extend import core as jex_core

from nf.layers import set_conv_impl
from nf.models import stages

ModelOrFactory = nnx.Module | Callable[[], nnx.Module]


@contextlib.contextmanager
def _scan_replaced(replacement: Callable) -> Iterator[None]:
    """Within the block, `jax.lax.scan` is `replacement(original_scan)` (cost analysis only)."""
    original = jax.lax.scan
    jax.lax.scan = functools.wraps(original)(replacement(original))
    try:
        yield
    finally:
        jax.lax.scan = original


@contextlib.contextmanager
def unrolled_scans() -> Iterator[None]:
    """Within the block, `jax.lax.scan` fully unrolls its loop (for cost analysis only); a scan
    that names its own `unroll` keeps it (gradient accumulation, which would otherwise hold every
    micro-batch's activations at once). Rematerialized blocks keep their recomputation
    (`stages.SCANS_UNROLLED`)."""
    token = stages.SCANS_UNROLLED.set(True)
    try:
        with _scan_replaced(lambda original: lambda *args, **kwargs: original(*args, **{"unroll": True, **kwargs})):
            yield
    finally:
        stages.SCANS_UNROLLED.reset(token)


def recorded_scans(records: list):
    """Within the block, `jax.lax.scan` runs as written (a loop) and appends `(body, carry, x, n)`
    to `records`: its body, the carry's and one iteration's inputs as ShapeDtypeStructs, and its trip
    count (for costing a body alone, `nf.plan`). A scan that names its own `unroll` is not recorded."""

    def replacement(original):
        def scan(f, init, xs=None, length=None, **kwargs):
            if "unroll" not in kwargs:
                n = length if length is not None else jax.tree.leaves(xs)[0].shape[0]
                carry = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), init)
                x = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), xs)
                records.append((f, carry, x, n))
            return original(f, init, xs, length=length, **kwargs)

        return scan

    return _scan_replaced(replacement)


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


def jaxpr_macs(jaxpr: jex_core.Jaxpr) -> int:
    """Conv + dot_general multiply-accumulates of a jaxpr, recursing into sub-jaxprs (scans × length,
    conds: the most expensive branch, while loops: one iteration)."""
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            out = eqn.outvars[0].aval.shape
            rhs = eqn.invars[1].aval.shape
            out_feature_dim = eqn.params["dimension_numbers"].rhs_spec[0]
            total += math.prod(out) * math.prod(rhs) // rhs[out_feature_dim]
        elif name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
        elif name == "cond":
            total += max(jaxpr_macs(b.jaxpr) for b in eqn.params["branches"])
        else:
            subs = [v for v in eqn.params.values() if isinstance(v, (jex_core.Jaxpr, jex_core.ClosedJaxpr))]
            inner = sum(jaxpr_macs(getattr(sub, "jaxpr", sub)) for sub in subs)
            total += inner * (eqn.params["length"] if name == "scan" else 1)
    return total


def forward_macs(
    model: ModelOrFactory,
    image_size: int,
    *,
    batch_size: int = 1,
    in_channels: int | None = None,
    train: bool = False,
) -> int:
    """Conv + matmul multiply-accumulates of one forward pass (see the module docstring)."""
    graphdef, variables, rest = abstract_model(model)
    lax_model = set_conv_impl(nnx.merge(graphdef, variables, rest), "lax")  # every conv as a conv
    if in_channels is None:
        in_channels = getattr(lax_model, "in_channels", 3)
    graphdef, variables, rest = nnx.split(lax_model, nnx.Variable, ...)

    def forward(variables, x):
        return nnx.merge(graphdef, variables, rest)(x, train=train)

    x = jax.ShapeDtypeStruct((batch_size, image_size, image_size, in_channels), jnp.float32)
    return jaxpr_macs(jax.make_jaxpr(forward)(variables, x).jaxpr)


def model_stats(name: str, image_sizes: tuple[int, ...] | None = None, **overrides: Any) -> dict:
    """`{"model", "params", "macs": {size: MACs}}` of a registered model at batch 1, by default at
    its train and test resolutions."""
    from nf.models.registry import DEFAULT_IMAGE_SIZE, TEST_IMAGE_SIZE, create_model

    sizes = image_sizes or tuple(dict.fromkeys((DEFAULT_IMAGE_SIZE[name], TEST_IMAGE_SIZE[name])))

    def factory():
        return create_model(name, **overrides)

    return {
        "model": name,
        "params": count_params(factory),
        "macs": {int(size): forward_macs(factory, size) for size in sizes},
    }
