"""Paper Table 2 on small data: an NF-ResNet and its BN twin trained at several batch sizes.

Brock, De & Smith (ICLR 2021), Table 2: ResNet-50s trained for 15 epochs on ImageNet at batch
1024, 8 and 4; the NF-ResNet keeps its accuracy, the BN-ResNet collapses (`PAPER_TABLE2`).

Here every (model, batch size, seed) is one `train_and_evaluate` run of a base trainer config
(`configs/quickstart.py` by default) in its own workdir, with the paper's rule of the same number
of epochs at every batch size. The learning rate is scaled linearly with the batch (Goyal et al.
2017: `lr = base lr * batch / base batch`, 0.04 at 64 for the quickstart), the warmup is the base
config's fraction of training and the EMA decay keeps the base config's horizon in images
(`decay ** (batch / base batch)`). The BN twin's `nnx.BatchNorm` has no `axis_name` (no
cross-replica sync): in training it normalizes with the statistics of the batch the jitted step
computes on. On one device (the CPU default) that is the per-device batch of the paper's setting;
under a mesh of several devices XLA reduces the mean over the whole sharded batch, so the batch
sizes here are always the BN batch of one step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from nf.models.registry import MODELS
from nf.train.recipes import epochs_to_steps

# ImageNet top-1 (%), ResNet-50, 15 epochs; lr 0.4 / 0.025 / 0.01 at batch 1024 / 8 / 4.
PAPER_TABLE2 = {
    "batch_sizes": (1024, 8, 4),
    "NF-ResNet-50": (69.9, 69.6, 69.9),
    "BN-ResNet-50": (70.9, 65.7, 55.7),
}
ROW_KEYS = ("model", "norm", "batch_size", "seed", "top1", "ema_top1", "steps", "seconds")
RESULT_FILE = "row.json"  # in each run's workdir, written when the run has finished
EMBEDDED = ("textured_digits", "digits")  # embedded classification image folders (nf.tasks.PREPARERS)


def norm_of(model: str) -> str:
    """'bn' for a registered model with BatchNorm before its convs, else 'nf'."""
    if model not in MODELS:
        raise ValueError(f"Unknown model {model!r}; e.g. nf_resnet26 and its BN twin bn_resnet26")
    return "bn" if MODELS[model].args.get("norm", "none") != "none" else "nf"


@dataclass(frozen=True)
class Data:
    """Where the images come from: an embedded set (`prepare` names a `nf.tasks.PREPARERS`
    entry written to `root`) or user folders (`train`, `eval`: image folders or ArrayRecord dirs)."""

    prepare: str = "textured_digits"
    root: str = "data/textured_digits"
    train: str = ""  # "" = root/train
    eval: str = ""  # "" = root/test

    def apply(self, config: ml_collections.ConfigDict) -> None:
        config.data.prepare = self.prepare
        config.data.root = self.root
        config.data.train = self.train or str(Path(self.root) / "train")
        config.data.eval = self.eval or str(Path(self.root) / "test")

    def num_train(self) -> int:
        """Training images (prepares the embedded set first)."""
        from nf import data as nf_data
        from nf.tasks import PREPARERS

        if self.prepare:
            if self.prepare not in EMBEDDED:
                raise ValueError(f"Unknown embedded classification set {self.prepare!r}; valid: {EMBEDDED}")
            PREPARERS[self.prepare](self.root)
        return len(nf_data.open_source(self.train or str(Path(self.root) / "train")))


def run_config(
    base: ml_collections.ConfigDict, *, model: str, batch_size: int, seed: int, epochs: float, num_train: int
) -> ml_collections.ConfigDict:
    """`base` trained for `epochs` at `batch_size`: linear learning-rate rule, the base warmup
    fraction and EMA horizon (in images), one evaluation and one checkpoint at the end."""
    config = ml_collections.ConfigDict(base.to_dict())
    steps = epochs_to_steps(epochs, batch_size, num_train)
    if steps < 1:
        raise ValueError(f"{epochs} epochs of {num_train} images at batch {batch_size} is less than one step")
    ratio = batch_size / base.batch_size
    config.model.name = model
    config.seed = seed
    config.batch_size = batch_size
    config.total_steps = steps
    config.log_every_steps = max(1, steps // 10)
    config.eval_every_steps = steps
    config.checkpoint_every_steps = steps
    config.spp_after_training = False
    config.optimizer.lr = base.optimizer.lr * (base.batch_size / 256 if base.optimizer.scale_lr_by_batch else 1) * ratio
    config.optimizer.scale_lr_by_batch = False
    config.optimizer.warmup_steps = round(steps * base.optimizer.warmup_steps / base.total_steps)
    config.optimizer.ema_decay = base.optimizer.ema_decay**ratio
    return config


def _final_eval(workdir: Path, step: int) -> dict[str, float]:
    """The evaluation logged at `step` in workdir/metrics.jsonl (the trainer's record)."""
    path = workdir / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    evals = [r for r in rows if r.get("split") == "eval" and r.get("step") == step]
    if not evals:
        raise RuntimeError(f"{path} has no evaluation at step {step}; remove {workdir} and rerun")
    return evals[-1]


def train_one(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, Any]:
    """One run (reused when workdir/row.json holds the same config; resumed when interrupted)."""
    from nf.train.trainer import train_and_evaluate

    saved = workdir / RESULT_FILE
    settings = json.loads(json.dumps(config.to_dict()))
    if saved.exists():
        previous = json.loads(saved.read_text())
        if previous["config"] == settings:
            return previous["row"]
        raise ValueError(f"{workdir} holds a run with other settings; remove it or pass another --workdir")
    start = time.perf_counter()
    train_and_evaluate(config, str(workdir))
    seconds = time.perf_counter() - start
    result = _final_eval(workdir, config.total_steps)
    row = {
        "model": config.model.name,
        "norm": norm_of(config.model.name),
        "batch_size": int(config.batch_size),
        "seed": int(config.seed),
        "top1": float(result["top1"]),
        "ema_top1": float(result["ema_top1"]),
        "steps": int(config.total_steps),
        "seconds": round(seconds, 1),
    }
    saved.write_text(json.dumps({"row": row, "config": settings}, indent=1))
    return row


def run_grid(
    base: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    models: Sequence[str],
    batch_sizes: Sequence[int],
    seeds: Sequence[int],
    epochs: float,
    data: Data,
) -> list[dict[str, Any]]:
    """Every (seed, batch size, model) run; writes workdir/small_batch.json and .png; returns the rows."""
    for model in models:
        norm_of(model)
    workdir = Path(workdir)
    num_train = data.num_train()
    rows = []
    for seed in seeds:  # seed-major: an interrupted grid has every cell at least once sooner
        for batch_size in batch_sizes:
            for model in models:
                config = run_config(
                    base, model=model, batch_size=batch_size, seed=seed, epochs=epochs, num_train=num_train
                )
                data.apply(config)
                rows.append(train_one(config, workdir / "runs" / f"{model}_b{batch_size}_s{seed}"))
                write_json(rows, workdir / "small_batch.json")
    plot(rows, workdir / "small_batch.png")
    return rows


def write_json(rows: Sequence[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{k: r[k] for k in ROW_KEYS} for r in rows], indent=1))


