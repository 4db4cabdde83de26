"""pyproject.toml's dependencies, without the network: the TensorFlow package each platform gets,
the caps of 0.x libraries and the tested versions in .ci/constraints.txt. Whether the wheels exist
on the package index is checked by `.ci/resolve-platforms` (tools/resolve_platforms.py), which
needs PyPI and is its own CI target."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
REQUIREMENTS = [Requirement(r) for r in PROJECT["dependencies"]]


def _resolve_platforms():
    spec = importlib.util.spec_from_file_location("resolve_platforms", REPO / "tools" / "resolve_platforms.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _selected(markers: dict[str, str]) -> set[str]:
    return {r.name for r in REQUIREMENTS if r.marker is None or r.marker.evaluate(markers)}


@pytest.mark.parametrize(
    ("target", "python", "tensorflow"),
    [
        ("linux-x86_64", "3.11", "tensorflow-cpu"),
        ("linux-x86_64", "3.13", "tensorflow-cpu"),
        ("macos-arm64", "3.11", "tensorflow"),  # tensorflow-cpu has no macOS arm64 wheels
        ("macos-arm64", "3.12", "tensorflow"),
    ],
)
def test_each_platform_gets_one_tensorflow(target, python, tensorflow):
    tool = _resolve_platforms()
    markers = tool.markers_for(tool.TARGETS[target][2], python)
    selected = _selected(markers)
    assert selected & {"tensorflow", "tensorflow-cpu"} == {tensorflow}
    assert {"clu", "jax", "flax", "orbax-checkpoint", "grain"} <= selected


def test_other_platforms_get_the_full_tensorflow():
    linux_arm = dict(sys_platform="linux", platform_system="Linux", platform_machine="aarch64", os_name="posix")
    assert _selected(linux_arm) & {"tensorflow", "tensorflow-cpu"} == {"tensorflow"}


def test_distribution_name_is_not_the_import_name_taken_on_pypi():
    assert PROJECT["name"] == "nfnets-flax"  # `nf` on PyPI is another project; the import name stays nf
    assert "nf" in PROJECT["name"] and re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", PROJECT["name"])


def test_zero_x_libraries_are_capped_below_their_next_minor():
    checked = []
    for req in REQUIREMENTS:
        try:
            installed = Version(importlib.metadata.version(req.name))
        except importlib.metadata.PackageNotFoundError:
            continue  # another platform's package
        if installed.major != 0:
            continue
        caps = [Version(s.version) for s in req.specifier if s.operator == "<"]
        next_minor = Version(f"0.{installed.minor + 1}")
        assert caps and min(caps) <= next_minor, f"{req}: a 0.x library needs '<{next_minor}'"
        checked.append(req.name)
    assert {"jax", "flax", "optax", "orbax-checkpoint", "grain", "clu"} <= set(checked)


def test_constraints_pin_versions_pyproject_allows():
    pins = {}
    for line in (REPO / ".ci" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = Version(version)
    linux = _resolve_platforms().markers_for(_resolve_platforms().TARGETS["linux-x86_64"][2], "3.11")
    extras = [Requirement(r) for r in PROJECT["optional-dependencies"]["test"]]
    for req in REQUIREMENTS + extras:
        if req.marker is not None and not req.marker.evaluate(linux):
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        assert name in pins, f".ci/constraints.txt pins no version of {req.name}: run .ci/freeze-constraints"
        assert req.specifier.contains(pins[name]), f".ci/constraints.txt pins {name}=={pins[name]}, outside {req}"
