"""timm checkpoint import against fixtures made by timm itself (tools/make_timm_fixtures.py).

Each fixture is a tiny member of a timm NF family with every parameter perturbed off its init,
saved by timm/safetensors with timm's eval-mode logits on N(0, 1) NHWC inputs at two sizes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from nf.layers import ScaledWSConv, fold_ws, max_pool, standardize_weight_timm
from nf.models import create_model
from nf.pretrained.safetensors import read_safetensors, write_safetensors
from nf.pretrained.timm import load, model_name, preprocessing

FIXTURES = Path(__file__).parent / "fixtures" / "timm"

# family folder -> (timm model name, nf overrides giving the fixture's tiny NfCfg in nf's terms)
TINY = {
    "dm_nfnet": (
        "dm_nfnet_f0",
        dict(depths=(1, 2, 1, 2), widths=(32, 48, 64, 96), stem_widths=(2, 4, 8), group_width=16),
    ),
    "nfnet_l0": ("nfnet_l0", dict(depths=(1, 2, 1, 2), widths=(32, 48, 80, 96), stem_widths=(2, 4, 8), group_width=8)),
    "eca_nfnet": (
        "eca_nfnet_l0",
        dict(depths=(1, 2, 1, 2), widths=(32, 48, 80, 128), stem_widths=(2, 4, 8), group_width=8),
    ),
    "nf_regnet": ("nf_regnet_b1", dict(depths=(2, 3, 1, 2), widths=(24, 40, 56, 88))),
    "nf_resnet": ("nf_resnet50", dict(depths=(1, 2, 1, 2), widths=(32, 64, 96, 128), stem_width=16)),
}

# timm 1.0.31's parameter counts (`tools/make_timm_fixtures.py --stats`), 1000 classes.
TIMM_PARAMS = {
    "timm_nfnet_l0": 35_074_488,
    "timm_eca_nfnet_l0": 24_143_924,
    "timm_eca_nfnet_l1": 41_407_728,
    "timm_eca_nfnet_l2": 56_722_348,
    "timm_nf_regnet_b1": 10_223_984,
    "timm_nf_resnet50": 25_557_032,
    "nfnet_f0": 71_489_284,  # timm's dm_nfnet_f0
    "nfnet_f3": 254_924_200,  # timm's dm_nfnet_f3
}


def _load_tiny(family: str, path: Path | None = None, **kwargs):
    name, overrides = TINY[family]
    return load(path or FIXTURES / family / "model.safetensors", name, **overrides, **kwargs)


@pytest.mark.parametrize("family", sorted(TINY))
def test_fixture_logits_match_timm(family):
    meta = json.loads((FIXTURES / family / "config.json").read_text())
    data = read_safetensors(FIXTURES / family / "data.safetensors")
    model = _load_tiny(family)
    forward = nnx.jit(lambda m, x: m(x, train=False))
    for px in meta["sizes"]:
        want = data[f"logits_{px}"]
        got = np.asarray(forward(model, data[f"x_{px}"]))
        assert got.shape == want.shape
        err = float(np.abs(got - want).max())
        # the contract is 1e-3 of the largest logit; exact modelling gives <= 2e-6, and a single
        # unmodelled difference (e.g. tanh vs erf GELU in dm_nfnet) already costs ~3e-4
        assert err <= 2e-5 * float(np.abs(want).max()), (family, px, err)
    count = sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count == meta["num_params"]


@pytest.mark.parametrize("name", sorted(TIMM_PARAMS))
def test_param_counts_match_timm(name):
    model = nnx.eval_shape(lambda: create_model(name))
    assert sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(model, nnx.Param))) == TIMM_PARAMS[name]


def test_names_and_preprocessing():
    assert model_name("dm_nfnet_f2") == "nfnet_f2"
    assert model_name("eca_nfnet_l0.ra2_in1k") == "timm_eca_nfnet_l0"
    p = preprocessing("nf_resnet50")
    assert (p.kind, p.image_size, p.crop_pct, p.crop, p.interpolation) == (
        "timm",
        288,
        0.94,
        "resize_short_crop",
        "bicubic",
    )
    assert preprocessing("dm_nfnet_f0").crop == "resize_crop"  # timm's 'squash' for its dm_ ports
    with pytest.raises(ValueError, match="eca_nfnet_l9"):
        model_name("eca_nfnet_l9")


def _edited(tmp_path, family, edit) -> Path:
    tensors = read_safetensors(FIXTURES / family / "model.safetensors")
    edit(tensors)
    path = tmp_path / "edited.safetensors"
    write_safetensors(path, tensors)
    return path


def test_missing_tensor_is_named(tmp_path):
    path = _edited(tmp_path, "eca_nfnet", lambda t: t.pop("stages.1.1.conv2b.gain"))
    with pytest.raises(ValueError, match=r"missing tensor.*'stages\.1\.1\.conv2b\.gain'"):
        _load_tiny("eca_nfnet", path)


def test_misshaped_tensor_is_named(tmp_path):
    def edit(t):
        t["stages.3.1.conv1.weight"] = t["stages.3.1.conv1.weight"][:, :-8]

    path = _edited(tmp_path, "nf_regnet", edit)
    with pytest.raises(ValueError, match=r"'stages\.3\.1\.conv1\.weight' has shape"):
        _load_tiny("nf_regnet", path)


def test_unexpected_tensor_is_named(tmp_path):
    path = _edited(tmp_path, "nf_resnet", lambda t: t.update({"stages.0.0.attn_last.conv.weight": np.ones((1, 1, 3))}))
    with pytest.raises(ValueError, match=r"unexpected tensor 'stages\.0\.0\.attn_last\.conv\.weight'"):
        _load_tiny("nf_resnet", path)


def test_truncated_file_is_named(tmp_path):
    raw = (FIXTURES / "nf_resnet" / "model.safetensors").read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(raw[: len(raw) - 1000])
    with pytest.raises(ValueError, match=r"truncated\.safetensors.*truncated"):
        _load_tiny("nf_resnet", path)


def test_new_head_keeps_backbone():
    timm = read_safetensors(FIXTURES / "nf_resnet" / "model.safetensors")
    fresh = _load_tiny("nf_resnet", num_classes=3)
    assert fresh.head.kernel.shape == (timm["head.fc.weight"].shape[1], 3)
    np.testing.assert_array_equal(
        np.asarray(fresh.stem.conv.kernel[...]), timm["stem.conv.weight"].transpose(2, 3, 1, 0)
    )
    stacked = np.asarray(fresh.stages[1].rest.conv_out.gain[...])  # blocks 1.. of stage 1, stacked
    np.testing.assert_array_equal(stacked[0], timm["stages.1.1.conv3.gain"].reshape(-1))


def test_timm_ws_formula_matches_numpy_and_folds():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(3, 3, 4, 5)).astype(np.float32) * 0.1
    gain = rng.normal(1.0, 0.2, size=(5,)).astype(np.float32)
    flat = w.reshape(-1, 5).astype(np.float64)
    want = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5) * gain * 1.7 / np.sqrt(36)
    got = np.asarray(standardize_weight_timm(jnp.asarray(w), jnp.asarray(gain), 1.7)).reshape(-1, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    conv = ScaledWSConv(4, 5, 3, padding="SYMMETRIC", strides=2, ws_formula="timm", gamma=1.7, rngs=nnx.Rngs(0))
    x = jnp.asarray(rng.normal(size=(1, 7, 7, 4)), jnp.float32)
    y = conv(x)
    assert y.shape == (1, 4, 4, 5)  # PyTorch: floor((7 + 2 - 3) / 2) + 1
    np.testing.assert_allclose(np.asarray(fold_ws(conv)(x)), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_safetensors_round_trip_dtypes(tmp_path):
    import ml_dtypes

    values = np.linspace(-3, 3, 24, dtype=np.float32).reshape(2, 3, 4)
    tensors = {"bf16": values.astype(ml_dtypes.bfloat16), "f16": values.astype(np.float16), "f32": values}
    write_safetensors(tmp_path / "t.safetensors", tensors)
    back = read_safetensors(tmp_path / "t.safetensors")
    for name, value in tensors.items():
        assert back[name].dtype == np.float32
        np.testing.assert_array_equal(back[name], value.astype(np.float32))
    raw = read_safetensors(tmp_path / "t.safetensors", float32=False)
    assert raw["bf16"].dtype == ml_dtypes.bfloat16 and raw["f16"].dtype == np.float16


def test_safetensors_bad_offsets_name_the_tensor(tmp_path):
    path = tmp_path / "t.safetensors"
    write_safetensors(path, {"a": np.zeros((2, 2), np.float32)})
    raw = bytearray(path.read_bytes())
    raw[8:] = raw[8:].replace(b'"shape":[2,2]', b'"shape":[2,3]')
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"t\.safetensors.*tensor 'a'"):
        read_safetensors(path)


def test_symmetric_max_pool_is_pytorch_padding():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 8, 7, 2)), jnp.float32)
    want = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))
    np.testing.assert_array_equal(np.asarray(max_pool(x, 3, 2, "SYMMETRIC")), np.asarray(want))
    lax_pool = max_pool(x, 3, 2, "SYMMETRIC", impl="lax")  # lax's own reduce_window, as on accelerators
    np.testing.assert_array_equal(np.asarray(lax_pool), np.asarray(want))
    assert want.shape == (1, 4, 4, 2)  # PyTorch MaxPool2d(3, 2, padding=1): floor((n + 2 - 3) / 2) + 1


def test_nf_import_workdir_rebuilds_the_timm_forward_pass(tmp_path):
    """nf-import of a timm dm_nfnet file records the options (timm's WS formula, erf GELU) in the
    card, so the workdir's model reproduces timm's logits."""
    from nf.cli.import_weights import import_to_workdir
    from nf.inference import load_model

    name, overrides = TINY["dm_nfnet"]
    card = import_to_workdir(
        "timm", name, str(FIXTURES / "dm_nfnet" / "model.safetensors"), str(tmp_path / "run"), **overrides
    )
    assert card.model["ws_formula"] == "timm" and card.model["activation"] == "gelu_exact"
    assert card.preprocessing.kind == "timm" and card.source["published_top1"] == 83.468
    model, _ = load_model(str(tmp_path / "run"))
    data = read_safetensors(FIXTURES / "dm_nfnet" / "data.safetensors")
    px = json.loads((FIXTURES / "dm_nfnet" / "config.json").read_text())["sizes"][0]
    got = np.asarray(nnx.jit(lambda m, x: m(x, train=False))(model, data[f"x_{px}"]))
    want = data[f"logits_{px}"]
    assert float(np.abs(got - want).max()) <= 2e-5 * float(np.abs(want).max())
