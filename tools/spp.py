"""`nf-spp` from a checkout (`python tools/spp.py ...`): Signal Propagation Plots of registered models at init.

The code is `nf.cli.spp` (installed as the `nf-spp` console script); see its docstring.
"""

import os
import sys

try:
    import nf  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nf.cli.spp import run

if __name__ == "__main__":
    run()
