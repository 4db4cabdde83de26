"""`nf-make-arrayrecord` from a checkout (`python tools/make_arrayrecord.py ...`): image folder -> ArrayRecord.

The code is `nf.cli.make_arrayrecord` (installed as the `nf-make-arrayrecord` console script); see its docstring.
"""

import os
import sys

try:
    import nf  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nf.cli.make_arrayrecord import run

if __name__ == "__main__":
    run()
