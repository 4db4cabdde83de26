"""Training-input throughput per host CPU core, measured, for sizing hosts (docs/input.md).

    from nf.data import host_rate
    rate = host_rate.rate_for(config.data)                       # images/s one core feeds
    cores = host_rate.cores_needed(6700, rate)                   # cores per accelerator

The constants are nf's medians of images per CPU-second on one core from
`tools/input_benchmark.py` (the results files named in `HostRate.source` hold the machine, date,
commit and command). They depend on the CPU and on the JPEG sizes: measure your own hosts with
the tool, and `read_rate` its JSON.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class HostRate:
    """Images per second that one host core turns into training batches for one recipe."""

    recipe: str
    images_per_core_second: float
    source: str


# Inception crop + flip, 224 px (NF-ResNets, NF-RegNets: no RandAugment, no MixUp/CutMix), resized
# as the ImageNet recipes do (data.antialias=False, the reference pipelines' plain bicubic) ...
RESNET = HostRate("resnet", 706.1, "tools/results/input_resnet.json")
# ... and with nf's anti-aliasing (data.antialias=True).
RESNET_ANTIALIAS = HostRate("resnet", 641.9, "tools/results/input_resnet_antialias.json")
# + MixUp/CutMix + RandAugment (4 layers, magnitude 5), 192 px (the NFNet-F0 recipe), likewise.
NFNET_F0 = HostRate("nfnet_f0", 512.7, "tools/results/input_nfnet_f0.json")
NFNET_F0_ANTIALIAS = HostRate("nfnet_f0", 454.1, "tools/results/input_nfnet_f0_antialias.json")


def rate_for(data_config: Any) -> HostRate:
    """The measured rate of the recipe whose augmentation `data_config` (a config's `data`) uses:
    the NFNet-F0 rate with RandAugment or MixUp/CutMix (conservative for MixUp/CutMix alone, e.g.
    the NF-RegNets), else the ResNet rate (Inception crop + flip only); each with or without the
    anti-aliasing, as `data.antialias` says (default on)."""
    heavy = getattr(data_config, "randaugment_layers", 0) or getattr(data_config, "mixup_alpha", 0.0)
    heavy = heavy or getattr(data_config, "cutmix", False)
    if getattr(data_config, "antialias", True):
        return NFNET_F0_ANTIALIAS if heavy else RESNET_ANTIALIAS
    return NFNET_F0 if heavy else RESNET


def cores_needed(images_per_second: float, rate: HostRate | float) -> float:
    """Host cores that feed `images_per_second` training images at `rate` per core."""
    per_core = rate.images_per_core_second if isinstance(rate, HostRate) else float(rate)
    if not (per_core > 0 and math.isfinite(per_core)):
        raise ValueError(f"the per-core input rate must be a positive number, got {per_core!r}")
    return float(images_per_second) / per_core


def read_rate(path: str | os.PathLike) -> HostRate:
    """The nf per-core rate in a `tools/input_benchmark.py --json=PATH` result."""
    with open(path) as f:
        result = json.load(f)
    try:
        nf = result["one_core"]["nf"]
        per_core = nf.get("images_per_cpu_sec") or nf["images_per_sec"]
        return HostRate(str(result["recipe"]), float(per_core), os.fspath(path))
    except (KeyError, TypeError) as e:
        raise ValueError(f"{os.fspath(path)} is not a tools/input_benchmark.py result (missing {e})") from e
