"""Write a DeepMind-format NFNet parameter file of the real size, with random weights.

For measuring `nf-import`'s time and memory on a file shaped like the released `F0_haiku.npz`
(no download: the released files are not reachable here). The file is what the reference's
release holds: a dill pickle of Haiku `FlatMapping` dicts `{module_name: {param_name: array}}`,
float32 arrays pickled by dill's `_create_array`.

Runs in a separate virtualenv with numpy and dill (never a dependency of nf), e.g. the timm peer
environment: `python3 -m venv peer && peer/bin/pip install numpy dill`, then

    peer/bin/python tools/make_deepmind_params.py \
        --shapes=tests/fixtures/deepmind/deepmind_nfnet_f0_param_shapes.json --out=/tmp/F0_haiku.npz

`--shapes` is a `{module_name: {param_name: shape}}` JSON (the F0 one is
`tests/fixtures/deepmind/deepmind_nfnet_f0_param_shapes.json`). Haiku is not needed: a stand-in
`FlatMapping` registered under Haiku's module name pickles the same way (a REDUCE of the class on
a dict).
"""

from __future__ import annotations

import argparse
import json
import sys
import types

import dill
import numpy as np


def _haiku_flat_mapping() -> type:
    module = types.ModuleType("haiku._src.data_structures")

    class FlatMapping(dict):
        def __reduce__(self):
            return (FlatMapping, (dict(self),))

    FlatMapping.__module__, FlatMapping.__qualname__ = module.__name__, "FlatMapping"
    module.FlatMapping = FlatMapping
    for parent in ("haiku", "haiku._src"):  # pickle imports the module by its dotted name
        sys.modules.setdefault(parent, types.ModuleType(parent))
    sys.modules[module.__name__] = module
    return FlatMapping


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", required=True, help="{module: {param: shape}} JSON")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with open(args.shapes) as f:
        shapes = json.load(f)
    flat_mapping = _haiku_flat_mapping()
    rng = np.random.default_rng(args.seed)
    tree = flat_mapping(
        {
            module: flat_mapping(
                {name: np.asarray(0.02 * rng.standard_normal(shape, np.float32)) for name, shape in p.items()}
            )
            for module, p in shapes.items()
        }
    )
    with open(args.out, "wb") as f:
        dill.dump(tree, f, protocol=4, byref=True)  # the class by name, as for the real haiku module
    n = sum(int(np.prod(s)) for p in shapes.values() for s in p.values())
    print(f"wrote {args.out}: {len(shapes)} modules, {n:,} parameters")


if __name__ == "__main__":
    main()