def summarize(rows: Sequence[dict], metric: str = "top1") -> dict[tuple[str, int], tuple[float, float, float]]:
    """(model, batch) -> (median, min, max) of `metric` over seeds."""
    cells: dict[tuple[str, int], list[float]] = {}
    for r in rows:
        cells.setdefault((r["model"], r["batch_size"]), []).append(r[metric])
    return {k: (float(np.median(v)), min(v), max(v)) for k, v in cells.items()}


def _ordered(rows: Sequence[dict]) -> tuple[list[str], list[int]]:
    models = list(dict.fromkeys(r["model"] for r in rows))
    batches = sorted({r["batch_size"] for r in rows}, reverse=True)
    return models, batches


def format_table(rows: Sequence[dict]) -> str:
    """Markdown table: per model and metric, median top-1 (min-max over seeds) at each batch."""
    models, batches = _ordered(rows)
    seeds = len({r["seed"] for r in rows})
    lines = [
        "| model | metric | " + " | ".join(f"batch {b}" for b in batches) + " |",
        "|---|---|" + "---|" * len(batches),
    ]
    for metric, label in (("top1", "top-1"), ("ema_top1", "EMA top-1")):
        stats = summarize(rows, metric)
        for m in models:
            cells = [
                f"{stats[m, b][0]:.1%} ({stats[m, b][1]:.1%}–{stats[m, b][2]:.1%})" if (m, b) in stats else "–"
                for b in batches
            ]
            lines.append(f"| {m} | {label} | " + " | ".join(cells) + " |")
    paper = " | ".join(f"batch {b}" for b in PAPER_TABLE2["batch_sizes"])
    lines += ["", f"(median and min–max over {seeds} seed(s)); paper Table 2, ImageNet top-1 at {paper}:"]
    for name in ("NF-ResNet-50", "BN-ResNet-50"):
        lines.append(f"  {name}: " + " / ".join(f"{v:.1f} %" for v in PAPER_TABLE2[name]))
    return "\n".join(lines)


