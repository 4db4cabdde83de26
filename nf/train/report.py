"""Host-side reporting of a run: the model card written at its start, and after training the
trained model's SPP (`spp_after_training`) and the summary lines (process 0)."""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
from etils import epath

from nf.data.card import CARD_FILE
from nf.models.pure import ModelFns
from nf.tasks import Task, TrainData
from nf.train.distributed import host_copy


def report(
    config: ml_collections.ConfigDict,
    task: Task,
    fns: ModelFns,
    state: dict[str, Any],
    data: TrainData,
    train_iter: Any,
    summary: dict[str, float],
    ckpt_dir: str,
    workdir: str,
    stopped: bool,
) -> None:
    """After training: the trained model's SPP (`spp_after_training`, not after a stop) and the
    summary lines (process 0)."""
    spp_state = None
    if config.get("spp_after_training") and not stopped:
        spp_state = host_copy(state)  # a collective (FSDP shards live on every process): all take part
    if jax.process_index() != 0:
        return
    spp_path = None
    if spp_state is not None:
        spp_path = draw_trained_spp(fns, spp_state, data.eval_batches, config.model.name, workdir)
    input_line = train_iter.input_summary() if hasattr(train_iter, "input_summary") else None
    print_summary(workdir, ckpt_dir, summary, spp_path, task.summary_line(summary), input_line)


def write_model_card(config: ml_collections.ConfigDict, task: Task, data: TrainData, workdir: str) -> None:
    """`workdir/nf_model.json` (nf.data.card), unless there or the task has none: the model,
    classes and the eval preprocessing, so nf-eval / nf-predict / nf-export / init_from need no config."""
    if (epath.Path(workdir) / CARD_FILE).exists():
        return
    source = {"kind": "nf-train"}
    if config.get("init_from"):
        source.update(init_from=config.init_from, init_from_params=config.get("init_from_params", "ema"))
    card = task.model_card(data.class_names, source)
    if card is not None:
        card.save(workdir)


def draw_trained_spp(fns: ModelFns, state, eval_batches, name: str, workdir: str) -> str:
    """SPP of the trained (EMA) model on one batch of evaluation images: workdir/spp/spp.{png,json}."""
    from nf.signal import compute_spp, plot_spp

    images = next(iter(eval_batches()))["image"]
    model = fns.merged(jax.device_get(state["ema"]), jax.device_get(state["model_state"]))
    stats = {f"{name} (trained, EMA)": compute_spp(model, images, train=False)}
    out = epath.Path(workdir) / "spp"  # local or gs://
    out.mkdir(parents=True, exist_ok=True)
    (out / "spp.json").write_text(json.dumps(stats, indent=1))
    return plot_spp(stats, os.fspath(out / "spp.png"))


def print_summary(
    workdir: str,
    ckpt_dir: str,
    summary: dict,
    spp_path: str | None,
    eval_line: str | None = None,
    input_line: str | None = None,
) -> None:
    lines = [f"Finished at step {summary['step']}."]
    if eval_line:
        lines.append(eval_line)
    if "median_step_seconds" in summary:
        stall = summary.get("max_checkpoint_stall_seconds")
        lines.append(
            f"  median step {summary['median_step_seconds'] * 1e3:.0f} ms, waiting for data "
            f"{summary['data_wait_fraction']:.1%} of the loop"
            + (f", checkpoint saves stalled it at most {stall * 1e3:.0f} ms" if stall is not None else "")
        )
    if input_line:
        lines.append(input_line)
    lines += [
        f"  metrics:     {os.path.join(workdir, 'metrics.jsonl')}",
        f"  checkpoints: {ckpt_dir}",
        f"  TensorBoard: tensorboard --logdir {workdir}",
    ]
    if spp_path:
        lines.append(f"  SPP of the trained model: {spp_path}")
    print("\n".join(lines), flush=True)
