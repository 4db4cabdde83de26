"""Cloud TPU generations and slice names, for compiling ahead of time on a machine without TPUs.

`GENERATIONS` is the one table of per-chip figures the planner uses; every number is the one
Google's Cloud TPU documentation gives on the generation's system-architecture page (`source`).
Slice names are those Cloud TPU users write (accelerator types): `v3-N`, `v4-N`, `v5p-N` count
TensorCores, `v5e-N`, `v6e-N` count chips. `topology_devices` turns a name into the devices of
that slice as libtpu describes them (`jax.experimental.topologies`), without touching a TPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GiB = 2**30
GB = 10**9


@dataclass(frozen=True)
class TpuGeneration:
    """Per-chip figures of one TPU generation (Cloud TPU docs, `source`)."""

    name: str  # as in slice names: v3, v4, v5p, v5e, v6e
    libtpu_name: str  # topology prefix libtpu accepts
    device_kind: str  # jax Device.device_kind of its devices
    cores_per_chip: int  # TensorCores
    devices_per_chip: int  # JAX devices: 2 on v3 (one per core), 1 where the cores act as one (megacore)
    chips_per_host: int  # chips attached to each TPU VM of a multi-host slice
    host_vcpus: int  # vCPUs of that TPU VM (`HOST_SOURCE`): what decodes and augments the input
    hbm_bytes_per_chip: int
    peak_bf16_flops_per_chip: float
    hbm_bytes_per_second_per_chip: float
    topology_dims: int  # 2D or 3D torus
    name_counts: str  # what N in `<name>-N` counts: "cores" or "chips"
    megacore: bool  # libtpu's "megacore" chip config (one device per chip with two cores)
    source: str


GENERATIONS: dict[str, TpuGeneration] = {
    g.name: g
    for g in (
        # "Peak compute per chip 123 teraflops (bf16); HBM2 capacity and bandwidth 32 GiB, 900 GBps";
        # "Each v3 TPU chip contains two TensorCores"; 4 chips (8 cores) per host (v3-8).
        TpuGeneration(
            "v3", "v3", "TPU v3", 2, 2, 4, 96, 32 * GiB, 123e12, 900e9, 2, "cores", False,
            "https://cloud.google.com/tpu/docs/v3",
        ),
        # "Peak compute per chip 275 teraflops (bf16); HBM2 capacity and bandwidth 32 GiB, 1200 GBps";
        # two TensorCores per chip acting as one device (megacore); 4 chips per host.
        TpuGeneration(
            "v4", "v4", "TPU v4", 2, 1, 4, 240, 32 * GiB, 275e12, 1200e9, 3, "cores", True,
            "https://cloud.google.com/tpu/docs/v4",
        ),
        # "Peak compute per chip (bf16) 459 TFLOPs; HBM2e capacity and bandwidth 95 GiB, 2765 GBps";
        # two TensorCores per chip (megacore); 4 chips per host.
        TpuGeneration(
            "v5p", "v5p", "TPU v5", 2, 1, 4, 208, 95 * GiB, 459e12, 2765e9, 3, "cores", True,
            "https://cloud.google.com/tpu/docs/v5p",
        ),
        # "Peak compute per chip (bf16) 197 TFLOPs; HBM2 capacity and bandwidth 16 GB, 819 GBps";
        # one TensorCore per chip; 4 chips per host in multi-host slices (8 on the single-host v5e-8).
        TpuGeneration(
            "v5e", "v5e", "TPU v5 lite", 1, 1, 4, 112, 16 * GB, 197e12, 819e9, 2, "chips", False,
            "https://cloud.google.com/tpu/docs/v5e",
        ),
        # "Peak compute per chip (bf16) 918 TFLOPs; HBM capacity 32 GB, HBM bandwidth 1640 GBps";
        # one TensorCore per chip; 4 chips per host in multi-host slices (8 on the single-host v6e-8).
        TpuGeneration(
            "v6e", "v6e", "TPU v6 lite", 1, 1, 4, 180, 32 * GB, 918e12, 1640e9, 2, "chips", False,
            "https://cloud.google.com/tpu/docs/v6e",
        ),
    )
}  # fmt: skip

# The TPU VM machine types' vCPUs per host of 4 chips (8 cores on v3): v3-8 96, ct4p-hightpu-4t 240,
# ct5p-hightpu-4t 208, ct5lp-hightpu-4t 112, ct6e-standard-4t 180.
HOST_SOURCE = "https://cloud.google.com/kubernetes-engine/docs/concepts/plan-tpus (TPU machine types)"

# Slice sizes Cloud TPU offers (N as the name counts it), powers of two.
SLICE_SIZES: dict[str, tuple[int, ...]] = {
    "v3": (8, *(2**k for k in range(5, 12))),  # v3-8, v3-32 .. v3-2048
    "v4": tuple(2**k for k in range(3, 13)),  # v4-8 .. v4-4096
    "v5p": tuple(2**k for k in range(3, 14)),  # v5p-8 .. v5p-8192
    "v5e": (1, 4, 8, 16, 32, 64, 128, 256),
    "v6e": (1, 4, 8, 16, 32, 64, 128, 256),
}


@dataclass(frozen=True)
class TpuSlice:
    """One named slice: its generation, chips, JAX devices and libtpu topology string."""

    name: str
    generation: TpuGeneration
    chips: int
    topology: str  # e.g. "v4:2x2x1"

    @property
    def devices(self) -> int:
        return self.chips * self.generation.devices_per_chip

    @property
    def hbm_bytes_per_device(self) -> int:
        return self.generation.hbm_bytes_per_chip // self.generation.devices_per_chip

    @property
    def peak_flops_per_device(self) -> float:
        return self.generation.peak_bf16_flops_per_chip / self.generation.devices_per_chip

    @property
    def hbm_bandwidth_per_device(self) -> float:
        return self.generation.hbm_bytes_per_second_per_chip / self.generation.devices_per_chip

    @property
    def host_vcpus(self) -> int:
        """vCPUs of one of its TPU VMs: a full host's, pro rata for slices of fewer chips (v5e-1,
        v6e-1 run on smaller VMs: 24 and 44 vCPUs, near the 28 and 45 this gives)."""
        g = self.generation
        return g.host_vcpus * min(self.chips, g.chips_per_host) // g.chips_per_host


def valid_names() -> list[str]:
    return [f"{g}-{n}" for g, sizes in SLICE_SIZES.items() for n in sizes]


def chip_grid(chips: int, dims: int) -> tuple[int, ...]:
    """The torus shape Cloud TPU gives `chips` chips: 2D `AxB` with A <= B (v5e-8 is 2x4), 3D as
    2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4, ... (v4/v5p: the smallest dimensions grow first)."""
    k = chips.bit_length() - 1
    if dims == 2:
        return (2 ** (k // 2), 2 ** (k - k // 2))
    if chips == 4:
        return (2, 2, 1)
    base, extra = divmod(k, 3)
    return tuple(2 ** (base + (i >= 3 - extra)) for i in range(3))


def parse_slice(name: str) -> TpuSlice:
    """`v4-8` -> TpuSlice; an unknown name raises ValueError listing the valid ones."""
    gen, _, count = name.strip().lower().partition("-")
    if gen in GENERATIONS and count.isdigit() and int(count) in SLICE_SIZES[gen]:
        g = GENERATIONS[gen]
        n = int(count)
        chips = n // g.cores_per_chip if g.name_counts == "cores" else n
        shape = chip_grid(chips, g.topology_dims)
        return TpuSlice(name, g, chips, f"{g.libtpu_name}:{'x'.join(map(str, shape))}")
    raise ValueError(
        f"--topology={name!r} is not a Cloud TPU slice name; valid: {', '.join(valid_names())} "
        "(v3/v4/v5p count TensorCores, v5e/v6e count chips)"
    )


def topology_devices(tpu: TpuSlice, slices: int = 1) -> list:
    """The JAX devices of `slices` copies of the slice, as libtpu describes them (no TPU needed:
    they can compile, not run). Needs the `libtpu` package (`pip install 'nf[tpu]'`)."""
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise RuntimeError("Planning for a TPU needs libtpu: pip install -e '.[tpu]' (or pip install libtpu)") from e
    # Compiling needs no TPU and no exclusive hold on one: let a process that does hold libtpu's
    # lock (a run on this host, or a concurrent test) coexist with the planner.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    g = tpu.generation
    kwargs = {"chip_config_name": "megacore"} if g.megacore else {}
    if slices > 1:
        kwargs["num_slices"] = slices
    hosts = (2, 2, 1) if g.topology_dims == 3 else (2, 2)
    if tpu.chips >= g.chips_per_host:  # libtpu's default host shape, stated for multi-slice too
        kwargs["chips_per_host_bounds"] = hosts if g.topology_dims == 3 else (*hosts, 1)
    devices = topologies.get_topology_desc(tpu.topology, "tpu", **kwargs).devices
    expected = tpu.devices * slices
    if len(devices) != expected:
        raise RuntimeError(f"libtpu described {len(devices)} devices for {tpu.topology} x{slices}, expected {expected}")
    return list(devices)
