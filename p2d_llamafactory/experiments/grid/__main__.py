"""``python -m p2d_llamafactory.experiments.grid``: the same as ``p2d-grid``."""

import sys

from .cli import main


sys.exit(main())
