"""P2D (From Parameters to Data) for LLaMA-Factory.

Pipeline: heads (identify, score) -> data (probe, select) -> adapter (head-slice training, export)
-> report (timing, AER, plots). Everything that touches LLaMA-Factory internals lives in
``p2d_llamafactory.integration``; this package activates itself through ``p2d_llamafactory.pth``.

Importing this package is cheap on purpose: it must not import torch or llamafactory, because the
``.pth`` file imports it at every interpreter start.
"""

__version__ = "0.1.0"

SUPPORTED_LLAMAFACTORY_VERSIONS = ("0.9.5",)
DISABLE_ENV = "P2D_LLAMAFACTORY_DISABLE"
