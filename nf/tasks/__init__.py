"""Tasks: what a model predicts, its loss and metrics. Tasks know nothing of sharding or checkpoints."""

from __future__ import annotations

import ml_collections

from nf.tasks.base import Task
from nf.tasks.classification import Classification
from nf.tasks.depth import Depth
from nf.tasks.segmentation import Segmentation

TASKS: dict[str, type[Task]] = {t.name: t for t in (Classification, Segmentation, Depth)}


def get_task(config: ml_collections.ConfigDict, num_classes: int | None) -> Task:
    """The task `config.task` names ("classification" when absent)."""
    name = config.get("task", "classification")
    if name not in TASKS:
        raise ValueError(f"config.task={name!r} is unknown; valid: {sorted(TASKS)}")
    return TASKS[name](config, num_classes)


__all__ = ["TASKS", "Classification", "Depth", "Segmentation", "Task", "get_task"]
