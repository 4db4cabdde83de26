"""What every residual family shares: the alpha/beta bookkeeping and scanned stages.

Blocks implement `block(x, *, beta, drop_rate, key, train) -> (out, residual)`, where
`residual` is the branch output f(x/beta) before it is scaled and added (the SPP's third
statistic). A stage runs its first (transition) block directly and its identical remaining
blocks under `jax.lax.scan`, so compile time does not grow with depth (short stages: a loop).
"""

from __future__ import annotations

import contextvars
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from flax import nnx

from nf.layers.conv import fold_ws
from nf.signal.stats import signal_stats

# Stages with at most this many blocks after the transition run them as a Python loop: a scan
# stacks every block's saved activations into per-stage buffers (zero-filled, written by
# dynamic-update-slice, read back by dynamic-slice); unrolled, NF-RegNet-B0's 192px train step
# is ~10% faster on XLA:CPU. Longer stages keep the scan, so compile time stays bounded for deep
# networks (NFNet-F7, NF-ResNet-288); shallow ones compile longer (NFNet-F0 ~1.3-1.4x).
UNROLL_MAX_BLOCKS = 6


# `model.remat` values: no rematerialization, or each block's activations recomputed in the
# backward pass ("block": only the block's input is saved), or a named `jax.checkpoint_policies`
# policy deciding what a block saves (e.g. "dots_saveable": matmul/conv outputs kept).
REMAT_NONE, REMAT_BLOCK = "none", "block"
# True while a program is traced with its scans unrolled to count its cost (`nf.models.stats.
# unrolled_scans`): a block's forward pass then sits beside its recomputation in one loop-free
# program, and the checkpoint must keep XLA from merging the two, as the loop does when it runs.
SCANS_UNROLLED = contextvars.ContextVar("nf_scans_unrolled", default=False)
REMAT_POLICIES = (
    "nothing_saveable",
    "everything_saveable",
    "dots_saveable",
    "dots_with_no_batch_dims_saveable",
)


def remat_mode(remat: bool | str | None) -> str:
    """The canonical `model.remat` value: "none", "block" or a policy name; bad ones raise."""
    if remat in (None, False, "", REMAT_NONE):
        return REMAT_NONE
    if remat is True or remat == REMAT_BLOCK:
        return REMAT_BLOCK
    if isinstance(remat, str) and remat in REMAT_POLICIES:
        return remat
    raise ValueError(
        f"model.remat={remat!r} is not one of {(REMAT_NONE, REMAT_BLOCK, *REMAT_POLICIES)} "
        "(none; block = recompute each block's activations; or a jax.checkpoint_policies name)"
    )


def rematerialized(fn: Callable, mode: str, *, in_loop: bool) -> Callable:
    """`fn` under `jax.checkpoint` per `mode` (`remat_mode`); unchanged for "none". In a scan the
    loop already keeps XLA from merging the recomputation into the forward pass (prevent_cse off,
    as JAX recommends); unrolled, prevent_cse must stay on."""
    if mode == REMAT_NONE:
        return fn
    policy = None if mode == REMAT_BLOCK else getattr(jax.checkpoint_policies, mode)
    return jax.checkpoint(fn, prevent_cse=not in_loop, policy=policy)


@dataclass(frozen=True)
class BlockConstants:
    """Per-block constants of one stage: input scale beta and stochastic-depth rate."""

    betas: tuple[float, ...]
    drop_rates: tuple[float, ...]


def block_schedule(
    depths: Sequence[int], alpha: float, drop_rate: float = 0.0, scale_inputs: bool = True
) -> list[BlockConstants]:
    """Analytic signal bookkeeping of an NF network (paper §4, paper §4).

    The expected variance starts at 1 and grows by alpha^2 per block; a transition block's
    shortcut sees x/beta, so the variance is reset to 1 before its alpha^2 is added.
    Stochastic depth rate for block i of N is `drop_rate * i / N`. Without `scale_inputs`
    (normalized or unscaled baselines) every beta is 1.
    """
    total, index, expected_var, stages = sum(depths), 0, 1.0, []
    for depth in depths:
        betas, rates = [], []
        for j in range(depth):
            betas.append(1.0 / math.sqrt(expected_var) if scale_inputs else 1.0)
            rates.append(drop_rate * index / total)
            if j == 0:
                expected_var = 1.0  # the transition's shortcut conv sees unit-variance x/beta
            expected_var += alpha**2  # block output variance grows by alpha^2
            index += 1
        stages.append(BlockConstants(tuple(betas), tuple(rates)))
    return stages


def stack_modules(make: Callable[[nnx.Rngs], nnx.Module], count: int, rngs: nnx.Rngs) -> nnx.Module:
    """`count` independently initialised copies of a module, stacked on a leading axis."""
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: make(nnx.Rngs(0))))
    keys = jax.random.split(rngs.params(), count)
    states = jax.vmap(lambda k: nnx.state(make(nnx.Rngs(params=k))))(keys)
    stacked = nnx.merge(graphdef, states)
    for _, variable in nnx.iter_graph(stacked):
        if isinstance(variable, nnx.Variable):
            variable.set_metadata(stack_axes=1)  # optimizers treat axis 0 as "which block", not a unit
    return stacked