def plot(rows: Sequence[dict], path: Path, metric: str = "top1") -> Path:
    """Left: measured `metric` against batch size, one line per model, median with min-max
    error bars over seeds. Right: the paper's Table 2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, batches = _ordered(rows)
    stats = summarize(rows, metric)
    fig, (ax, ref) = plt.subplots(1, 2, figsize=(9, 3.6), sharey=False)
    for m in models:
        bs = [b for b in batches if (m, b) in stats]
        med = np.array([stats[m, b][0] for b in bs]) * 100
        lo = med - np.array([stats[m, b][1] for b in bs]) * 100
        hi = np.array([stats[m, b][2] for b in bs]) * 100 - med
        style = "-o" if norm_of(m) == "nf" else "--s"
        ax.errorbar(bs, med, yerr=[lo, hi], fmt=style, capsize=4, label=m)
    seeds = len({r["seed"] for r in rows})
    ax.set(xscale="log", xlabel="batch size", ylabel=f"test {'EMA ' if 'ema' in metric else ''}top-1 (%)")
    ax.set_title(f"measured (median, min–max over {seeds} seed(s))", fontsize=9)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.minorticks_off()
    ax.legend(fontsize=8)
    for name, style in (("NF-ResNet-50", "-o"), ("BN-ResNet-50", "--s")):
        ref.plot(PAPER_TABLE2["batch_sizes"], PAPER_TABLE2[name], style, label=name)
    ref.set(xscale="log", xlabel="batch size", ylabel="ImageNet top-1 (%)")
    ref.set_title("paper Table 2 (ImageNet, 15 epochs)", fontsize=9)
    ref.set_xticks(PAPER_TABLE2["batch_sizes"], [str(b) for b in PAPER_TABLE2["batch_sizes"]])
    ref.minorticks_off()
    ref.legend(fontsize=8)
    for a in (ax, ref):
        a.invert_xaxis()  # large batch on the left, as in the table
        a.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def describe(base: ml_collections.ConfigDict, batch_sizes: Sequence[int], epochs: float, num_train: int) -> str:
    """One line per batch size: steps, learning rate, warmup, EMA decay (what the runs use)."""
    lines = []
    for b in batch_sizes:
        c = run_config(base, model=base.model.name, batch_size=b, seed=0, epochs=epochs, num_train=num_train)
        lines.append(
            f"  batch {b}: {c.total_steps} steps, lr {c.optimizer.lr:.4g}, warmup {c.optimizer.warmup_steps}, "
            f"EMA decay {c.optimizer.ema_decay:.5f}"
        )
    return "\n".join(lines)


def check_batch_sizes(batch_sizes: Sequence[int]) -> None:
    if not batch_sizes or any(b < 1 for b in batch_sizes) or len(set(batch_sizes)) != len(batch_sizes):
        raise ValueError(f"--batch_sizes must be distinct positive integers, got {list(batch_sizes)}")
