"""Every published NF weight nf imports: timm's 13 checkpoints and DeepMind's 7 NFNet files.

Plain data, nothing is read from timm or DeepMind at run time. timm's entries are copied from
timm 1.0.31 (`timm/models/nfnet.py` pretrained configs: sizes, crop, the pretrained tag of the
Hugging Face Hub repository `timm/<model>.<tag>`; parameter counts printed by
`tools/make_timm_fixtures.py --stats`). `top1` is the ImageNet-1k top-1 timm publishes for each
checkpoint at `test_size` (timm's results/results-imagenet.csv; for the `dm_` ports of
DeepMind's weights this is timm's own evaluation with its preprocessing, a little off DeepMind's
figures below). DeepMind's figures are those of its nfnets README (F6 trained with SAM).
"""

from __future__ import annotations

from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _entry(params, train_size, test_size, crop_pct, top1, tag, crop_mode="center", nf_name=None) -> dict[str, Any]:
    return dict(
        nf_name=nf_name,
        tag=tag,
        params=params,
        train_size=train_size,
        test_size=test_size,
        crop_pct=crop_pct,
        crop_mode=crop_mode,
        interpolation="bicubic",
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        top1=top1,
    )


# timm name -> entry. dm_nfnet_* carry DeepMind's weights and are nf's nfnet_f*; crop_mode
# 'squash' resizes the image to size / crop_pct on both sides (no aspect kept) before the centre
# crop; 'center' resizes the short side. crop_pct is the eval one (timm's test_crop_pct if set).
TIMM_CHECKPOINTS: dict[str, dict[str, Any]] = {
    "dm_nfnet_f0": _entry(71_489_284, 192, 256, 0.9, 83.468, "dm_in1k", "squash", "nfnet_f0"),
    "dm_nfnet_f1": _entry(132_634_256, 224, 320, 0.91, 84.7, "dm_in1k", "squash", "nfnet_f1"),
    "dm_nfnet_f2": _entry(193_779_228, 256, 352, 0.92, 85.184, "dm_in1k", "squash", "nfnet_f2"),
    "dm_nfnet_f3": _entry(254_924_200, 320, 416, 0.94, 85.676, "dm_in1k", "squash", "nfnet_f3"),
    "dm_nfnet_f4": _entry(316_069_172, 384, 512, 0.951, 85.838, "dm_in1k", "squash", "nfnet_f4"),
    "dm_nfnet_f5": _entry(377_214_144, 416, 544, 0.954, 86.102, "dm_in1k", "squash", "nfnet_f5"),
    "dm_nfnet_f6": _entry(438_359_116, 448, 576, 0.956, 86.364, "dm_in1k", "squash", "nfnet_f6"),
    "nfnet_l0": _entry(35_074_488, 224, 288, 1.0, 82.766, "ra2_in1k"),
    "eca_nfnet_l0": _entry(24_143_924, 224, 288, 1.0, 82.59, "ra2_in1k"),
    "eca_nfnet_l1": _entry(41_407_728, 256, 320, 1.0, 84.062, "ra2_in1k"),
    "eca_nfnet_l2": _entry(56_722_348, 320, 384, 1.0, 84.71, "ra3_in1k"),
    "nf_regnet_b1": _entry(10_223_984, 256, 288, 0.9, 79.368, "ra2_in1k"),
    "nf_resnet50": _entry(25_557_032, 256, 288, 0.94, 80.658, "ra2_in1k"),
}
for _name, _entry_ in TIMM_CHECKPOINTS.items():
    _entry_["nf_name"] = _entry_["nf_name"] or f"timm_{_name}"
    _entry_["hub_id"] = f"timm/{_name}.{_entry_['tag']}"  # timm's hf_hub_id 'timm/' + model.tag

# The Hub file nf reads (timm tries model.safetensors first; nf never reads pickled weights).
TIMM_HUB_FILE = "model.safetensors"

# DeepMind's variant -> its released Haiku file, nf model, parameters and ImageNet top-1 (its
# eval resolution, the registry's test_size). Same architecture as timm's dm_nfnet_f*.
DEEPMIND_URL = "https://storage.googleapis.com/dm-nfnets/{variant}_haiku.npz"
DEEPMIND_CHECKPOINTS: dict[str, dict[str, Any]] = {
    f"F{i}": dict(
        nf_name=f"nfnet_f{i}",
        params=TIMM_CHECKPOINTS[f"dm_nfnet_f{i}"]["params"],
        top1=top1,
        url=DEEPMIND_URL.format(variant=f"F{i}"),
    )
    for i, top1 in enumerate((83.6, 84.7, 85.1, 85.7, 85.9, 86.0, 86.5))
}


def known_weights() -> list[dict[str, Any]]:
    """One row per published weight: name, source, where it is fetched from, top-1, parameters."""
    rows = [
        dict(name=name, source="timm", hub_id=e["hub_id"], top1=e["top1"], params=e["params"], nf_name=e["nf_name"])
        for name, e in TIMM_CHECKPOINTS.items()
    ]
    rows += [
        dict(
            name=name,
            source="deepmind",
            hub_id=None,
            top1=e["top1"],
            params=e["params"],
            nf_name=e["nf_name"],
            url=e["url"],
        )
        for name, e in DEEPMIND_CHECKPOINTS.items()
    ]
    return rows
