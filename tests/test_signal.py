"""Signal propagation at init (paper §3-4, Fig. 1-2, 8-9; paper §3): statistics, SPP checks
against the paper's analytic expectations, and the nf-spp console script.

Models are small: 8 blocks per stage, width 128 in every stage, so every model's parameter
initialisers share their compilations; the NF and BN checks use the four stages of a ResNet, the
ablations only the first two (the same weights as the four-stage model's first 16 blocks, at a
fraction of the compile time). Images are 128px (paper §3: small maps distort the statistics).
"""

import functools
import json
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import console_script
from flax import nnx

from nf.layers import SkipGain
from nf.models import create_model
from nf.signal import STAT_NAMES, check_finite, compute_spp, load_images, plot_spp, set_skip_gains, signal_stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALPHA = 0.2
DEPTHS = (8, 8, 8, 8)


def small_config(stages: int = 4) -> dict:
    return dict(
        depths=DEPTHS[:stages], widths=(128,) * stages, strides=(1, 2, 2, 2)[:stages], stem_width=64, num_classes=10
    )


IMAGE_SIZE, BATCH = 128, 8


@functools.cache
def _images(seed: int = 0) -> np.ndarray:
    return np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)))


@functools.cache
def _model(name: str, stages: int, **overrides):
    return create_model(name, **small_config(stages), **overrides)


def small_model(name: str, stages: int = 4, **overrides):
    """A fresh copy of a small registered model at init (the jitted SPP forward compiles once per
    architecture)."""
    return nnx.clone(_model(name, stages, **overrides))


@functools.cache
def spp(name: str, train: bool = False, stages: int = 4, **overrides) -> dict[str, np.ndarray]:
    """SPP statistics of a small registered model at init, skip gains set to 1 (paper §3)."""
    model = small_model(name, stages, **overrides)
    set_skip_gains(model, 1.0)
    stats = compute_spp(model, _images(), train=train)
    return {k: np.asarray(v) for k, v in stats.items()}


def stage_slices(depths=DEPTHS):
    ends = np.cumsum(depths)
    return [slice(int(e - d), int(e)) for d, e in zip(depths, ends, strict=True)]


# ---------------------------------------------------------------------------------------------
# The statistics themselves


def test_signal_stats_matches_numpy():
    rng = np.random.default_rng(0)
    shape = (4, 6, 5, 7)
    out = rng.normal(0.3, 1.0, shape) * rng.uniform(0.5, 2.0, shape[-1]) + rng.normal(0, 1, shape[-1])
    residual = rng.normal(-0.2, 1.5, shape) * rng.uniform(0.1, 3.0, shape[-1])
    got = signal_stats(jnp.asarray(out, jnp.float32), jnp.asarray(residual, jnp.float32))
    want = {
        "avg_channel_squared_mean": np.mean(out.mean(axis=(0, 1, 2)) ** 2),
        "avg_channel_variance": np.mean(out.var(axis=(0, 1, 2))),
        "residual_avg_channel_variance": np.mean(residual.var(axis=(0, 1, 2))),
    }
    assert set(got) == set(STAT_NAMES) == set(want)
    for k in STAT_NAMES:
        np.testing.assert_allclose(float(got[k]), want[k], rtol=1e-5, err_msg=k)
    # bf16 activations are reduced in float32: 2e-2 allows their rounding to 8 mantissa bits
    got16 = signal_stats(jnp.asarray(out, jnp.bfloat16), jnp.asarray(residual, jnp.bfloat16))
    for k in STAT_NAMES:
        np.testing.assert_allclose(float(got16[k]), want[k], rtol=2e-2, err_msg=k)


def test_set_skip_gains_selects_by_type():
    model = small_model("nf_resnet50")
    gains = jax.tree.leaves(nnx.state(model, SkipGain))
    assert sum(g.size for g in gains) == sum(DEPTHS) and all(np.all(np.asarray(g) == 0) for g in gains)
    assert set_skip_gains(model, 1.0) == sum(DEPTHS)
    assert all(np.all(np.asarray(g) == 1) for g in jax.tree.leaves(nnx.state(model, SkipGain)))
    assert set_skip_gains(small_model("bn_resnet50"), 1.0) == 0  # no SkipGain variables


