"""P2D (From Parameters to Data) for LLaMA-Factory.

Pipeline: heads (identify, score) -> data (probe, select) -> adapter (head-slice training, export)
-> report (timing, AER, plots). Everything that touches LLaMA-Factory internals lives in
``p2d_llamafactory.integration``; this package activates itself through ``p2d_llamafactory.pth``.

Importing this package is cheap on purpose: it must not import torch or llamafactory, because the
``.pth`` file imports it at every interpreter start.
"""

__version__ = "0.1.0"


# The Python API (``p2d_llamafactory.api``, names in its ``__all__``), importable from the package itself. Loaded on
# first use, so that ``import p2d_llamafactory`` (run by the .pth file at every interpreter start) imports no torch.
# Submodule names are left to the import system (``from . import methods`` asks for the attribute first).
def __getattr__(name: str):
    import importlib
    import importlib.util

    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is None:
        api = importlib.import_module(f"{__name__}.api")
        if name in api.__all__:
            return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
