"""Serialized StableHLO of a model's inference forward pass (`jax.export`), batch size symbolic.

The Scaled WS kernels are folded first (nf.models.inference_copy: W_hat computed once), and the weights
are constants of the program, so the file alone computes `logits = f(images)` for NHWC float32
images normalized as the card says (its JSON companion repeats the preprocessing):

    exported = jax.export.deserialize(open(FILE, "rb").read())
    logits = exported.call(images)            # any batch size
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from nf.data.card import ModelCard
from nf.layers import set_conv_impl
from nf.models import inference_copy


def export_model(
    model: nnx.Module, image_size: int, platforms: Sequence[str] | None = None, batch_dim: str = "batch"
) -> jax.export.Exported:
    """`jax.export` of `inference_copy(model)(x, train=False)` (WS folded, short stages unstacked)
    for x of shape (batch, px, px, 3) float32.

    `platforms` (e.g. ("cpu", "cuda", "tpu")) default to the current backend. Targets other than
    the CPU alone are traced with `lax.conv_general_dilated` for every conv (`set_conv_impl`:
    on the CPU, nf.layers.conv_ops routes grouped convs to CPU-specific formulations, slow on
    accelerators); the numbers agree up to float rounding."""
    platforms = tuple(platforms) if platforms else None
    folded = inference_copy(model)
    if platforms is not None and set(platforms) != {"cpu"}:  # portable
        folded = set_conv_impl(folded, "lax")
    graphdef, state = nnx.split(folded)
    state = jax.tree.map(jnp.asarray, state)

    def forward(images):
        return nnx.merge(graphdef, state)(images, train=False).astype(jnp.float32)

    shape = jax.export.symbolic_shape(f"{batch_dim}, {image_size}, {image_size}, 3")
    spec = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.export.export(jax.jit(forward), platforms=platforms)(spec)


def write_export(exported: jax.export.Exported, out: str, card: ModelCard, image_size: int) -> tuple[str, str]:
    """Writes the serialized program to `out` and its description to `out + ".json"`."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "wb") as f:
        f.write(exported.serialize())
    info: dict[str, Any] = {
        "format": "jax.export serialized StableHLO (jax.export.deserialize(bytes).call(images))",
        "input": {"shape": ["batch", image_size, image_size, 3], "dtype": "float32", "layout": "NHWC"},
        "output": {"shape": ["batch", card.num_classes], "dtype": "float32", "what": "logits"},
        "platforms": list(exported.platforms),
        "jax_version": jax.__version__,
        "calling_convention_version": exported.calling_convention_version,
        "model": card.model,
        "preprocessing": card.preprocessing.at_size(image_size).to_dict(),
        "class_names": card.class_names,
        "source": card.source,
    }
    meta = out + ".json"
    with open(meta, "w") as f:
        json.dump(info, f, indent=1)
    return out, meta