def test_skip_gain_zero_hides_the_residual_branches():
    """SkipInit at init: every block is the identity (plus the transition's shortcut conv), so the
    variance never grows within a stage — why SPPs of NF models use skip gain 1."""
    model = small_model("nf_resnet50")
    s = compute_spp(model, _images(), train=False)
    var = np.asarray(s["avg_channel_variance"])
    for sl in stage_slices():
        np.testing.assert_allclose(var[sl], var[sl][0], rtol=1e-5)
    # The branches are alive, only hidden (their inputs are divided by an expected std that assumed growth).
    assert np.all(np.asarray(s["residual_avg_channel_variance"]) > 0.2)


# ---------------------------------------------------------------------------------------------
# SPPs against the paper (paper §3)


def test_nf_resnet_with_scaled_ws():
    s = spp("nf_resnet50")
    sq, var, res = s["avg_channel_squared_mean"], s["avg_channel_variance"], s["residual_avg_channel_variance"]
    assert s["stage_ends"].tolist() == [7, 15, 23, 31]
    assert np.all(np.isfinite(var)) and len(var) == sum(DEPTHS)
    # Scaled WS removes the mean shift: squared channel means far below the variance everywhere.
    assert np.all(sq < 0.05 * var), (sq / var).max()
    # Variance-preserving residual branches (decaying slightly with depth from zero padding).
    stages = stage_slices()
    assert np.all((res[stages[0]] > 0.8) & (res[stages[0]] < 1.2)), res[stages[0]]
    assert np.all((res > 0.5) & (res < 1.3)), res
    # The first block's output: unit-variance shortcut conv plus alpha^2 * Var(f).
    assert abs(var[0] - (1 + ALPHA**2)) < 0.1, var[0]
    for k, sl in enumerate(stages):
        blocks = np.arange(sl.start + 1, sl.stop)
        growth = var[blocks] - var[blocks - 1]
        # Var(x + alpha f(x)) = Var(x) + alpha^2 Var(f): growth by alpha^2 per block ...
        # (0.012: the covariance of x and f(x), zero in expectation, is estimated on one batch)
        np.testing.assert_allclose(growth, ALPHA**2 * res[blocks], atol=0.012, err_msg=f"stage {k}")
        if k < 2:  # ... i.e. about alpha^2 where the maps are large enough (32x32, 16x16)
            assert abs(growth.mean() - ALPHA**2) < 0.008, (k, growth)
            assert np.all((growth > 0.5 * ALPHA**2) & (growth < 1.5 * ALPHA**2)), (k, growth)
    # ... and reset at every transition to about 1 + alpha^2 (beta divides by the expected std).
    for k, sl in enumerate(stages[1:], 1):
        assert var[sl.start] < var[sl.start - 1] - 0.15, (k, var[sl.start - 1], var[sl.start])
        # (the last stage's 4x4 maps lose some variance to zero padding in the previous stage)
        assert abs(var[sl.start] - (1 + ALPHA**2)) < (0.06 if k < 3 else 0.2), (k, var[sl.start])


def test_nf_resnet_without_ws_has_mean_shift():
    """He-init Gaussian weights, plain ReLU (paper §4.1, Fig. 2): the squared channel mean exceeds
    the variance, while Scaled WS keeps it near zero."""
    s = spp("nf_nows_resnet50", stages=2)
    sq, var = s["avg_channel_squared_mean"], s["avg_channel_variance"]
    assert np.all(np.isfinite(sq))
    assert np.any(sq > var), (sq / var).max()
    assert (sq / var).max() > 2
    assert (sq / var).max() > 100 * (
        spp("nf_resnet50")["avg_channel_squared_mean"] / spp("nf_resnet50")["avg_channel_variance"]
    ).max()


