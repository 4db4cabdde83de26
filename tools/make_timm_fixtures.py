"""Write tiny perturbed timm NF-model fixtures for nf's timm weight import (tests/fixtures/timm/).

Runs in a separate PyTorch environment, never a dependency of nf:

    python3 -m venv peer && peer/bin/pip install torch==2.13.0 timm safetensors
    peer/bin/python tools/make_timm_fixtures.py                   # tiny fixtures -> tests/fixtures/timm/
    peer/bin/python tools/make_timm_fixtures.py --stats           # timm's full-size param counts + preprocessing
    peer/bin/python tools/make_timm_fixtures.py --full=dm_nfnet_f0 --out=/tmp/f0.safetensors  # random full size

Each fixture folder holds `model.safetensors` (timm's state_dict, keyed as timm's released
safetensors files), `data.safetensors` (float32 NHWC inputs `x_<px>` ~ N(0, 1), batch 2, and timm's
eval-mode logits `logits_<px>`) and `config.json` (the NfCfg fields used). Every parameter is moved
off its init (weights + N(0, 0.02^2), gains / biases / classifier weight + N(0, 0.2^2), zero-init gains and skip gains
set to 1 + N(0, 0.2^2)) so each is checked. Deterministic (seeded): reruns write the same files.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
from pathlib import Path

# timm imports torchvision, whose C extension does not load in a CPU-only torch venv with a
# mismatched torchvision wheel; its fake-kernel registrations are not needed here.
for _name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
    sys.modules.setdefault(_name, types.ModuleType(_name))

import timm  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from timm.models import get_pretrained_cfg  # noqa: E402
from timm.models.nfnet import NormFreeNet, model_cfgs  # noqa: E402

PRETRAINED = [f"dm_nfnet_f{i}" for i in range(7)] + [
    "nfnet_l0",
    "eca_nfnet_l0",
    "eca_nfnet_l1",
    "eca_nfnet_l2",
    "nf_regnet_b1",
    "nf_resnet50",
]
SIZES = (64, 40)  # a power of two and one whose stage maps go odd (40 -> 20 -> 10 -> 5 -> 3)
NUM_CLASSES = 10

# Tiny members of each family: the timm model's own NfCfg with small widths/depths (every stage
# with >= 2 blocks but one, so nf's stacked layout is exercised). Widths are chosen so timm's
# make_divisible rounding of bottleneck and SE widths differs from plain flooring where it can.
TINY: dict[str, tuple[str, dict]] = {
    "dm_nfnet": (
        "dm_nfnet_f0",
        dict(depths=(1, 2, 1, 2), channels=(32, 48, 64, 96), stem_chs=16, group_size=16, num_features=192),
    ),
    "nfnet_l0": (
        "nfnet_l0",
        dict(depths=(1, 2, 1, 2), channels=(32, 48, 80, 96), stem_chs=16, group_size=8, num_features=144),
    ),
    "eca_nfnet": (
        "eca_nfnet_l0",
        dict(depths=(1, 2, 1, 2), channels=(32, 48, 80, 128), stem_chs=16, group_size=8, num_features=192),
    ),
    "nf_regnet": (
        "nf_regnet_b1",
        dict(depths=(2, 3, 1, 2), channels=(24, 40, 56, 88), num_features=1280 * 88 // 440),
    ),
    "nf_resnet": ("nf_resnet50", dict(depths=(1, 2, 1, 2), channels=(32, 64, 96, 128), stem_chs=16)),
}


def tiny_model(family: str) -> tuple[NormFreeNet, dict]:
    base, overrides = TINY[family]
    cfg = dataclasses.replace(model_cfgs[base], **overrides)
    torch.manual_seed(0)
    return NormFreeNet(cfg, num_classes=NUM_CLASSES).eval(), dataclasses.asdict(cfg)


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int) -> None:
    """Move every parameter off its init so the import of each one is checked."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = lambda std: torch.randn(p.shape, generator=g) * std
        if name.endswith("skipinit_gain") or (name.endswith(".gain") and not bool(p.any())):
            p.copy_(1.0 + noise(0.2))  # skip gains and zero-init WS gains (timm's conv3 without skipinit)
        elif name.endswith(".gain") or name.endswith(".bias") or name == "head.fc.weight":  # features dominate logits
            p.add_(noise(0.2))
        else:
            p.add_(noise(0.02))


def write_fixture(family: str, out_dir: Path) -> None:
    model, cfg = tiny_model(family)
    perturb(model, seed=len(family))
    folder = out_dir / family
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    g = torch.Generator().manual_seed(1234)
    data = {}
    with torch.no_grad():
        for px in SIZES:
            x = torch.randn(2, px, px, 3, generator=g)  # NHWC
            data[f"x_{px}"] = x
            data[f"logits_{px}"] = model(x.permute(0, 3, 1, 2).contiguous())
    save_file({k: v.contiguous() for k, v in data.items()}, str(folder / "data.safetensors"))
    meta = dict(
        timm_version=timm.__version__,
        torch_version=torch.__version__,
        base_model=TINY[family][0],
        num_classes=NUM_CLASSES,
        sizes=list(SIZES),
        nf_cfg=cfg,
        num_params=sum(p.numel() for p in model.parameters()),
    )
    (folder / "config.json").write_text(json.dumps(meta, indent=1, default=list) + "\n")
    print(f"{family}: {meta['num_params']} params, logits max {data['logits_64'].abs().max():.4f}")


def print_stats() -> None:
    """timm's parameter counts and pretrained preprocessing for the 13 released NF models."""
    keys = ("input_size", "test_input_size", "crop_pct", "test_crop_pct", "crop_mode", "interpolation", "mean", "std")
    for name in PRETRAINED:
        model = timm.create_model(name, pretrained=False, device="meta")
        cfg = get_pretrained_cfg(name).to_dict()
        stats = {"params": sum(p.numel() for p in model.parameters()), "tag": cfg.get("tag")}
        stats.update({k: cfg.get(k) for k in keys if cfg.get(k) is not None})
        print(name, json.dumps(stats))


def write_full(name: str, out: Path) -> None:
    """A random full-size timm checkpoint (for measuring nf's import time and memory)."""
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters())} params)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parents[1] / "tests/fixtures/timm")
    parser.add_argument("--stats", action="store_true", help="print timm's param counts and preprocessing")
    parser.add_argument("--full", choices=PRETRAINED, help="write a random full-size checkpoint of this model")
    parser.add_argument("--out", type=Path, help="output file for --full")
    args = parser.parse_args()
    if args.full:
        if args.out is None:
            parser.error("--full needs --out=FILE.safetensors")
        write_full(args.full, args.out)
    elif args.stats:
        print_stats()
    else:
        for family in TINY:
            write_fixture(family, args.out_dir)


if __name__ == "__main__":
    main()
