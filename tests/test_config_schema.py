"""Config validation: every shipped config passes; unknown keys in a config FILE and out-of-range
intervals fail before the workdir is touched, naming the key."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from nf.train.config_schema import ConfigKeyError, validate

CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.py") if p.name != "__init__.py")


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"nf_cfg_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        return module.get_config()
    except TypeError:  # configs with a parameter string (nf_resnet50_small_batch)
        return module.get_config(None)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_shipped_config_is_valid(path):
    validate(_load(path))


def _quickstart():
    return _load(CONFIGS[0].parent / "quickstart.py")


@pytest.mark.parametrize(
    ("key", "nearest"),
    [("optimizer.lrr", "optimizer.lr"), ("log_every_step", "log_every_steps"), ("data.image_sise", "data.image_size")],
)
def test_misspelled_key_in_a_config_file_names_the_nearest(key, nearest):
    config = _quickstart()
    section, _, leaf = key.rpartition(".")
    (config[section] if section else config)[leaf] = 1
    with pytest.raises(ConfigKeyError, match=f'unknown config key "{key}"; did you mean "{nearest}"'):
        validate(config)


@pytest.mark.parametrize(
    ("key", "value", "low"),
    [
        ("log_every_steps", 0, "1"),
        ("eval_every_steps", -5, "1"),
        ("checkpoint_every_steps", 0, "1"),
        ("batch_size", 0, "1"),
        ("total_steps", 0, "1"),
        ("keep_checkpoints", 0, "1"),
        ("max_bad_steps", 0, "1"),
        ("data.image_size", 0, "1"),
        ("data.workers", -1, "0"),
        ("optimizer.warmup_steps", -1, "0"),
        ("optimizer.accum_steps", 0, "1"),
    ],
)
def test_interval_or_size_out_of_range_names_the_key(key, value, low):
    config = _quickstart()
    section, _, leaf = key.rpartition(".")
    (config[section] if section else config)[leaf] = value
    with pytest.raises(ConfigKeyError, match=f"config.{key}={value} is out of range: it must be >= {low}"):
        validate(config)


def test_trainer_refuses_a_config_file_key_before_writing(tiny_config, tmp_path):
    from nf.train.trainer import train_and_evaluate

    config = tiny_config()
    config.optimizer.lrr = 0.1  # in the file: the command line could not add it
    with pytest.raises(ConfigKeyError, match=r'did you mean "optimizer\.lr"'):
        train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
