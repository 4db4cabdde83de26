"""Parameter / MAC counting (nf.models.stats) and the nf-model-stats console script."""

import json
import math
import os
import subprocess

import pytest
from conftest import console_script

from nf.models import RESNET_DEPTHS, create_model
from nf.models.stats import count_params, forward_macs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def analytic_resnet_macs(
    depths,
    image_size,
    *,
    widths=(256, 512, 1024, 2048),
    strides=(1, 2, 2, 2),
    stem_width=64,
    in_channels=3,
    ratio=0.25,
    num_classes=1000,
    groups=1,
):
    """Sum of k*k*cin*cout*Hout*Wout/groups over every conv, plus the linear head ('SAME' padding)."""

    def conv(k, cin, cout, size_out, g=1):
        return k * k * cin * cout * size_out * size_out // g

    size = math.ceil(image_size / 2)
    total = conv(7, in_channels, stem_width, size)  # 7x7/2 stem
    size = math.ceil(size / 2)  # 3x3/2 max-pool (no MACs)
    cin = stem_width
    for depth, width, stride in zip(depths, widths, strides):
        for j in range(depth):
            s = stride if j == 0 else 1
            out_size, mid = math.ceil(size / s), int(width * ratio)
            if s > 1 or cin != width:
                total += conv(1, cin, width, out_size)  # strided 1x1 shortcut
            total += conv(1, cin, mid, size)  # 1x1 at the input resolution
            total += conv(3, mid, mid, out_size, groups)  # 3x3 carries the stride
            total += conv(1, mid, width, out_size)
            size, cin = out_size, width
    return total + cin * num_classes


def test_nf_resnet50_param_count():
    assert count_params(lambda: create_model("nf_resnet50")) == 25_557_048


def test_param_count_accepts_a_module():
    model = create_model("nf_resnet26", num_classes=10)
    assert count_params(model) == count_params(lambda: create_model("nf_resnet26", num_classes=10))


def test_nf_resnet50_macs_match_analytic_count():
    analytic = analytic_resnet_macs(RESNET_DEPTHS[50], 224)
    assert analytic == pytest.approx(4.09e9, rel=0.01)  # the usual ResNet-50 figure
    assert forward_macs(lambda: create_model("nf_resnet50"), 224) == analytic


def analytic_nfnet_macs(image_size, *, widths=(256, 512, 1536, 1536), depths=(1, 2, 6, 3), group_width=128):
    """NFNet paper by hand: 4-conv stem, grouped bottleneck with the extra 3x3, SE (two matmuls),
    avg-pool + 1x1 shortcuts, 3072-channel final conv, 1000-way linear."""
    size = image_size // 2
    total = size * size * 9 * (3 * 16 + 16 * 32 + 32 * 64)  # three stride-1-after-2 stem convs
    size //= 2
    total += size * size * 9 * 64 * 128
    cin = 128
    for stage, (width, depth) in enumerate(zip(widths, depths)):
        for j in range(depth):
            stride = 2 if stage > 0 and j == 0 else 1
            mid, size_in = width // 2, size
            size //= stride
            if j == 0:
                total += size * size * cin * width  # (pooled) 1x1 shortcut
            total += size_in * size_in * cin * mid  # 1x1 before the stride
            total += 2 * size * size * 9 * group_width * mid  # two grouped 3x3
            total += size * size * mid * width
            total += 2 * width * (width // 2)  # SE squeeze and excite
            cin = width
    return total + size * size * cin * 3072 + 3072 * 1000


def test_nfnet_f0_reference_figures():
    """DeepMind's README: 71,489,284 parameters and 12.38B multiply-adds at 256px."""
    analytic = analytic_nfnet_macs(256)
    assert round(analytic / 1e9, 2) == 12.38
    assert count_params(lambda: create_model("nfnet_f0")) == 71_489_284
    assert forward_macs(lambda: create_model("nfnet_f0"), 256) == analytic


def test_model_stats_cli_json():
    cmd = [*console_script("nf-model-stats"), "--models=nf_resnet26,nf_regnet_b0", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, timeout=600).stdout
    rows = json.loads(out)
    assert [r["model"] for r in rows] == ["nf_resnet26", "nf_regnet_b0"]
    assert list(rows[0]["macs"]) == ["224"]  # train size == test size
    assert list(rows[1]["macs"]) == ["192", "224"]  # paper App. C: B0 trains at 192, tests at 224
    assert rows[0]["params"] == count_params(lambda: create_model("nf_resnet26"))
    assert rows[0]["macs"]["224"] == analytic_resnet_macs(RESNET_DEPTHS[26], 224)
    assert rows[1]["macs"]["224"] == pytest.approx(0.44e9, rel=0.01)  # paper Table 3: 0.44B
