"""The ImageNet recipe configs load like `nf-train --config=...` does and hold the paper App. A values."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from nf.data.randaugment import RandAugment
from nf.models import DEFAULT_IMAGE_SIZE, MODELS, TEST_IMAGE_SIZE, model_options
from nf.train import recipes
from nf.train.optim import learning_rate_schedule

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
REGNETS = [f"nf_regnet_imagenet:b{i}" for i in range(6)]
NFNETS = [f"nfnet_imagenet:f{i}" for i in range(8)]
RESNETS = ["resnet_imagenet:nf_resnet50", "resnet_imagenet:bn_resnet50"]
NEW_KEYS: set[str] = set()  # every recipe has exactly the quickstart's keys


def load(name: str):
    """Parse --config=configs/<file>.py[:<arg>] exactly as the `nf-train` entry point does."""
    file, _, arg = name.partition(":")
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config file", flag_values=fv, lock_config=True)
    fv(["nf-train", f"--config={CONFIGS / file}.py" + (f":{arg}" if arg else "")])
    return fv.config


def _keys(cfg, prefix=""):
    out = set()
    for k, v in cfg.items():
        if hasattr(v, "items"):
            out |= _keys(v, f"{prefix}{k}.")
        else:
            out.add(f"{prefix}{k}")
    return out


@pytest.fixture(scope="module")
def quickstart_keys():
    return _keys(load("quickstart"))


@pytest.mark.parametrize("name", REGNETS + NFNETS)
def test_config_loads_with_the_trainer_keys(name, quickstart_keys):
    cfg = load(name)
    file, variant = name.split(":")
    model = f"{file.removesuffix('_imagenet')}_{variant}"
    keys = _keys(cfg)
    assert quickstart_keys - keys <= {"model.depths", "model.widths", "model.stem_width", "model.skipinit"}
    assert keys - quickstart_keys == NEW_KEYS
    assert cfg.model.name == model and model in MODELS
    overrides = set(cfg.model) - {"name"}
    assert overrides <= set(model_options(model))
    assert cfg.model.dropout == MODELS[model].args["dropout"]
    assert (cfg.data.image_size, cfg.data.eval_image_size) == (DEFAULT_IMAGE_SIZE[model], TEST_IMAGE_SIZE[model])
    assert (cfg.data.train, cfg.data.eval) == ("data/imagenet/train", "data/imagenet/val")
    assert (cfg.data.mixup_alpha, cfg.data.cutmix, cfg.optimizer.label_smoothing) == (0.2, True, 0.1)
    assert cfg.optimizer.ema_decay == 0.99999 and cfg.optimizer.nesterov and cfg.optimizer.momentum == 0.9
    steps_per_epoch = 1_281_167 // cfg.batch_size
    assert cfg.total_steps == 1_281_167 * 360 // cfg.batch_size
    assert cfg.optimizer.warmup_steps == 5 * steps_per_epoch
    assert cfg.batch_size % cfg.optimizer.accum_steps == 0
    # The schedule the trainer builds peaks at the recipe's lr after warmup and ends at end_lr.
    base = cfg.optimizer.lr * (cfg.batch_size / 256 if cfg.optimizer.scale_lr_by_batch else 1.0)
    schedule = learning_rate_schedule(base, cfg.total_steps, cfg.optimizer.warmup_steps, cfg.optimizer.end_lr)
    np.testing.assert_allclose(float(schedule(cfg.optimizer.warmup_steps)), base, rtol=1e-6)
    np.testing.assert_allclose(float(schedule(cfg.total_steps)), cfg.optimizer.end_lr, atol=1e-7)
    RandAugment(cfg.data.randaugment_layers, cfg.data.randaugment_magnitude)  # valid settings
    doc = (CONFIGS / f"{file}.py").read_text()
    assert f"nf-train --config=configs/{file}.py:" in doc
    assert re.search(rf"^    {variant} .*Expected: ", doc, re.M), f"{file}.py lists no expected result for {variant}"


@pytest.mark.parametrize("name", RESNETS)
def test_resnet_config_is_the_table_1_recipe(name):
    cfg = load(name)
    model = name.split(":")[1]
    assert cfg.model.name == model and cfg.batch_size == 1024 and cfg.total_steps == 1_281_167 * 90 // 1024
    assert (cfg.model.stochastic_depth, cfg.model.dropout) == (0.1, 0.25)
    assert (cfg.data.mixup_alpha, cfg.data.cutmix) == (0.0, False)
    assert re.search(rf"^    {model} .*Expected: ", (CONFIGS / "resnet_imagenet.py").read_text(), re.M)
    assert load("resnet_imagenet").model.name == "nf_resnet50"  # the default argument


@pytest.mark.parametrize("level", range(6))
def test_nf_regnet_recipe(level):
    cfg = load(REGNETS[level])
    assert cfg.batch_size == 1024 and cfg.total_steps == 450_410
    assert cfg.optimizer.lr == 0.4 and not cfg.optimizer.scale_lr_by_batch and cfg.optimizer.end_lr == 0.001
    assert cfg.optimizer.weight_decay == pytest.approx(5e-5 + 1e-5 * level)
    assert cfg.optimizer.agc_clip == 0.0 and cfg.model.dtype == ""
    assert cfg.model.stochastic_depth == 0.1
    assert cfg.data.randaugment_layers == 0 and cfg.data.eval_crop == "center_crop"


@pytest.mark.parametrize("level", range(8))
def test_nfnet_recipe(level):
    cfg = load(NFNETS[level])
    assert cfg.batch_size == 4096 and cfg.total_steps == 112_602
    assert cfg.optimizer.lr == 0.1 and cfg.optimizer.scale_lr_by_batch and cfg.optimizer.end_lr == 0.0
    assert cfg.optimizer.weight_decay == 2e-5 and cfg.optimizer.agc_clip == 0.01
    assert cfg.model.dtype == "bfloat16" and cfg.model.stochastic_depth == 0.25
    assert cfg.data.randaugment_layers == 4
    assert cfg.data.randaugment_magnitude == (5 if level == 0 else 10 if level <= 2 else 15)
    assert cfg.data.eval_crop == "resize_crop" and cfg.data.crop_padding == 32


def test_recipe_builders_reject_unknown_variants():
    with pytest.raises(ValueError, match="b6"):
        recipes.nf_regnet_imagenet("b6")
    with pytest.raises(ValueError, match="f8"):
        recipes.nfnet_imagenet("f8")


def test_trainer_data_uses_eval_image_size_and_randaugment(tmp_path):
    """Classification.build_data on digits: train batches at data.image_size with RandAugment, eval at
    data.eval_image_size (which defaults to image_size when absent)."""
    from nf.tasks import Classification

    cfg = load("quickstart")
    cfg.unlock()
    cfg.data.root = str(tmp_path / "digits")
    cfg.data.train = str(tmp_path / "digits/train")
    cfg.data.eval = str(tmp_path / "digits/test")
    cfg.batch_size = 8
    cfg.data.image_size = 16
    td = Classification.build_data(cfg, str(tmp_path))
    assert next(iter(td.eval_batches()))["image"].shape == (8, 16, 16, 3)  # no eval_image_size key
    cfg.data.eval_image_size = 20
    cfg.data.randaugment_layers = 2
    cfg.data.randaugment_magnitude = 9
    td = Classification.build_data(cfg, str(tmp_path))
    it = td.train_iter()
    try:
        with_ra = next(it)["image"]
    finally:
        it.close()
    assert with_ra.shape == (8, 16, 16, 3)
    assert next(iter(td.eval_batches()))["image"].shape == (8, 20, 20, 3)
    cfg.data.randaugment_layers = 0
    it = Classification.build_data(cfg, str(tmp_path)).train_iter()
    try:
        assert not np.array_equal(next(it)["image"], with_ra)
    finally:
        it.close()


def test_configs_are_found_by_name_from_anywhere(tmp_path, monkeypatch):
    from nf.train.config_files import resolve, resolve_argv

    monkeypatch.chdir(tmp_path)  # no configs/ folder here, as for a user of an installed nf
    packaged = Path(resolve("quickstart")).resolve()
    assert packaged == (CONFIGS / "quickstart.py").resolve()
    assert resolve("configs/nfnet_imagenet.py:f3") == f"{resolve('nfnet_imagenet')}:f3"
    mine = tmp_path / "quickstart.py"
    mine.write_text("def get_config(): ...\n")
    assert resolve("quickstart.py") == "quickstart.py"  # an existing file wins over the packaged one
    assert resolve("no_such_config:x") == "no_such_config:x"  # left for the flag to report
    argv = resolve_argv(["nf-train", "--config", "nfnet_imagenet:f1", "--workdir=w", "--config.seed=1"])
    assert argv[2] == f"{resolve('nfnet_imagenet')}:f1" and argv[3:] == ["--workdir=w", "--config.seed=1"]


def test_a_wheel_install_carries_the_configs(tmp_path):
    """The built wheel (not the checkout) holds the configs and `--config=NAME:ARG` parses there."""
    import subprocess
    import sys

    repo = CONFIGS.parent
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "whl", repo],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "whl").glob("*.whl")
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", site, wheel], check=True)
    probe = (
        "from absl import flags; import nf.train.__main__ as m; from nf.train.config_files import resolve_argv;"
        "argv = resolve_argv(['nf-train', '--config=nfnet_imagenet:f2', '--workdir=w']);"
        "flags.FLAGS(argv); c = m._CONFIG.value; print(m.__file__, c.model.name, c.data.image_size)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    file, name, size = out.stdout.split()
    assert file.startswith(str(site)) and (name, size) == ("nfnet_f2", "256")
