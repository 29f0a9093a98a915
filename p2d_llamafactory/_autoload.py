"""Import hook installed at interpreter start by ``p2d_llamafactory.pth``.

It patches LLaMA-Factory modules right after they execute, before any other module binds their names,
so the stock CLI, torchrun children and the process LLaMA-Board launches all see the P2D extensions.
It runs at every Python start in the environment, so it imports nothing beyond ``os`` and ``sys`` (the switch is
checked first); the first patched module that loads checks every patch point of the installed LLaMA-Factory
(``integration.compat``) before anything is patched.
"""

import os
import sys


DISABLE_ENV = "P2D_LLAMAFACTORY_DISABLE"

# module name -> "package.module:function" applied to the freshly executed module
PATCH_TARGETS = {
    "llamafactory.hparams.parser": "p2d_llamafactory.integration.hparams:patch_parser",
    "llamafactory.model.adapter": "p2d_llamafactory.integration.model:patch_adapter",
    "llamafactory.data.loader": "p2d_llamafactory.integration.data:patch_data_loader",
    "llamafactory.train.tuner": "p2d_llamafactory.integration.train:patch_tuner",
    "llamafactory.extras.constants": "p2d_llamafactory.integration.webui:patch_constants",
    "llamafactory.webui.locales": "p2d_llamafactory.integration.webui:patch_locales",
    "llamafactory.webui.components.train": "p2d_llamafactory.integration.webui:patch_train_tab",
    "llamafactory.webui.runner": "p2d_llamafactory.integration.webui:patch_runner",
}


def enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


def _run_patch(module) -> None:
    import importlib

    from .integration.compat import verify_loaded

    verify_loaded()  # every patch point, once per process: refuses before the first patch
    module_name, func_name = PATCH_TARGETS[module.__name__].split(":")
    getattr(importlib.import_module(module_name), func_name)(module)


class _PatchingLoader:
    """The module's own loader, with the P2D patch applied right after the module executes."""

    def __init__(self, wrapped) -> None:
        self.wrapped = wrapped

    def create_module(self, spec):
        return self.wrapped.create_module(spec)

    def exec_module(self, module) -> None:
        self.wrapped.exec_module(module)
        _run_patch(module)


class P2DFinder:
    """Meta path finder that wraps the loaders of the modules in ``PATCH_TARGETS``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in PATCH_TARGETS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


def install() -> bool:
    """Install the finder once; returns whether the P2D extensions are active in this process."""
    if not enabled():
        return False
    if any(isinstance(finder, P2DFinder) for finder in sys.meta_path):
        return True
    already = [name for name in PATCH_TARGETS if name in sys.modules]
    for name in already:  # imported before the hook existed (e.g. activation by hand): patch in place
        _run_patch(sys.modules[name])
    sys.meta_path.insert(0, P2DFinder())
    return True


ACTIVE = install()
