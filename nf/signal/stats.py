"""The three Signal Propagation Plot statistics (paper §3, Appendix F)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

STAT_NAMES = ("avg_channel_squared_mean", "avg_channel_variance", "residual_avg_channel_variance")


def signal_stats(out: jax.Array, residual: jax.Array) -> dict[str, jax.Array]:
    """Channel statistics of a residual block's NHWC output and its residual branch f(x).

    Reduce over N, H, W, then average over channels: `mean_c(mean_nhw(y)^2)`,
    `mean_c(var_nhw(y))` and `mean_c(var_nhw(f(x)))`.
    """
    out, residual = out.astype(jnp.float32), residual.astype(jnp.float32)
    return {
        "avg_channel_squared_mean": jnp.mean(jnp.mean(out, axis=(0, 1, 2)) ** 2),
        "avg_channel_variance": jnp.mean(jnp.var(out, axis=(0, 1, 2))),
        "residual_avg_channel_variance": jnp.mean(jnp.var(residual, axis=(0, 1, 2))),
    }
