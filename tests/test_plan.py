"""nf-plan: the trainer's own steps compiled for named TPU slices by libtpu on this CPU machine
(`nf.plan`), the slice names and generation table, the shared (multi-slice) mesh, and that an
installed libtpu does not delay CPU runs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from nf.cli.common import load_config
from nf.data import host_rate
from nf.plan import compiled as xla
from nf.plan.planner import _with, plan
from nf.plan.tpus import GENERATIONS, SLICE_SIZES, parse_slice, topology_devices
from nf.train.sharding import make_mesh

REPO = Path(__file__).resolve().parents[1]
libtpu = pytest.importorskip("libtpu", reason="nf-plan compiles with libtpu: pip install -e '.[tpu]'")

# The quickstart model (nf_resnet26, one block per stage, widths 64..512) at 32 px, batch 16:
# each TPU compile takes seconds.
SMALL_RUN = {"batch_size": 16, "data.image_size": 32}


# A tinier backbone for the other plans: two stages of widths 8 and 16, 16 px.
TINY = {"model.depths": (1, 2), "model.widths": (8, 16), "model.strides": (1, 2), "model.stem_width": 8}
TINY_RUN = {**TINY, "data.image_size": 16}


def quickstart(overrides: dict | None = None):
    return _with(load_config(str(REPO / "configs" / "quickstart.py")), {**SMALL_RUN, **(overrides or {})})


# ------------------------------------------------------------------ names and the generation table


@pytest.mark.parametrize(
    "name,topology,chips,devices",
    [
        ("v3-8", "v3:2x2", 4, 8),  # 2 TensorCores per chip, each a JAX device
        ("v3-32", "v3:4x4", 16, 32),
        ("v4-8", "v4:2x2x1", 4, 4),  # megacore: one device per chip
        ("v4-16", "v4:2x2x2", 8, 8),
        ("v4-128", "v4:4x4x4", 64, 64),
        ("v5p-64", "v5p:2x4x4", 32, 32),
        ("v5e-1", "v5e:1x1", 1, 1),
        ("v5e-8", "v5e:2x4", 8, 8),
        ("v6e-256", "v6e:16x16", 256, 256),
    ],
)
def test_slice_names_as_cloud_tpu_writes_them(name, topology, chips, devices):
    """v3/v4/v5p-N count TensorCores, v5e/v6e-N chips; the torus shapes are Cloud TPU's."""
    tpu = parse_slice(name)
    assert (tpu.topology, tpu.chips, tpu.devices) == (topology, chips, devices)
    assert math.prod(int(d) for d in topology.split(":")[1].split("x")) == chips


def test_unknown_slice_name_lists_the_valid_ones():
    for bad in ("v4-6", "v5e-2", "v7-8", "tpu", "v3-16"):
        with pytest.raises(ValueError, match=r"not a Cloud TPU slice name; valid: v3-8, v3-32.*v6e-256") as e:
            parse_slice(bad)
        assert repr(bad) in str(e.value)


def test_generation_table_has_a_source_for_every_number():
    assert set(GENERATIONS) == set(SLICE_SIZES) == {"v3", "v4", "v5p", "v5e", "v6e"}
    for g in GENERATIONS.values():
        assert g.source.startswith("https://cloud.google.com/tpu/docs/")
        assert g.source.endswith(g.name)
        assert g.cores_per_chip % g.devices_per_chip == 0
    # per-device figures: a v3 core has half a chip (Cloud TPU docs: 16 GiB HBM per core)
    v3 = parse_slice("v3-32")
    assert v3.hbm_bytes_per_device == 16 * 2**30
    assert v3.peak_flops_per_device == pytest.approx(61.5e12)