def test_bn_relu_conv_baseline():
    """BN-ReLU-Conv in train mode, He init (paper §3, Fig. 1): residual variance ~0.68 = 2 Var(ReLU(z));
    the variance and squared mean grow linearly within a stage and the variance resets at transitions."""
    s = spp("bn_resnet50", train=True)
    sq, var, res = s["avg_channel_squared_mean"], s["avg_channel_variance"], s["residual_avg_channel_variance"]
    assert 0.6 < res.mean() < 0.76, res.mean()
    assert np.all((res > 0.55) & (res < 0.8)), res
    for sl in stage_slices():
        blocks = np.arange(sl.start + 1, sl.stop)
        np.testing.assert_allclose(var[blocks] - var[blocks - 1], res[blocks], atol=0.1)  # alpha = 1
        assert sq[sl.stop - 1] > sq[sl.start] + 1.0, sq[sl]  # mean grows within the stage
    for sl in stage_slices()[1:]:
        assert var[sl.start] < 0.4 * var[sl.start - 1], (var[sl.start - 1], var[sl.start])


def test_he_gain_attenuates():
    """Using He's sqrt(2) instead of the ReLU's gamma ~1.71 (paper Fig. 8): the signal shrinks
    progressively, stage after stage."""
    he = spp("nf_hegain_resnet50", stages=2)
    good = spp("nf_resnet50")  # its first two stages are the two-stage model with the correct gamma
    ends = he["stage_ends"]
    v_good, v_he = good["avg_channel_variance"][ends], he["avg_channel_variance"][ends]
    assert np.all(v_he < 0.8 * v_good), (v_he, v_good)
    ratio = v_he / v_good
    assert ratio[1] < 0.75 * ratio[0], ratio  # each transition attenuates further
    assert v_he[-1] < 0.5 * v_good[-1], (v_he, v_good)
    assert np.all(he["residual_avg_channel_variance"] < 0.5)


def test_squeeze_excite_needs_the_factor_two():
    """SE's sigmoid gate (~0.5 at init) attenuates the branch unless doubled (paper Fig. 9)."""
    x2, nox2 = spp("nf_se_resnet50", stages=2), spp("nf_se_nox2_resnet50", stages=2)
    ends = x2["stage_ends"]
    v_x2, v_nox2 = x2["avg_channel_variance"][ends], nox2["avg_channel_variance"][ends]
    assert np.all(v_nox2 < v_x2), (v_nox2, v_x2)
    assert v_nox2[-1] < 0.8 * v_x2[-1], (v_nox2, v_x2)
    r_x2, r_nox2 = x2["residual_avg_channel_variance"], nox2["residual_avg_channel_variance"]
    assert np.all(r_nox2 < 0.5 * r_x2)
    assert np.all(r_x2[: DEPTHS[0]] > 0.8)  # with the x2 the branch keeps unit variance


# ---------------------------------------------------------------------------------------------
# Non-finite statistics are reported by block, never plotted


def test_non_finite_statistics_are_reported_by_block(tmp_path):
    # An unnormalized ResNetV2 whose branches are scaled up by 1e4: the variance grows by ~1e8 per
    # block and overflows float32 after a few blocks.
    s = spp("plain_resnet50", stages=2, alpha=1e4)
    var = s["avg_channel_variance"]
    first_bad = int(np.flatnonzero(~np.isfinite(var))[0])
    assert 0 < first_bad < DEPTHS[0]
    stats = {k: v.tolist() for k, v in s.items()}
    with pytest.raises(ValueError) as err:
        check_finite(stats, "plain_resnet50")
    msg = str(err.value)
    assert "'plain_resnet50'" in msg and "avg_channel_variance" in msg
    assert f"first at block {first_bad} (stage 0, block {first_bad} of the stage)" in msg
    path = tmp_path / "spp.png"
    with pytest.raises(ValueError, match="plain_resnet50"):
        plot_spp({"nf": {k: v.tolist() for k, v in spp("nf_resnet50").items()}, "plain_resnet50": stats}, str(path))
    assert not path.exists()


def test_check_finite_locates_later_stages():
    stats = {k: [1.0] * 10 for k in STAT_NAMES} | {"stage_ends": [2, 5, 9]}
    stats["residual_avg_channel_variance"][7] = float("nan")
    stats["residual_avg_channel_variance"][8] = float("inf")
    with pytest.raises(
        ValueError,
        match=r"residual_avg_channel_variance: 2 of 10 blocks non-finite, first at "
        r"block 7 \(stage 2, block 1 of the stage\).*blocks \[7, 8\]",
    ):
        check_finite(stats, "m")
    check_finite({k: [1.0, 2.0] for k in STAT_NAMES}, "ok")


