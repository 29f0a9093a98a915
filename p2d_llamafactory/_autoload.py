"""Import hook installed at interpreter start by ``p2d_llamafactory.pth``.

It patches LLaMA-Factory modules right after they execute, before any other module binds their names,
so the stock CLI, torchrun children and the process LLaMA-Board launches all see the P2D extensions.
It imports neither torch nor llamafactory itself; nothing happens until LLaMA-Factory is imported.
"""

import importlib.abc
import importlib.machinery
import os
import sys
import warnings
from importlib import metadata

from . import DISABLE_ENV, SUPPORTED_LLAMAFACTORY_VERSIONS


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


def _enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("1", "true", "yes", "on")


def _supported_version() -> str | None:
    """Return the installed llamafactory version if it is supported, else warn and return None."""
    try:
        version = metadata.version("llamafactory")
    except metadata.PackageNotFoundError:
        return None
    if version not in SUPPORTED_LLAMAFACTORY_VERSIONS:
        warnings.warn(
            f"p2d-llamafactory supports llamafactory {', '.join(SUPPORTED_LLAMAFACTORY_VERSIONS)}, found {version}; "
            "the P2D extensions stay inactive.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    return version


def _run_patch(module) -> None:
    target = PATCH_TARGETS[module.__name__]
    module_name, func_name = target.split(":")
    patch = getattr(importlib.import_module(module_name), func_name)
    patch(module)


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, wrapped: importlib.abc.Loader) -> None:
        self.wrapped = wrapped

    def create_module(self, spec):
        return self.wrapped.create_module(spec)

    def exec_module(self, module) -> None:
        self.wrapped.exec_module(module)
        _run_patch(module)


class P2DFinder(importlib.abc.MetaPathFinder):
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
    if not _enabled():
        return False
    if any(isinstance(finder, P2DFinder) for finder in sys.meta_path):
        return True
    if _supported_version() is None:
        return False
    already = [name for name in PATCH_TARGETS if name in sys.modules]
    for name in already:  # imported before the hook existed (e.g. activation by hand): patch in place
        _run_patch(sys.modules[name])
    sys.meta_path.insert(0, P2DFinder())
    return True


ACTIVE = install()
