"""``python -m p2d_llamafactory.experiments.sweep``: the same as ``p2d-sweep``."""

import sys

from .cli import main


sys.exit(main())
