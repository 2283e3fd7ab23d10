"""``python -m torchcells.bench``: the whole benchmark, or one run of it with ``--child``."""

import sys

from .matrix import main

sys.exit(main())
