"""Signal Propagation Plots (paper §3, Fig. 1-2, Appendix F; paper §3).

The statistics come out of the model's own forward pass (`collect_stats=True`): one value per
residual block for each of `STAT_NAMES`, in block order, with `model.stage_ends` marking the
last block of every stage.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from nf.layers import SkipGain
from nf.signal.stats import STAT_NAMES

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

PANEL_TITLES = {
    "avg_channel_squared_mean": "Average channel squared mean",
    "avg_channel_variance": "Average channel variance",
    "residual_avg_channel_variance": "Residual average channel variance",
}


@functools.partial(jax.jit, static_argnames=("graphdef", "train"))
def _forward_stats(graphdef, state, images, *, train):
    model = nnx.merge(graphdef, state)
    _, stats = model(images, train=train, collect_stats=True)
    return stats


def compute_spp(model: nnx.Module, images: jax.Array | np.ndarray, *, train: bool) -> dict[str, list]:
    """Per-block SPP statistics of `model` on one NHWC batch, as Python lists.

    The forward pass runs under `jax.jit` on a split copy of the model's state, so the model is not
    modified (a BatchNorm model called with `train=True` normalizes with batch statistics, as in the
    paper's SPPs, and its running averages stay untouched). Returns `{stat: [one float per block]}`
    for every name in `STAT_NAMES`, plus `stage_ends` (index of each stage's last block).
    """
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4:
        raise ValueError(f"compute_spp expects an NHWC batch of images, got shape {images.shape}")
    graphdef, state = nnx.split(model)
    stats = jax.device_get(_forward_stats(graphdef, state, images, train=bool(train)))
    result: dict[str, list] = {name: [float(v) for v in np.asarray(stats[name]).reshape(-1)] for name in STAT_NAMES}
    result["stage_ends"] = [int(e) for e in getattr(model, "stage_ends", ())]
    return result


def set_skip_gains(model: nnx.Module, value: float) -> int:
    """Set every `SkipGain` variable of `model` (found by type) to `value`; returns how many gains
    were set (a scanned stage's stacked gain counts once per block)."""
    gains = nnx.state(model, SkipGain)
    leaves = jax.tree.leaves(gains)
    if leaves:
        nnx.update(model, jax.tree.map(lambda g: jnp.full_like(g, value), gains))
    return sum(int(np.size(leaf)) for leaf in leaves)


def _block_location(index: int, stage_ends: Sequence[int] | None) -> str:
    if not stage_ends:
        return f"block {index}"
    stage = next((s for s, end in enumerate(stage_ends) if index <= end), len(stage_ends) - 1)
    start = stage_ends[stage - 1] + 1 if stage > 0 else 0
    return f"block {index} (stage {stage}, block {index - start} of the stage)"


def check_finite(stats: Mapping[str, Sequence[float]], model_name: str) -> None:
    """Raise a ValueError naming the model, statistic and first non-finite block indices."""
    stage_ends = stats.get("stage_ends")
    problems = []
    for name in STAT_NAMES:
        if name not in stats:
            raise ValueError(f"{model_name}: SPP statistics lack {name!r} (have {sorted(stats)})")
        values = np.asarray(stats[name], np.float64)
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            shown = ", ".join(str(int(i)) for i in bad[:10]) + (", ..." if bad.size > 10 else "")
            problems.append(
                f"  {name}: {bad.size} of {values.size} blocks non-finite, first at "
                f"{_block_location(int(bad[0]), stage_ends)} (value {values[bad[0]]}); blocks [{shown}]; "
                f"last finite value {_last_finite(values, int(bad[0]))}"
            )
    if problems:
        raise ValueError(
            f"Model {model_name!r} has non-finite signal propagation statistics (the signal overflowed or "
            "became NaN; such curves are not plotted):\n" + "\n".join(problems)
        )


def _last_finite(values: np.ndarray, first_bad: int) -> str:
    return f"{values[first_bad - 1]:.4g} at block {first_bad - 1}" if first_bad > 0 else "none"


def plot_spp(results: Mapping[str, Mapping[str, Sequence[float]]], path: str, log_scale: bool = False) -> str:
    """Draw the paper's three SPP panels side by side, one line per model, and save to `path`
    (PNG; local or gs://).

    x: block depth (1-based); dotted vertical lines mark stage ends. Every model's statistics are
    checked with `check_finite` first. Returns `path`.
    """
    if not results:
        raise ValueError("plot_spp needs statistics of at least one model")
    for model_name, stats in results.items():
        check_finite(stats, model_name)

    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: no display needed
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6 * len(STAT_NAMES), 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(STAT_NAMES))
    stage_ends = sorted({int(e) for stats in results.values() for e in stats.get("stage_ends", [])})
    for ax, name in zip(axes, STAT_NAMES, strict=True):
        for model_name, stats in results.items():
            values = np.asarray(stats[name], np.float64)
            ax.plot(np.arange(1, values.size + 1), values, label=model_name, linewidth=1.2)
        for end in stage_ends:
            ax.axvline(end + 1, color="gray", linestyle=":", linewidth=1)
        if log_scale:
            ax.set_yscale("log")
        ax.set_title(PANEL_TITLES[name])
        ax.set_xlabel("Block depth")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    with epath.Path(path).open("wb") as f:  # a local path or an object store (gs://...)
        fig.savefig(f, format="png", dpi=120)
    return path


def _resize_center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """HWC float image -> (size, size, C): bicubic resize of the shorter side to `size`, centre crop."""
    h, w = image.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    image = np.asarray(jax.image.resize(image, (nh, nw, image.shape[2]), "bicubic", antialias=True))
    top, left = (nh - size) // 2, (nw - size) // 2
    return image[top : top + size, left : left + size]


def load_images(path: str, image_size: int, batch_size: int) -> np.ndarray:
    """A normalised (batch_size, image_size, image_size, 3) float32 batch for an SPP.

    `path` is a folder of JPEG/PNG files (the first `batch_size` in name order) or a `.npy` array
    (NHWC or HWC, 1 or 3 channels) of pixel values in [0, 255]; float arrays whose maximum is <= 1
    are taken as [0, 1]. Each image is resized (shorter side) and centre-cropped to `image_size`,
    then normalised by the ImageNet mean and std (x 255).
    """
    if image_size <= 0 or batch_size <= 0:
        raise ValueError(f"image_size and batch_size must be positive, got {image_size} and {batch_size}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path!r} does not exist (expected a folder of JPEG/PNG files or a .npy file)")
    if os.path.isdir(path):
        from PIL import Image

        files = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_SUFFIXES))
        if len(files) < batch_size:
            raise ValueError(
                f"{path!r} holds {len(files)} JPEG/PNG file(s); a batch of {batch_size} needs at least "
                "that many (use a smaller batch or add images)"
            )
        images = []
        for f in files[:batch_size]:
            with Image.open(os.path.join(path, f)) as im:
                images.append(np.asarray(im.convert("RGB"), np.float32))
    elif path.endswith(".npy"):
        array = np.load(path)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] not in (1, 3):
            raise ValueError(f"{path!r}: expected an NHWC array with 1 or 3 channels, got shape {array.shape}")
        if array.shape[0] < batch_size:
            raise ValueError(
                f"{path!r} holds {array.shape[0]} image(s); a batch of {batch_size} needs at least that many"
            )
        is_float = np.issubdtype(array.dtype, np.floating)
        array = array[:batch_size].astype(np.float32)
        if is_float and array.max() <= 1.0:
            array = array * 255.0  # [0, 1] floats
        if array.shape[-1] == 1:
            array = np.repeat(array, 3, axis=-1)
        images = list(array)
    else:
        raise ValueError(f"{path!r} is neither a folder nor a .npy file")
    batch = np.stack([_resize_center_crop(im, image_size) for im in images])
    return (batch - IMAGENET_MEAN) / IMAGENET_STD