def test_plot_spp_writes_png(tmp_path):
    stats = {k: v.tolist() for k, v in spp("nf_resnet50").items()}
    path = plot_spp({"a": stats, "b": stats}, str(tmp_path / "p.png"), log_scale=True)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# Image inputs and the CLI


def test_load_images(tmp_path):
    from PIL import Image

    mean = np.array([0.485, 0.456, 0.406]) * 255
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.broadcast_to(np.round(mean).astype(np.uint8), (50, 80, 3)).copy()).save(folder / "a.png")
    Image.fromarray(np.full((90, 70, 3), 255, np.uint8)).save(folder / "b.jpg")
    (folder / "notes.txt").write_text("ignored")
    batch = load_images(str(folder), 64, 2)
    assert batch.shape == (2, 64, 64, 3) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0], 0, atol=0.02)  # the mean colour normalises to 0 (up to uint8 rounding)
    np.testing.assert_allclose(
        batch[1],
        np.broadcast_to((255 - mean) / (np.array([0.229, 0.224, 0.225]) * 255), (64, 64, 3)),
        atol=0.05,  # JPEG's chroma rounding of a flat white (a few levels of 255, / std 57)
    )
    with pytest.raises(ValueError, match="holds 2 JPEG/PNG"):
        load_images(str(folder), 64, 3)
    np.save(tmp_path / "x.npy", np.ones((3, 40, 60, 1), np.float32))  # [0, 1] floats, grayscale
    batch = load_images(str(tmp_path / "x.npy"), 32, 3)
    assert batch.shape == (3, 32, 32, 3)
    want = (255 - mean) / (np.array([0.229, 0.224, 0.225]) * 255)
    np.testing.assert_allclose(batch[0, 0, 0], want, atol=1e-3)  # float32 normalisation of a float64 value
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_images(str(tmp_path / "missing"), 32, 1)


def run_tool(*args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [*console_script("nf-spp"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )


def test_spp_tool_end_to_end(tmp_path):
    depths = (3, 3)  # a two-stage ResNet keeps the subprocess's compile time down
    images = tmp_path / "images.npy"
    np.save(images, np.random.default_rng(0).integers(0, 256, (3, 72, 90, 3), dtype=np.uint8))
    out = tmp_path / "out"
    proc = run_tool(
        "--models=nf_resnet50,bn_resnet50",
        f"--override=depths={depths}",
        "--override=widths=(32, 32)",
        "--override=strides=(1, 2)",
        "--override=stem_width=16",
        "--image_size=64",
        "--batch_size=2",
        f"--images={images}",
        f"--out={out}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert str(out / "spp.png") in proc.stdout and "train=True" in proc.stdout
    with open(out / "spp.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(out / "spp.json") as f:
        data = json.load(f)
    assert list(data) == ["nf_resnet50", "bn_resnet50"]
    for stats in data.values():
        assert set(stats) == {*STAT_NAMES, "stage_ends"}
        assert stats["stage_ends"] == [2, 5]
        for k in STAT_NAMES:
            assert len(stats[k]) == sum(depths) and all(isinstance(v, float) for v in stats[k])
    # skip gain 1 (default): the NF residual branches contribute, so the variance grows in a stage
    nf_var = data["nf_resnet50"]["avg_channel_variance"]
    assert nf_var[1] > nf_var[0]


def test_spp_tool_errors(tmp_path):
    proc = run_tool("--models=nf_resnet51", f"--out={tmp_path}")
    assert proc.returncode != 0
    assert "Unknown model 'nf_resnet51'" in proc.stderr and "nf_resnet50" in proc.stderr
    proc = run_tool("--models=nf_resnet50", "--batch_size=0", f"--out={tmp_path}")
    assert proc.returncode != 0 and "--batch_size must be positive" in proc.stderr
    proc = run_tool("--models=nf_resnet50", f"--images={tmp_path / 'nope'}", f"--out={tmp_path}")
    assert proc.returncode != 0 and "does not exist" in proc.stderr
    assert not os.path.exists(tmp_path / "spp.json")
