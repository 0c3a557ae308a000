"""FiftyOne plugin @sam31/video: segment and track objects in videos with SAM 3.1.

FiftyOne imports this file and calls ``register``. The operators (and fiftyone itself)
are imported only then, so importing this package has no cost or side effect beyond
making ``sam_backend`` importable when the plugin folder is used without ``pip install``.
"""

import os
import sys

try:
    import sam_backend  # noqa: F401  (installed with `pip install -e .`)
except ImportError:  # plugin folder used as is: import the package that ships beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def register(p):
    from .operators import OPERATORS

    for operator in OPERATORS:
        p.register(operator)