class Stage(nnx.Module):
    """A transition block followed by `depth - 1` identical blocks run under a scan. `remat`
    (`remat_mode`) rematerializes every block, the transition included; parameters and outputs
    are the same with and without it."""

    def __init__(
        self,
        make_block: Callable[[bool, nnx.Rngs], nnx.Module],
        depth: int,
        constants: BlockConstants,
        *,
        remat: bool | str = False,
        rngs: nnx.Rngs,
    ):
        self.first = make_block(True, rngs)
        self.rest = stack_modules(lambda r: make_block(False, r), depth - 1, rngs) if depth > 1 else None
        # Python floats, not arrays: array attributes are NNX state and would be traced under jit.
        self.betas, self.drop_rates = tuple(constants.betas), tuple(constants.drop_rates)
        self.depth, self.remat = depth, remat_mode(remat)

    def __call__(
        self, x: jax.Array, *, key: jax.Array | None, train: bool, collect_stats: bool
    ) -> tuple[jax.Array, dict[str, jax.Array] | None]:
        keys = None if key is None else jax.random.split(key, self.depth)
        first_key = None if keys is None else keys[0]
        x, residual = self._first(x, first_key, train)
        stats = [signal_stats(x, residual)] if collect_stats else None
        if self.rest is None:
            return x, _stack(stats)

        unstacked = isinstance(self.rest, nnx.List)  # an `unstack_blocks` copy: one module per block
        if unstacked:
            graphdef, states = nnx.graphdef(self.rest[0]), [nnx.state(block) for block in self.rest]
        else:
            graphdef, state = nnx.split(self.rest)
        drops = any(self.drop_rates)

        def body(h, xs):
            block_state, beta, rate, block_key = xs
            block = nnx.merge(graphdef, block_state)
            rate = rate if drops else 0.0  # static 0: no random draws at all
            h, r = block(h, beta=beta, drop_rate=rate, key=block_key, train=train)
            out_stats = signal_stats(h, r) if collect_stats else None
            # Only non-parameter state (e.g. BatchNorm running averages) changes in a forward pass.
            return h, (nnx.state(block, nnx.Not(nnx.Param)), out_stats)

        rest_keys = None if keys is None else keys[1:]
        looped = not (unstacked or self.depth - 1 <= UNROLL_MAX_BLOCKS)
        body = rematerialized(body, self.remat, in_loop=looped and not SCANS_UNROLLED.get())
        if not looped:
            outs = []
            for i in range(self.depth - 1):
                block_state = states[i] if unstacked else jax.tree.map(lambda a: a[i], state)
                xs = (block_state, self.betas[i + 1], self.drop_rates[i + 1])
                x, out = body(x, (*xs, None if rest_keys is None else rest_keys[i]))
                outs.append(out)
            new_state, rest_stats = jax.tree.map(lambda *a: jnp.stack(a), *outs)
        else:
            xs = (state, jnp.asarray(self.betas[1:]), jnp.asarray(self.drop_rates[1:]), rest_keys)
            x, (new_state, rest_stats) = jax.lax.scan(body, x, xs)
        if unstacked:
            for block, (block_state, _) in zip(self.rest, outs):
                nnx.update(block, block_state)
        else:
            nnx.update(self.rest, new_state)
        if collect_stats:
            stats = {k: jnp.concatenate([stats[0][k][None], v]) for k, v in rest_stats.items()}
            return x, stats
        return x, None

    def _first(self, x: jax.Array, key: jax.Array | None, train: bool) -> tuple[jax.Array, jax.Array]:
        beta, rate = float(self.betas[0]), float(self.drop_rates[0])
        if self.remat == REMAT_NONE:
            return self.first(x, beta=beta, drop_rate=rate, key=key, train=train)
        graphdef, state = nnx.split(self.first)

        def run(state, x, key):
            block = nnx.merge(graphdef, state)
            out, residual = block(x, beta=beta, drop_rate=rate, key=key, train=train)
            return out, residual, nnx.state(block, nnx.Not(nnx.Param))

        out, residual, new_state = rematerialized(run, self.remat, in_loop=False)(state, x, key)
        nnx.update(self.first, new_state)
        return out, residual


def unstack_blocks(model: nnx.Module) -> nnx.Module:
    """A copy of `model` whose short (unrolled) stages hold their blocks as separate modules.

    Same outputs; for inference. Each unrolled block otherwise slices its parameters out of the
    stage's stacked arrays, and XLA:CPU copies a slice that feeds a dot: ~25 ms of the 150 ms
    NF-ResNet-50 forward at 128px, batch 16. Training keeps the stacked layout (checkpoints,
    weight importers and the optimizer's per-block axis use it); scanned stages stay stacked.
    """
    model = nnx.clone(model)
    stages = [node for _, node in nnx.iter_graph(model) if isinstance(node, Stage)]
    for stage in stages:
        if stage.rest is None or isinstance(stage.rest, nnx.List) or stage.depth - 1 > UNROLL_MAX_BLOCKS:
            continue
        graphdef, state = nnx.split(stage.rest)
        stage.rest = nnx.List(
            [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state)) for i in range(stage.depth - 1)]
        )
    return model


def inference_copy(model: nnx.Module) -> nnx.Module:
    """The model in its fastest form for the forward pass: Scaled WS kernels folded (`fold_ws`)
    and short stages unstacked (`unstack_blocks`); same outputs up to float rounding."""
    return unstack_blocks(fold_ws(model))


def _stack(stats: list[dict[str, jax.Array]] | None) -> dict[str, jax.Array] | None:
    return None if stats is None else {k: jnp.stack([s[k] for s in stats]) for k in stats[0]}
