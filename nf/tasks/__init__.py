"""Tasks: what a model predicts, its data, loss and metrics, each one `Task` subclass. The trainer,
the benchmark and the inference tools ask the task `config.task` names (`task_class`); a new task
is registered with `register_task` (README, "Adding a task"). Tasks know nothing of device sharding
or checkpoints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from nf.tasks.base import Task
from nf.tasks.classification import Classification
from nf.tasks.data import PREPARERS, TrainData
from nf.tasks.depth import Depth
from nf.tasks.segmentation import Segmentation

DEFAULT_TASK = Classification.name  # a config without `task` trains a classifier

TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Make `cls` the task of configs with `task = cls.name` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"register_task({cls!r}): a task is a subclass of nf.tasks.Task")
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no `name`: set the `config.task` value that selects it")
    if cls.name in TASKS:
        other = TASKS[cls.name]
        raise ValueError(
            f"task {cls.name!r} is already registered ({other.__module__}.{other.__qualname__}); "
            f"give {cls.__module__}.{cls.__qualname__} another `name`"
        )
    TASKS[cls.name] = cls
    return cls


for _builtin in (Classification, Segmentation, Depth):
    register_task(_builtin)


def task_class(config: Mapping[str, Any]) -> type[Task]:
    """The task class `config.task` names (`DEFAULT_TASK` when absent)."""
    name = config.get("task", DEFAULT_TASK)
    if name not in TASKS:
        raise ValueError(f"config.task={name!r} is unknown; valid: {sorted(TASKS)} (nf.tasks.register_task adds one)")
    return TASKS[name]


def get_task(config: Mapping[str, Any], num_classes: int | None) -> Task:
    """The task `config.task` names, for data with `num_classes` classes."""
    return task_class(config)(config, num_classes)


__all__ = [
    "DEFAULT_TASK",
    "PREPARERS",
    "TASKS",
    "Classification",
    "Depth",
    "Segmentation",
    "Task",
    "TrainData",
    "get_task",
    "register_task",
    "task_class",
]
