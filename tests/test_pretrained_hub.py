"""timm's weights from the Hugging Face Hub and `nf-import --list`.

The Hub is never contacted: each test builds a huggingface_hub cache in its real on-disk layout
(`models--timm--<model>.<tag>/blobs/<sha256>`, `snapshots/<commit>/model.safetensors` linking to
the blob, `refs/main` naming the commit) holding timm's tiny eca_nfnet fixture
(tools/make_timm_fixtures.py), and runs nf with `HF_HUB_CACHE` pointing at it and
`HF_HUB_OFFLINE=1`, in a fresh interpreter (huggingface_hub reads both when it is imported).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from test_pretrained_timm import FIXTURES, TINY

from nf.pretrained.catalog import DEEPMIND_CHECKPOINTS, TIMM_CHECKPOINTS
from nf.pretrained.safetensors import read_safetensors

REPO = Path(__file__).resolve().parents[1]
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # a snapshot's name is its commit hash


def hub_cache(root: Path, repo_id: str, files: dict[str, Path]) -> Path:
    """A huggingface_hub cache at `root` holding `files` (name -> source file) of model `repo_id`
    at commit COMMIT on branch main, laid out as huggingface_hub writes it."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "blobs").mkdir()
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name, source in files.items():
        data = source.read_bytes()
        blob = hashlib.sha256(data).hexdigest()  # an LFS file's blob is named by its SHA-256
        (repo / "blobs" / blob).write_bytes(data)
        (snapshot / name).symlink_to(Path("..", "..", "blobs", blob))
    return root


def run_offline(code: str, cache: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=600)


IMPORT = """
import json, sys
from nf.cli.import_weights import import_to_workdir
card = import_to_workdir("timm", sys.argv[1], None, sys.argv[2], **json.loads(sys.argv[3]))
print(json.dumps(card.source))
"""


def test_timm_weights_come_from_the_hub_cache(tmp_path):
    name, overrides = TINY["eca_nfnet"]
    weights = FIXTURES / "eca_nfnet" / "model.safetensors"
    cache = hub_cache(tmp_path / "hub", "timm/eca_nfnet_l0.ra2_in1k", {"model.safetensors": weights})
    proc = run_offline(IMPORT, cache, name, str(tmp_path / "run"), json.dumps(overrides))
    assert proc.returncode == 0, proc.stderr[-3000:]
    source = json.loads(proc.stdout.splitlines()[-1])
    blob = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert source["hub"] == {"repo": "timm/eca_nfnet_l0.ra2_in1k", "revision": None}
    assert source["file"] == str(
        cache / "models--timm--eca_nfnet_l0.ra2_in1k" / "snapshots" / COMMIT / "model.safetensors"
    )
    assert source["sha256"] == blob and source["published_top1"] == 82.59

    from nf.inference import load_model

    model, _ = load_model(str(tmp_path / "run"))
    data = read_safetensors(FIXTURES / "eca_nfnet" / "data.safetensors")
    px = json.loads((FIXTURES / "eca_nfnet" / "config.json").read_text())["sizes"][0]
    got = np.asarray(nnx.jit(lambda m, x: m(x, train=False))(model, data[f"x_{px}"]))
    want = data[f"logits_{px}"]  # timm's own logits of the fixture
    assert float(np.abs(got - want).max()) <= 2e-5 * float(np.abs(want).max())


def test_offline_without_the_file_says_what_to_do(tmp_path):
    cache = hub_cache(tmp_path / "hub", "timm/nf_resnet50.ra2_in1k", {})  # the repo, not the file
    workdir = tmp_path / "run"
    cli = "from nf.cli.import_weights import run; import sys; sys.argv[0] = 'nf-import'; run()"
    proc = run_offline(cli, cache, "--source=timm", "--name=nf_resnet50", f"--workdir={workdir}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: timm/nf_resnet50.ra2_in1k/model.safetensors"), err
    assert str(cache) in err[0] and "HF_HUB_OFFLINE" in err[0] and "--weights" in err[0]
    assert not workdir.exists()


def test_deepmind_weights_need_a_file(tmp_path):
    from nf.cli.import_weights import import_to_workdir

    with pytest.raises(ValueError, match="deepmind weights are not on the Hugging Face Hub: pass --weights"):
        import_to_workdir("deepmind", "F0", None, str(tmp_path / "run"))


def test_hub_ids_follow_timms_pretrained_tags():
    from nf.pretrained.hub import timm_hub_id

    assert timm_hub_id("eca_nfnet_l0") == "timm/eca_nfnet_l0.ra2_in1k"
    assert timm_hub_id("eca_nfnet_l2") == "timm/eca_nfnet_l2.ra3_in1k"  # timm's only ra3 NF tag
    assert timm_hub_id("dm_nfnet_f3") == "timm/dm_nfnet_f3.dm_in1k"
    assert timm_hub_id("nf_resnet50.other_tag") == "timm/nf_resnet50.other_tag"
    with pytest.raises(ValueError, match=r"eca_nfnet_l9.*nf-import --list"):
        timm_hub_id("eca_nfnet_l9")


def test_list_prints_every_known_weight(capsys):
    from nf.cli.import_weights import main

    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["name", "source", "nf", "model", "from", "top-1", "params"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert len(rows) == len(lines) - 1 == len(TIMM_CHECKPOINTS) + len(DEEPMIND_CHECKPOINTS) == 20
    # published figures: timm's results-imagenet.csv and DeepMind's README
    assert rows["eca_nfnet_l0"] == [
        "eca_nfnet_l0",
        "timm",
        "timm_eca_nfnet_l0",
        "timm/eca_nfnet_l0.ra2_in1k",
        "82.59",
        "24.1M",
    ]
    assert rows["dm_nfnet_f6"][1:] == ["timm", "nfnet_f6", "timm/dm_nfnet_f6.dm_in1k", "86.36", "438.4M"]
    assert rows["F0"][1:] == [
        "deepmind",
        "nfnet_f0",
        "https://storage.googleapis.com/dm-nfnets/F0_haiku.npz",
        "83.60",
        "71.5M",
    ]
    assert all(row[3].startswith(f"timm/{name}.") for name, row in rows.items() if row[1] == "timm")
