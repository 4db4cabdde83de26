"""`nf-model-stats` from a checkout (`python tools/model_stats.py ...`): parameter and MAC counts of registered models.

The code is `nf.cli.model_stats` (installed as the `nf-model-stats` console script); see its docstring.
"""

import os
import sys

try:
    import nf  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nf.cli.model_stats import run

if __name__ == "__main__":
    run()
