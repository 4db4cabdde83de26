"""Shared fixtures: the digits data set prepared once per session, and a tiny trainer config
derived from configs/quickstart.py (as an ml_collections config file usable by `python -m nf.train`
and as a ConfigDict for in-process runs)."""

from __future__ import annotations

import importlib.util
import os
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "quickstart.py"


def console_script(name: str) -> list[str]:
    """The command that runs the console script `name` (pyproject's [project.scripts]) as its
    installed launcher does: its entry point with `sys.argv[0]` = `name`, in this Python."""
    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"][name]
    module, _, attr = target.partition(":")
    code = f"import sys; from {module} import {attr}; sys.argv[0] = {name!r}; sys.exit({attr}())"
    return [sys.executable, "-c", code]


# The smallest network that still has a transition block and a scanned (stacked) block: one stage
# of depth 2. 16 px images (total stride 8), batch 16, 12 steps; log every step.
TINY_OVERRIDES = {
    "total_steps": 12,
    "batch_size": 16,
    "log_every_steps": 1,
    "eval_every_steps": 6,
    "checkpoint_every_steps": 4,
    "spp_after_training": False,
    "model.depths": (2,),
    "model.widths": (16,),
    "model.strides": (1,),
    "model.stem_width": 8,
    "data.image_size": 16,
    "data.prepare": "",
    "optimizer.warmup_steps": 3,
}

_CONFIG_FILE = '''"""Tiny trainer config for tests: configs/quickstart.py with overrides (written by conftest.py)."""
import importlib.util

QUICKSTART = {quickstart!r}
OVERRIDES = {overrides!r}


def get_config():
    spec = importlib.util.spec_from_file_location("nf_quickstart_config", QUICKSTART)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for key, value in OVERRIDES.items():
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config
'''


def apply_overrides(config, overrides: dict):
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory) -> Path:
    """scikit-learn's digits as image folders (train/, test/), written once per session."""
    from nf.data import prepare_digits

    return Path(prepare_digits(tmp_path_factory.mktemp("data") / "digits"))


@pytest.fixture(scope="session")
def tiny_config_file(digits_root, tmp_path_factory) -> Path:
    """An ml_collections config file: `python -m nf.train --config=<this> --config.total_steps=3`."""
    overrides = dict(TINY_OVERRIDES)
    overrides.update(
        {
            "data.root": str(digits_root),
            "data.train": str(digits_root / "train"),
            "data.eval": str(digits_root / "test"),
        }
    )
    path = tmp_path_factory.mktemp("configs") / "tiny.py"
    path.write_text(_CONFIG_FILE.format(quickstart=str(QUICKSTART), overrides=overrides))
    return path


@pytest.fixture(scope="session")
def tiny_config(tiny_config_file):
    """`tiny_config(**{"optimizer.lr": 1.0})` -> a fresh ConfigDict of the tiny config with overrides."""

    def make(overrides: dict | None = None):
        spec = importlib.util.spec_from_file_location("nf_tiny_test_config", tiny_config_file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return apply_overrides(module.get_config(), overrides or {})

    return make


@pytest.fixture(scope="session")
def jax_cache_dir(tmp_path_factory) -> Path:
    """Persistent XLA compilation cache shared by the trainer subprocesses of one session (set
    NF_TEST_JAX_CACHE to keep it across sessions)."""
    path = os.environ.get("NF_TEST_JAX_CACHE")
    return Path(path) if path else tmp_path_factory.mktemp("jax_cache")


# A tiny classifier backbone: one stride-1 stage and one stride-2 stage of depth 2 (scanned).
CLASSIFIER_BACKBONE = {"model.depths": (1, 2), "model.widths": (8, 16), "model.strides": (1, 2), "model.stem_width": 8}


def quickstart_config(digits_root: Path, overrides: dict):
    """configs/quickstart.py on `digits_root` (no preparation) with `overrides`."""
    spec = importlib.util.spec_from_file_location("nf_quickstart_config", QUICKSTART)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = {
        "data.prepare": "",
        "data.root": str(digits_root),
        "data.train": str(digits_root / "train"),
        "data.eval": str(digits_root / "test"),
    }
    return apply_overrides(module.get_config(), {**data, **overrides})


CLASSIFIER_RUN = {
    **CLASSIFIER_BACKBONE,
    "total_steps": 2,
    "batch_size": 8,
    "log_every_steps": 1,
    "eval_every_steps": 100,
    "checkpoint_every_steps": 100,
    "spp_after_training": False,
    "data.image_size": 16,
}


@pytest.fixture(scope="session")
def classifier_run(digits_root, tmp_path_factory) -> Path:
    """A real classification workdir (10 digit classes, 16 px): the trainer, tiny backbone, 2 steps.
    Shared by the transfer, inference and fine-tuning tests; read it, never write into it."""
    from absl import flags

    from nf.train.trainer import train_and_evaluate

    if not flags.FLAGS.is_parsed():  # grain reads absl flags
        flags.FLAGS.mark_as_parsed()
    workdir = tmp_path_factory.mktemp("classifier") / "run"
    train_and_evaluate(quickstart_config(digits_root, CLASSIFIER_RUN), str(workdir))
    return workdir


def _loader(kw: dict):
    """Pops the `LoaderSettings` fields out of `kw` (the tests' keyword shorthand for pipelines)."""
    from dataclasses import fields

    from nf import data

    return data.LoaderSettings(**{f.name: kw.pop(f.name) for f in fields(data.LoaderSettings) if f.name in kw})


def classification_pipeline(source, *, train: bool, image_size: int, **kw):
    """`nf.data.make_pipeline` for classification with keyword settings: `LoaderSettings` fields go
    to the loader; the rest to `ClassificationTrain` (train) or to the trainer's eval
    (`Preprocessing.nf(image_size, eval_crop, crop_padding)` in `ClassificationEval`)."""
    from nf import data

    loader = _loader(kw)
    if train:
        return data.make_pipeline(source, data.ClassificationTrain(image_size, **kw), loader)
    crop = {name: kw.pop(key) for key, name in (("eval_crop", "crop"), ("crop_padding", "crop_padding")) if key in kw}
    return data.make_pipeline(source, data.ClassificationEval(data.Preprocessing.nf(image_size, **crop), **kw), loader)


def segmentation_pipeline(source, *, train: bool, crop_size, num_classes: int | None = None, **kw):
    """`nf.data.make_pipeline` with a segmentation transform (keyword shorthand as above)."""
    from nf import data

    loader = _loader(kw)
    transform = data.SegmentationTrainTransform if train else data.SegmentationEvalTransform
    return data.make_pipeline(source, transform(crop_size, num_classes or source.num_classes, **kw), loader)


def depth_pipeline(source, *, train: bool, **kw):
    """`nf.data.make_pipeline` with a depth transform (keyword shorthand as above)."""
    from nf import data

    loader = _loader(kw)
    transform = data.DepthTrainTransform if train else data.DepthEvalTransform
    return data.make_pipeline(source, transform(**kw), loader)
