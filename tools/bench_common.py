"""What the benchmark tools share: the benchmarked config (`--config`, or the quickstart recipe
on `--model`, with --model/--task/--image_size/--batch_size/--dtype applied), the task that builds
its model, and the output (`--json` or a table).

    tools/benchmark.py      step timing: the train step and inference, NF vs BN, WS, side by side with timm
    tools/compile_time.py   compile seconds of the train step of several models
    tools/state_bytes.py    per-device parameter / optimizer / EMA bytes, replicated vs FSDP
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import sys
from typing import Any

from absl import flags
from ml_collections import config_flags

try:
    import nf  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections
from flax import nnx

from nf.tasks import TASKS, Task, get_task, task_class

TOOLS = os.path.dirname(os.path.abspath(__file__))
QUICKSTART = os.path.join(os.path.dirname(TOOLS), "configs", "quickstart.py")

CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file (default: quickstart recipe).")
MODEL = flags.DEFINE_string("model", "nf_resnet50", "Registered model to benchmark.")
TASK = flags.DEFINE_enum("task", "classification", sorted(TASKS), "The task whose model, loss and batch to time.")
IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "Input resolution.")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Batch size of the train step and of inference.")
JSON = flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
DTYPE = flags.DEFINE_enum(
    "dtype",
    None,
    ["float32", "bfloat16"],
    "Compute dtype of nf's model (config.model.dtype); the timm peer "
    "then runs under bfloat16 autocast (AMP). Parameters and optimizer state stay float32 on both sides.",
)


def default_config(model: str) -> ml_collections.ConfigDict:
    """The quickstart recipe on `model` with the registry's defaults (no model overrides)."""
    spec = importlib.util.spec_from_file_location("quickstart_config", QUICKSTART)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.model = ml_collections.ConfigDict({"name": model, "dtype": ""})
    config.total_steps = 10_000  # the schedule's horizon; the benchmark runs a handful of steps
    return config


def benchmark_config() -> ml_collections.ConfigDict:
    """--config (or the default) with --model/--image_size/--batch_size/--task applied when given."""
    given = CONFIG.value is not None
    config = copy.deepcopy(CONFIG.value) if given else default_config(MODEL.value)
    with config.unlocked():
        if flags.FLAGS["model"].present:
            config.model.name = MODEL.value
        if flags.FLAGS["task"].present or not given:
            config.task = TASK.value
        if flags.FLAGS["image_size"].present or not given:
            config.data.image_size = IMAGE_SIZE.value
        if flags.FLAGS["batch_size"].present or not given:
            config.batch_size = BATCH_SIZE.value
        if DTYPE.value:
            config.model.dtype = "" if DTYPE.value == "float32" else DTYPE.value
    return config


def variant(config: ml_collections.ConfigDict, **model: Any) -> ml_collections.ConfigDict:
    """A copy of `config` with `config.model` entries replaced or added."""
    out = copy.deepcopy(config)
    with out.unlocked():
        out.model.update(model)
    return out


def make_task(config: ml_collections.ConfigDict) -> Task:
    """The config's task with the class count of its reference dataset."""
    return get_task(config, task_class(config).benchmark_num_classes)


def in_channels(task: Task) -> int:
    return getattr(nnx.eval_shape(task.build_model), "in_channels", 3)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def print_table(result: dict[str, Any]) -> None:
    rows = [(k, v) for k, v in result.items() if not isinstance(v, (dict, list))]
    for k, v in result.items():
        if isinstance(v, dict):
            rows.extend((f"{k}.{kk}", vv) for kk, vv in v.items())
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {fmt(v)}")


def emit(result: dict[str, Any], hide: tuple[str, ...] = ()) -> None:
    """`result` as one JSON line (`--json`) or as a table (without the `hide` keys)."""
    if JSON.value:
        print(json.dumps(result))
    else:
        print_table({k: v for k, v in result.items() if k not in hide})
