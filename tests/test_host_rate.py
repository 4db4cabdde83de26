"""The per-core input rates that size hosts come from the committed benchmark results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nf.cli.common import load_config
from nf.data import host_rate

REPO = Path(__file__).resolve().parents[1]


def _config(name: str):
    return load_config(str(REPO / "configs" / name))


@pytest.mark.parametrize(
    "rate", [host_rate.RESNET, host_rate.NFNET_F0, host_rate.RESNET_ANTIALIAS, host_rate.NFNET_F0_ANTIALIAS]
)
def test_constants_are_the_committed_medians(rate):
    result = json.loads((REPO / rate.source).read_text())
    assert result["recipe"] == rate.recipe
    nf = result["one_core"]["nf"]
    rounds = sorted(r["images_per_cpu_sec"] for r in nf["rounds"])
    assert nf["images_per_cpu_sec"] == pytest.approx(rounds[len(rounds) // 2])  # a median of its rounds
    assert rate.images_per_core_second == pytest.approx(nf["images_per_cpu_sec"], abs=0.5)
    assert host_rate.read_rate(REPO / rate.source).images_per_core_second == pytest.approx(nf["images_per_cpu_sec"])
    assert result["command"] and result["commit"] and result["machine"] and result["date"]


def test_recipe_rates_follow_the_configs_augmentation():
    assert host_rate.rate_for(_config("nfnet_imagenet.py:f0").data) is host_rate.NFNET_F0
    assert host_rate.rate_for(_config("nfnet_imagenet.py:f3").data) is host_rate.NFNET_F0
    assert host_rate.rate_for(_config("nf_regnet_imagenet.py:b0").data) is host_rate.NFNET_F0  # MixUp/CutMix
    assert host_rate.rate_for(_config("resnet_imagenet.py:nf_resnet50").data) is host_rate.RESNET
    smooth = _config("resnet_imagenet.py:nf_resnet50").data
    smooth.antialias = True
    assert host_rate.rate_for(smooth) is host_rate.RESNET_ANTIALIAS
    assert host_rate.rate_for(_config("quickstart.py").data) is host_rate.RESNET_ANTIALIAS
    # The measured cost of the anti-aliasing: each antialiased rate is below its plain one.
    assert host_rate.RESNET_ANTIALIAS.images_per_core_second < host_rate.RESNET.images_per_core_second
    assert host_rate.NFNET_F0_ANTIALIAS.images_per_core_second < host_rate.NFNET_F0.images_per_core_second


def test_cores_needed_and_bad_inputs(tmp_path):
    assert host_rate.cores_needed(6700, 335.0) == pytest.approx(20.0)
    assert host_rate.cores_needed(1000, host_rate.HostRate("x", 250.0, "-")) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="positive"):
        host_rate.cores_needed(100, 0.0)
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"model": "nf_resnet50"}))
    with pytest.raises(ValueError, match=r"other\.json is not a tools/input_benchmark\.py result"):
        host_rate.read_rate(bad)


def test_input_benchmark_measures_nf_and_tfdata_side_by_side(tmp_path):
    """The tool end to end on a few of its photo-like JPEGs: nf and the tf.data peer each in a
    pinned child process, rates from their own clocks, the recipe's settings as overridden, and a
    result `read_rate` accepts."""
    import subprocess
    import sys

    tool = REPO / "tools" / "input_benchmark.py"
    photos, out = tmp_path / "photos", tmp_path / "result.json"
    subprocess.run([sys.executable, str(tool), f"--write_data={photos}", "--num_images=12"], check=True)
    assert len(list(photos.glob("*/*.JPEG"))) == 12
    args = ["--recipe=resnet", "--antialias=off", "--rounds=1", "--batches=2", "--batch_size=4", "--records=0"]
    subprocess.run(
        [sys.executable, str(tool), f"--data={photos}", "--peer=tfdata", *args, f"--json={out}"],
        check=True,
        cwd=REPO,
    )
    result = json.loads(out.read_text())
    assert result["settings"]["antialias"] is False and result["settings"]["image_size"] == 224
    nf, tf = result["one_core"]["nf"], result["one_core"]["tfdata"]
    assert nf["images_per_cpu_sec"] > 0 and tf["images_per_cpu_sec"] > 0 and len(nf["rounds"]) == 1
    ratio = nf["images_per_cpu_sec"] / tf["images_per_cpu_sec"]
    assert result["nf_over_tfdata_images_per_cpu_sec"] == pytest.approx(ratio)
    assert host_rate.read_rate(out).images_per_core_second == pytest.approx(nf["images_per_cpu_sec"])
