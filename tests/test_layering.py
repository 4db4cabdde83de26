"""The package's layers only point down.

The subpackages of `nf`, lowest first (`LAYERS`); a module imports its own layer and the layers
below it, never one above:

    layers < signal < models < heads < data < tasks < inference < pretrained < train < plan < configs
           < experiments < cli

(`nf/__init__.py` holds only the version; `nf.configs` is the repository's configs/ folder, whose
configs use nf.train.recipes.) A package's `__main__` (`python -m nf.train`, the `nf-train` script)
is a command line like those of nf.cli: it ranks with them at the top, and nothing imports it.

Every import counts, also those inside functions and under `TYPE_CHECKING`, and the module graph
has no cycle: importing `nf.x.y` also runs the package `nf.x`'s `__init__`, so that counts as an
import of `nf.x` too (except from inside `nf.x`).
No module imports another's private (`_name`) names.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "nf"
LAYERS = (
    "layers",
    "signal",
    "models",
    "heads",
    "data",
    "tasks",
    "inference",
    "pretrained",
    "train",
    "plan",
    "configs",
    "experiments",
    "cli",
)

Graph = dict[str, list[tuple[str, int]]]  # module -> [(imported module, line)]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imported_modules(source: str, name: str, is_package: bool = False) -> list[tuple[str, int]]:
    """`(module, line)` of every `nf` import in the source of module `name`, relative ones resolved;
    `from nf.x import y` names `nf.x.y` when that is a module, else `nf.x`."""
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if _is_module(sub) else base, node.lineno))
    return [(m, line) for m, line in found if m == "nf" or m.startswith("nf.")]


def import_graph() -> Graph:
    return {
        module_name(p): imported_modules(p.read_text(), module_name(p), p.name == "__init__.py")
        for p in sorted(PACKAGE.rglob("*.py"))
    }


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: nf/__init__.py


def rank(module: str) -> int:
    layer = layer_of(module)
    if layer is None:
        return -1
    if module.endswith(".__main__"):
        return len(LAYERS) - 1  # a command line, as nf.cli's
    assert layer in LAYERS, f"{module}: layer {layer!r} is not in LAYERS {LAYERS}; place it in the order"
    return LAYERS.index(layer)


def upward_imports(graph: Graph) -> list[str]:
    return [
        f"{module} (line {line}) imports {target}: {layer_of(target)} is above {layer_of(module)}"
        for module, targets in graph.items()
        for target, line in targets
        if rank(target) > rank(module)
    ]


def _runs(module: str, target: str) -> set[str]:
    """What importing `target` from `module` executes: it and its packages outside `module`'s own."""
    parts = target.split(".")
    chain = {".".join(parts[:i]) for i in range(2, len(parts) + 1)}
    return {m for m in chain if not (module + ".").startswith(m + ".")} - {module}


def cycles(graph: Graph) -> list[list[str]]:
    """The cycles of the module graph a depth-first search meets (one per back edge)."""
    edges = {m: sorted(set().union(*(_runs(m, t) for t, _ in targets)) & set(graph)) for m, targets in graph.items()}
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []
    found = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in edges[m]:
            if state.get(t) == 1:
                found.append([*stack[stack.index(t) :], t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in edges:
        if m not in state:
            visit(m)
    return found


def test_every_subpackage_is_placed():
    layers = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert layers == set(LAYERS), f"subpackages {sorted(layers)} vs LAYERS {LAYERS}"
    assert [p.name for p in PACKAGE.glob("*.py")] == ["__init__.py"]


def test_no_import_points_up():
    assert upward_imports(import_graph()) == []


def test_no_import_cycle():
    found = cycles(import_graph())
    assert found == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def private_imports(source: str) -> list[str]:
    """`module.name` of each private name (`_x`) imported from an `nf` module."""
    return [
        f"{node.module}.{alias.name}"
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nf")
        for alias in node.names
        if alias.name.startswith("_") and not alias.name.startswith("__")
    ]


def test_no_private_name_is_imported_across_modules():
    found = {module_name(p): private_imports(p.read_text()) for p in sorted(PACKAGE.rglob("*.py"))}
    assert {m: names for m, names in found.items() if names} == {}
    assert private_imports("from nf.data.scenes import SIZE, _glyph\n") == ["nf.data.scenes._glyph"]


def test_the_checks_find_what_they_look_for():
    """An upward import inside a function, and a cycle through a package `__init__`, are reported."""
    source = "import jax\n\ndef f():\n    from nf.train import trainer\n"
    assert imported_modules(source, "nf.layers.a") == [("nf.train.trainer", 4)]
    graph = {"nf.layers.a": [("nf.train.trainer", 4)], "nf.train": [("nf.layers.a", 1)], "nf.train.trainer": []}
    assert upward_imports(graph) == ["nf.layers.a (line 4) imports nf.train.trainer: train is above layers"]
    assert cycles(graph) == [["nf.layers.a", "nf.train", "nf.layers.a"]]
    relative = imported_modules("from ..models import registry\nfrom . import x\n", "nf.tasks.base")
    assert relative == [("nf.models.registry", 1), ("nf.tasks", 2)]


@pytest.mark.parametrize("module", ["nf.data.card", "nf.inference.checkpoint", "nf.models.pure"])
def test_shared_modules_sit_below_their_users(module):
    """The card, the checkpoint layout and the NNX split/merge import nothing of train or inference's users."""
    assert not [t for t, _ in import_graph()[module] if rank(t) > rank(module)]