@pytest.mark.parametrize("name", ["v3-32", "v4-16", "v5p-8", "v5e-8", "v6e-4"])
def test_libtpu_describes_the_named_slice(name):
    tpu = parse_slice(name)
    devices = topology_devices(tpu)
    assert len(devices) == tpu.devices
    assert {d.device_kind for d in devices} == {tpu.generation.device_kind}
    hosts = len({d.process_index for d in devices})
    assert hosts == max(1, tpu.chips // tpu.generation.chips_per_host)


# ------------------------------------------------------------------ collectives in HLO text


def test_collectives_are_read_from_hlo_text():
    hlo = "\n".join(
        [
            "  %all-reduce.1 = (f32[512,10]{0,1:T(8,128)}, bf16[64]{0}) all-reduce(%a, %b), channel_id=1",
            "  %ag = bf16[8,256]{1,0} all-gather-start(bf16[2,256]{1,0} %p), dimensions={0}",  # result only
            "  %ags = (f32[2,128]{1,0}, f32[8,128]{1,0}) all-gather-start(%q), dimensions={0}",
            "  %agd = f32[8,128]{1,0} all-gather-done(%ags)",
            "  ROOT %rs = f32[4]{0} reduce-scatter(f32[16]{0} %r), dimensions={0}",
            "  %x = f32[4]{0} add(%all-reduce.1, %y)",  # an operand named like a collective
        ]
    )
    found = xla.collectives(hlo)
    assert found == {
        "all-reduce": {"count": 1, "bytes": 512 * 10 * 4 + 64 * 2},
        "all-gather": {"count": 2, "bytes": 8 * 256 * 2 + 8 * 128 * 4},
        "reduce-scatter": {"count": 1, "bytes": 16},
    }


# ------------------------------------------------------------------ plans of the trainer's step


def _padded_upper_bound(shape: tuple[int, ...], itemsize: int) -> int:
    """An upper bound of a TPU buffer: any two dimensions tiled by (8, 128) elements, the largest
    tile of 32-bit types, every other dimension as is (scalars as a 1x1 array)."""
    dims = list(shape) or [1]
    dims = dims if len(dims) > 1 else [1, *dims]
    best = 0
    for i in range(len(dims)):
        for j in range(len(dims)):
            if i != j:
                rest = math.prod(d for k, d in enumerate(dims) if k not in (i, j))
                best = max(best, rest * -(-dims[i] // 8) * 8 * -(-dims[j] // 128) * 128)
    return best * itemsize


@pytest.mark.parametrize("topology", ["v5e-4", "v4-8"])
def test_plan_of_the_quickstart_model(topology):
    """The trainer's train step for the slice: its arguments are the train state (params, momentum,
    EMA, step, model state) and the batch, per device, up to TPU tiling; data parallel, one
    gradient all-reduce carries the parameters' gradients; the roofline figures follow
    from the cost and the generation's peak figures."""
    config = quickstart()
    result = plan(config, topology)
    tpu = parse_slice(topology)
    assert (result["topology"], result["devices"], result["device_kind"]) == (
        topology,
        4,
        tpu.generation.device_kind,
    )
    assert result["mesh"] == {"data": 4, "fsdp": 1}
    assert result["fits"] and result["suggestions"] == []

    from nf.tasks import get_task
    from nf.train.trainer import setup_training

    mesh = make_mesh(config.mesh, topology_devices(tpu))
    setup = setup_training(config, get_task(config, 1000), mesh, abstract=True)
    leaves = jax.tree.leaves(setup.state)
    state_bytes = sum(x.size * x.dtype.itemsize for x in leaves)  # replicated: every device holds it
    per_device = config.batch_size // 4
    batch = [((per_device, 32, 32, 3), 1), ((per_device,), 4)]  # images uint8 (as nf-train feeds), labels int32
    batch_bytes = sum(math.prod(s) * n for s, n in batch)
    h = result["hbm_bytes"]
    assert result["state_bytes_per_device"] == state_bytes
    assert state_bytes + batch_bytes <= h["argument"]
    upper = sum(_padded_upper_bound(x.shape, x.dtype.itemsize) for x in leaves)
    upper += sum(_padded_upper_bound(s, n) for s, n in batch) + 4 * 4096  # the guard's counters
    assert h["argument"] <= upper
    # The state is donated: its outputs reuse the argument buffers.
    params_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(setup.state["params"]))
    assert h["alias"] >= state_bytes - 4096
    assert h["total"] == h["argument"] + h["output"] - h["alias"] + h["temp"] + h["code"]
    assert h["capacity"] == tpu.hbm_bytes_per_device
    # every gradient crosses the devices once (XLA may derive a few small ones, e.g. WS gains,
    # after the all-reduce from reduced values), plus the loss and metrics
    assert 0.95 * params_bytes <= result["collectives"]["all-reduce"]["bytes"] <= params_bytes + 4096
    assert "all-gather" not in result["collectives"]  # nothing is sharded over fsdp
    step = max(
        result["flops_per_device"] / tpu.peak_flops_per_device,
        result["bytes_accessed_per_device"] / tpu.hbm_bandwidth_per_device,
    )
    assert result["roofline_step_seconds"] == pytest.approx(step)
    assert result["roofline_images_per_second_per_chip"] == pytest.approx(config.batch_size / 4 / step)
    assert result["host_images_per_second_needed"] == pytest.approx(config.batch_size / step)  # one host
    # The host's cores at the measured per-core rate of the config's augmentation (nf.data.host_rate).
    host, rate = result["host_input"], host_rate.rate_for(config.data)
    assert host["images_per_core_second"] == rate.images_per_core_second
    assert host["cores_needed"] == pytest.approx(config.batch_size / step / rate.images_per_core_second)
    assert host["host_vcpus"] == {"v5e-4": 112, "v4-8": 240}[topology]  # one 4-chip TPU VM
    assert host["hosts_can_feed"] == (host["cores_needed"] <= host["host_vcpus"])
    json.dumps(result)  # plain data


@pytest.mark.slow  # three plans, each compiled twice (as run, and unrolled for the cost)
def test_plan_flops_count_every_block_of_a_scanned_stage():
    """XLA counts a loop body once: the plan costs the step with its scans unrolled, so a deeper
    (scanned) stage costs more in proportion to its blocks."""
    shallow, deep, base = (plan(quickstart({**TINY_RUN, "model.depths": (1, d)}), "v5e-4") for d in (9, 17, 1))
    per_block = (shallow["flops_per_device"] - base["flops_per_device"]) / 8
    assert per_block > 0
    assert deep["flops_per_device"] - shallow["flops_per_device"] == pytest.approx(8 * per_block, rel=0.02)


@pytest.mark.parametrize("accum_steps", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_per_block_cost_matches_the_unrolled_compile(accum_steps):
    """`cost="per_block"`: the step's own compile plus each scanned stage's block compiled alone,
    (trips - 1) times per micro-batch, plus one micro-batch compiled alone for the accumulation
    loop's other trips, gives the FLOPs and bytes of the compile with every scan unrolled."""
    deep = quickstart({**TINY_RUN, "model.depths": (1, 9), "batch_size": 32, "optimizer.accum_steps": accum_steps})
    unrolled, per_block = (plan(deep, "v5e-4", search=False, cost=c) for c in ("unrolled", "per_block"))
    assert per_block["cost_method"] == "per_block" and unrolled["cost_method"] == "unrolled"
    assert per_block["flops_per_device"] == pytest.approx(unrolled["flops_per_device"], rel=0.02)
    assert per_block["bytes_accessed_per_device"] == pytest.approx(unrolled["bytes_accessed_per_device"], rel=0.1)
    assert per_block["hbm_bytes"] == unrolled["hbm_bytes"]  # memory: the step nf-train runs, either way


@pytest.mark.slow  # five plans of a tiny model: ~40 s
def test_rematerialized_blocks_cost_their_recomputation(monkeypatch):
    """With `model.remat=block` a block's forward pass runs again in the backward loop, where XLA
    cannot merge it into the forward loop's. The rolled step's own counts (each loop body once) at
    stage depths 1, 9 and 17 give one block's true cost: depth 9 adds one body and 8 blocks'
    parameter-sized work, which depth 17 doubles. Both cost methods add that per extra trip."""
    import nf.plan.planner as planner

    def rolled(depth):  # the step as XLA counts it: the planner's loop correction switched off
        with monkeypatch.context() as m:
            m.setattr(planner, "_has_loops", lambda hlo: False)
            config = quickstart({**TINY_RUN, "model.depths": (1, depth), "model.remat": "block"})
            return plan(config, "v5e-1", search=False, cost="per_block")["flops_per_device"]

    r1, r9, r17 = rolled(1), rolled(9), rolled(17)
    block = r9 - r1 - (r17 - r9)  # one body, less the parameter-sized work of 8 blocks
    deep = quickstart({**TINY_RUN, "model.depths": (1, 9), "model.remat": "block"})
    for cost in ("per_block", "unrolled"):
        result = plan(deep, "v5e-1", search=False, cost=cost)
        assert result["cost_method"] == cost
        assert (result["flops_per_device"] - r9) / 7 == pytest.approx(block, rel=0.01), cost


@pytest.mark.slow  # two compiles with their cost compiles: ~30 s idle, longer loaded
def test_accumulated_step_costs_every_micro_batch():
    """With `optimizer.accum_steps=4` the step does the same arithmetic over the same images as
    without (plus the sums of the micro-batch gradients): its FLOPs count all 4 micro-batches, not
    the accumulation loop's body once."""
    flops = {
        a: plan(quickstart({**TINY_RUN, "batch_size": 32, "optimizer.accum_steps": a}), "v5e-1", search=False)[
            "flops_per_device"
        ]
        for a in (1, 4)
    }
    assert flops[1] <= flops[4] < 1.15 * flops[1]


def test_a_config_that_cannot_fit_gets_a_compiled_suggestion_that_fits():
    """192 images of 1024 px on one v5e chip: the step's activations exceed the chip's HBM. Every
    suggestion was compiled and fits, cheapest bound first; planning the first again says so.
    (One device: no FSDP to try; accumulation and remat, one compile each.)"""
    big = {**TINY, "model.widths": (64, 128), "model.stem_width": 32, "batch_size": 192, "data.image_size": 1024}
    result = plan(quickstart(big), "v5e-1", max_compiles=2)
    assert not result["fits"] and result["margin_bytes"] < 0
    assert result["hbm_bytes"]["total"] > result["hbm_bytes"]["capacity"]
    suggestions = result["suggestions"]
    assert suggestions and all(s["margin_bytes"] >= 0 for s in suggestions)
    bounds = [s["roofline_step_seconds"] for s in suggestions]
    assert bounds == sorted(bounds)
    first = suggestions[0]
    assert set(first["set"]) <= {"optimizer.accum_steps", "model.remat"}
    assert first["flags"] == " ".join(f"--config.{k}={v}" for k, v in first["set"].items())
    again = plan(quickstart({**big, **first["set"]}), "v5e-1", search=False)
    assert again["fits"] and again["hbm_bytes"]["total"] == first["hbm_total_bytes"]


@pytest.mark.slow  # 29 s on an idle 2-core CPU; the default run keeps the planning tests the issue names
def test_fsdp_shards_the_state_of_a_model_too_big_to_replicate():
    """A 1.3B-parameter classifier head (512 features x 2.5M classes) on v5e-4: params, momentum
    and EMA alone exceed a v5e chip's 16 GB replicated; with FSDP over 4 devices each holds a
    quarter, and the step gathers parameters and scatters gradients."""
    big = {**TINY, "model.widths": (8, 512), "batch_size": 8, "mesh.fsdp": 4, "mesh.data": 1}
    result = plan(quickstart(big), "v5e-4", num_classes=2_500_000, search=False)
    params = (512 + 1) * 2_500_000 * 4
    assert 3 * params / 4 <= result["state_bytes_per_device"] < 3 * params / 4 * 1.01
    assert result["fits"]
    assert {"all-gather", "reduce-scatter"} & set(result["collectives"])


# ------------------------------------------------------------------ one mesh for trainer and plan


def test_trainer_and_plan_build_the_same_multislice_mesh(monkeypatch):
    """On a real 2-slice v5e-8 run `nf-train` calls `make_mesh(config.mesh)` with the run's devices;
    the plan calls it with libtpu's description of the same devices: the same mesh, the data axis
    across the slices outermost, fsdp inside a slice."""
    tpu = parse_slice("v5e-8")
    devices = topology_devices(tpu, slices=2)
    axes = {"data": -1, "fsdp": 2}
    planned = make_mesh(axes, devices)
    monkeypatch.setattr(jax, "devices", lambda *a: devices)  # what a multi-slice run's jax.devices() gives
    trained = make_mesh(axes)
    assert trained == planned
    assert dict(planned.shape) == {"data": 8, "fsdp": 2}
    slice_of = np.vectorize(lambda d: d.slice_index)(planned.devices)
    np.testing.assert_array_equal(slice_of[:4], 0)
    np.testing.assert_array_equal(slice_of[4:], 1)
    with pytest.raises(ValueError, match=r"data axis \(1\) must be a multiple of the slice count"):
        make_mesh({"data": 1, "fsdp": 16}, devices)


def test_plan_of_two_slices():
    result = plan(quickstart(TINY_RUN), "v5e-4", slices=2)
    assert (result["slices"], result["devices"], result["chips"], result["hosts"]) == (2, 8, 8, 2)
    assert result["mesh"] == {"data": 8, "fsdp": 1}


def test_single_slice_mesh_is_unchanged_on_cpu():
    mesh = make_mesh({"data": -1, "fsdp": 1})
    assert mesh.devices.ravel().tolist() == jax.devices()


# ------------------------------------------------------------------ the command and the CPU


def _env_without_platforms() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["PYTHONPATH"] = str(REPO)
    return env


def test_libtpu_installed_does_not_delay_cpu_runs():
    """With libtpu installed and no TPU, JAX's TPU backend gives up at once: `import nf` and the
    first device come up on the CPU (JAX sets TPU_SKIP_MDS_QUERY when no TPU is on the PCI bus)."""
    code = "import time; t = time.time(); import nf, jax; print(jax.default_backend(), time.time() - t)"
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=_env_without_platforms(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    backend, _ = out.stdout.split()
    assert backend == "cpu"
    assert time.perf_counter() - start < 60


def test_nf_plan_command_json_and_exit_status(tmp_path):
    cmd = [sys.executable, "-m", "nf.cli.plan", f"--config={REPO / 'configs' / 'quickstart.py'}"]
    small = [f"--config.{k}={v}" for k, v in SMALL_RUN.items()]
    small += ["--config.model.widths=(8,8,16,16)", "--config.model.stem_width=8"]
    out = subprocess.run(
        [*cmd, "--topology=v5e-4", "--json", *small], env=_env_without_platforms(), capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    for key in (
        "topology", "devices", "device_kind", "fits", "hbm_bytes", "flops_per_device", "bytes_accessed_per_device",
        "collectives", "roofline_step_seconds", "roofline_images_per_second_per_chip", "suggestions",
    ):  # fmt: skip
        assert key in result
    assert set(result["hbm_bytes"]) == {"argument", "temp", "output", "alias", "code", "total", "capacity"}
    bad = subprocess.run([*cmd, "--topology=v4-3"], env=_env_without_platforms(), capture_output=True, text=True)
    assert bad.returncode == 2 and "valid: v3-8" in bad.stderr
