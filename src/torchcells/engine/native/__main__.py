"""``python -m torchcells.engine.native``: build (or find) the cached native runtime."""

import sys

from .build import main

sys.exit(main())
