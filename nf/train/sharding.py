"""Device meshes and sharding rules.

The batch is split over every mesh axis; parameters (and everything shaped like them: optimizer
state, EMA) are replicated, or sharded over the `fsdp` axis on their largest divisible dimension
(never a scanned-block axis); tensors below `min_fsdp_size` elements stay replicated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp")
FSDP_MIN_SIZE = 2**14  # elements; smaller tensors stay replicated (their all-gathers cost more than they save)


def make_mesh(axes: Mapping[str, int], devices: Sequence[Any] | None = None) -> jax.sharding.Mesh:
    """Mesh over `devices` (default: all of this run's) from e.g. {'data': -1, 'fsdp': 1}; one -1
    takes the remaining devices. `nf-train` and `nf-plan` (TPU devices described by libtpu) both
    build their mesh here.

    Devices of several TPU slices (multi-slice: `slice_index` differs) get a hybrid mesh, laid out
    as MaxText and axlearn do: the `data` axis spans the slices outermost (only the gradient
    all-reduce crosses the data-center network), `fsdp` and the rest of `data` stay inside a slice
    (its chip-to-chip interconnect)."""
    unknown = set(axes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"Unknown mesh axes {sorted(unknown)}; valid: {MESH_AXES}")
    devices = list(jax.devices() if devices is None else devices)
    sizes = {name: int(axes.get(name, 1)) for name in MESH_AXES}
    n = len(devices)
    fixed = int(np.prod([s for s in sizes.values() if s != -1]))
    if list(sizes.values()).count(-1) > 1 or fixed <= 0 or n % fixed:
        raise ValueError(f"Mesh {dict(axes)} does not fit {n} devices: sizes must multiply to {n} (one may be -1)")
    sizes = {k: (n // fixed if v == -1 else v) for k, v in sizes.items()}
    if int(np.prod(list(sizes.values()))) != n:
        raise ValueError(f"Mesh {sizes} uses {int(np.prod(list(sizes.values())))} devices but {n} are present")
    axis_types = (AxisType.Auto,) * len(MESH_AXES)
    slices = num_slices(devices)
    if slices == 1:
        return jax.make_mesh(tuple(sizes.values()), MESH_AXES, axis_types=axis_types, devices=devices)
    if sizes["data"] % slices:
        raise ValueError(
            f"Mesh {sizes} over {slices} slices: the data axis ({sizes['data']}) must be a multiple of the "
            f"slice count (it spans the slices); lower mesh.fsdp to at most {n // slices} (one slice's devices)"
        )
    from jax.experimental import mesh_utils

    grid = mesh_utils.create_hybrid_device_mesh(
        (sizes["data"] // slices, sizes["fsdp"]), (slices, 1), devices, allow_split_physical_axes=True
    )
    return jax.sharding.Mesh(grid, MESH_AXES, axis_types=axis_types)


def num_slices(devices: Sequence[Any]) -> int:
    """How many TPU slices `devices` span (1 for CPU/GPU devices, which have no `slice_index`)."""
    return len({getattr(d, "slice_index", 0) or 0 for d in devices})


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Leading (batch) axis split over every mesh axis."""
    return NamedSharding(mesh, P(MESH_AXES))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp: int, stack_axes: int = 0, min_size: int = FSDP_MIN_SIZE) -> P:
    """Shard the largest dimension divisible by `fsdp` (excluding stacked-block axes)."""
    if fsdp <= 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    candidates = [(shape[d], d) for d in range(stack_axes, len(shape)) if shape[d] % fsdp == 0]
    if not candidates:
        return P()
    _, dim = max(candidates)
    return P(*[("fsdp" if d == dim else None) for d in range(len(shape))])


def param_shardings(mesh: jax.sharding.Mesh, params: Any, stack_axes: Any, min_size: int = FSDP_MIN_SIZE) -> Any:
    """NamedShardings for a parameter-shaped tree (`stack_axes`: int per leaf, same structure)."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(lambda x, k: NamedSharding(mesh, fsdp_spec(x.shape, fsdp, k, min_size)), params, stack_axes)


def train_state_shardings(
    mesh: jax.sharding.Mesh, tx: Any, params: Any, stack_axes: Any, model_state: Any, min_size: int = FSDP_MIN_SIZE
) -> dict[str, Any]:
    """Shardings of the train state {step, params, opt_state, ema, model_state}: parameter-shaped
    trees (params, EMA, the optimizer's per-parameter buffers) follow the FSDP rule; the rest is
    replicated. `params` may be abstract (shapes only); `tx` is the optax transformation."""
    import optax

    p_shard = param_shardings(mesh, params, stack_axes, min_size)
    opt_state = jax.eval_shape(tx.init, params)
    return {
        "step": replicated(mesh),
        "params": p_shard,
        "opt_state": optax.tree_map_params(
            tx, lambda _, s: s, opt_state, p_shard, transform_non_params=lambda _: replicated(mesh)
        ),
        "ema": p_shard,
        "model_state": jax.tree.map(lambda _: replicated(mesh), model_state),
    }
