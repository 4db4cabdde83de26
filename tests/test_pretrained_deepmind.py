"""DeepMind's NFNet parameter files: exact import against the Haiku reference's own outputs."""

from __future__ import annotations

import json
import os
import pickle

import jax
import numpy as np
import pytest
from flax import nnx

from nf.models import create_model
from nf.pretrained import deepmind, import_weights
from nf.pretrained.unpickle import load_haiku_params

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "deepmind")  # provenance: fixtures/README.md
TINY = os.path.join(FIXTURES, "deepmind_nfnet_tiny")
TINY_ARCH = dict(widths=(256,) * 4, depths=(1,) * 4)  # how the reference made the file
# The import achieves 3.2e-7 of max|logit| (float32 rounding of a different order of operations);
# the wrong GELU (erf instead of tanh) gives 3.9e-4. timm's fixtures use the same bound.
LOGIT_TOL = 2e-5


def _fixture(name: str) -> str:
    return os.path.join(TINY, name)


def test_tiny_reference_logits_match():
    """Logits of the Haiku reference (eval mode) on its own inputs, every parameter perturbed."""
    model = import_weights(_fixture("tiny_haiku.npz"), source="deepmind", name="F0", **TINY_ARCH)
    x = np.load(_fixture("inputs.npy"))
    want = np.load(_fixture("logits.npy"))
    got = np.asarray(nnx.jit(lambda m, x: m(x, train=False))(model, x))  # one compile, not eager ops
    assert got.shape == want.shape == (2, 10)
    assert np.abs(got - want).max() <= LOGIT_TOL * np.abs(want).max()


def test_every_parameter_comes_from_the_file():
    params = load_haiku_params(_fixture("tiny_haiku.npz"))
    model = import_weights(_fixture("tiny_haiku.npz"), source="deepmind", name="F0", **TINY_ARCH)
    assert np.array_equal(model.stem.convs[0].kernel[...], params["NFNet/~/stem_conv0"]["w"])
    assert np.array_equal(model.stages[2].first.spatial[1].gain[...], params["NFNet/~/nf_block_2/~/conv1b"]["gain"])
    assert float(model.stages[3].first.skip_gain[...]) == float(params["NFNet/~/nf_block_3"]["skip_gain"])
    assert np.array_equal(model.head.bias[...], params["NFNet/~/linear"]["b"])


def test_full_f0_names_and_shapes_fill_nfnet_f0_exactly():
    """The reference's 233 NFNet-F0 tensors fill every parameter of nf's `nfnet_f0` once, stacked
    stages included."""
    with open(os.path.join(FIXTURES, "deepmind_nfnet_f0_param_shapes.json")) as f:
        shapes = json.load(f)
    # Each tensor holds a distinct constant, so the placement of every block can be checked.
    params, code = {}, 0
    for module, tensors in shapes.items():
        params[module] = {}
        for name, shape in tensors.items():
            code += 1
            params[module][name] = np.full(shape, code, np.float32)
    assert sum(len(t) for t in params.values()) == 233
    model = nnx.eval_shape(lambda: create_model("nfnet_f0"))
    model = deepmind.convert(params, model, "F0 shapes", new_head=False)
    n_params = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert n_params == 71_489_284  # the DeepMind README's count
    # Block 4 (nf_block_4) is stage 2's (0-based 1) third block: member 1 of that stage's stack.
    stacked = np.asarray(model.stages[1].rest.spatial[0].kernel[...])
    assert stacked.shape == (1, *params["NFNet/~/nf_block_2/~/conv1"]["w"].shape)
    assert np.all(stacked[0] == params["NFNet/~/nf_block_2/~/conv1"]["w"][0, 0, 0, 0])
    last = np.asarray(model.stages[3].rest.skip_gain[...])
    assert list(last) == [params[f"NFNet/~/nf_block_{i}"]["skip_gain"].item() for i in (10, 11)]


def test_new_class_count_keeps_backbone_and_starts_a_fresh_head():
    model = import_weights(_fixture("tiny_haiku.npz"), "deepmind", "F0", num_classes=3, **TINY_ARCH)
    params = load_haiku_params(_fixture("tiny_haiku.npz"))
    assert model.head.kernel.shape == (512, 3)
    assert np.array_equal(model.final.conv.kernel[...], params["NFNet/~/final_conv"]["w"])


def test_another_variant_fails_naming_a_tensor():
    with pytest.raises(ValueError, match=r"tiny_haiku\.npz.*(tensor|no tensor|nf_block)"):
        import_weights(_fixture("tiny_haiku.npz"), "deepmind", "F0")  # the real F0 is wider and deeper


def test_unknown_variant():
    with pytest.raises(ValueError, match="released"):
        deepmind.model_name("F9")


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "executed"
    path = tmp_path / "F0_haiku.npz"
    path.write_bytes(pickle.dumps({"NFNet/~/linear": {"w": _Payload(str(marker))}}))
    with pytest.raises(pickle.UnpicklingError, match=r"F0_haiku\.npz.*(posix|os)\.system"):
        load_haiku_params(path)
    assert not marker.exists()


def test_truncated_file_names_the_file(tmp_path):
    with open(_fixture("tiny_haiku.npz"), "rb") as f:
        data = f.read()
    path = tmp_path / "cut.npz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.npz"):
        load_haiku_params(path)


def test_plain_npz_archive(tmp_path):
    params = load_haiku_params(_fixture("tiny_haiku.npz"))
    flat = {f"{m}/{n}": v for m, t in params.items() for n, v in t.items()}
    path = tmp_path / "tiny.npz"
    np.savez(path, **flat)
    again = load_haiku_params(path)
    assert again.keys() == params.keys()
    assert all(np.array_equal(again[m][n], params[m][n]) for m in params for n in params[m])


def test_import_to_workdir_round_trip(tmp_path):
    """`nf-import`'s workdir: the card records the source and its preprocessing, and the Orbax
    checkpoint loads back to the reference's logits."""
    import hashlib

    from nf.cli.import_weights import import_to_workdir
    from nf.inference import load_model

    weights = _fixture("tiny_haiku.npz")
    card = import_to_workdir("deepmind", "F0", weights, str(tmp_path / "run"), **TINY_ARCH)
    with open(weights, "rb") as f:
        assert card.source["sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert card.preprocessing.kind == "deepmind" and card.preprocessing.image_size == 256
    assert card.source["published_top1"] == 83.6
    model, loaded = load_model(str(tmp_path / "run"))
    assert loaded.name == "nfnet_f0" and list(loaded.model["widths"]) == [256] * 4  # the card rebuilds the file's model
    x = np.load(_fixture("inputs.npy"))
    got = np.asarray(nnx.jit(lambda m, x: m(x, train=False))(model, x))
    want = np.load(_fixture("logits.npy"))
    assert np.abs(got - want).max() <= LOGIT_TOL * np.abs(want).max()


def test_nf_import_command_refuses_a_malicious_file(tmp_path):
    """The console entry point fails with the global's name and writes nothing."""
    import subprocess
    import sys

    marker = tmp_path / "executed"
    path = tmp_path / "F0_haiku.npz"
    path.write_bytes(pickle.dumps({"NFNet/~/linear": {"w": _Payload(str(marker))}}))
    workdir = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nf.cli.import_weights",
            "--source=deepmind",
            "--name=F0",
            f"--weights={path}",
            f"--workdir={workdir}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    assert "system" in result.stderr and "refusing" in result.stderr
    assert not marker.exists() and not (workdir / "checkpoints").exists()
