"""The only place that touches LLaMA-Factory internals: thin adapters from LLaMA-Factory's arguments and hooks to
``p2d_llamafactory.pipeline``.

Each patch replaces one LLaMA-Factory function with a wrapper of the same name that calls the original;
``p2d_llamafactory._autoload`` applies them right after the patched module executes:

- ``llamafactory.hparams.parser``: ``get_train_args``, ``get_infer_args``, ``_verify_model_args`` and the
  argument-class lists (see ``integration.hparams``; the checks of LLaMA-Factory's own arguments in
  ``integration.checks``)
- ``llamafactory.train.tuner``: ``run_sft`` opens the P2D run (``integration.run``: what the points below hand each
  other, and their order) and adds the P2D timing callback (see ``integration.train``)
- ``llamafactory.data.loader``: ``get_dataset`` and ``_get_preprocessed_dataset`` (see ``integration.data``;
  stages I and II from the run's arguments in ``integration.selection`` and ``integration.heads``, the chat frame
  in ``integration.template``)
- ``llamafactory.model.adapter``: ``init_adapter``, stage III (see ``integration.model``)
- ``llamafactory.extras.constants``, ``llamafactory.webui.locales``, ``llamafactory.webui.components.train``,
  ``llamafactory.webui.runner``: LLaMA-Board's P2D method, accordion and run arguments (see ``integration.webui``)
"""

import functools
import logging
from collections.abc import Callable
from types import ModuleType


def wrap(module: ModuleType, name: str, wrapper: Callable) -> None:
    """Replace ``module.name`` by ``wrapper(original, *args, **kwargs)``, once."""
    original = getattr(module, name)
    if getattr(original, "__p2d_original__", None) is not None:
        return

    @functools.wraps(original)
    def patched(*args, **kwargs):
        return wrapper(original, *args, **kwargs)

    patched.__p2d_original__ = original
    setattr(module, name, patched)


class _ToLlamaFactory(logging.Handler):
    """Hand each P2D record to LLaMA-Factory's root logger, so its handlers, including those added later
    (LLaMA-Board's running_log.txt), show P2D messages too."""

    def __init__(self, target: logging.Logger) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        self.target.handle(record)


def share_llamafactory_logging() -> None:
    """Send the ``p2d_llamafactory`` loggers to LLaMA-Factory's handlers so P2D messages show in its logs."""
    from llamafactory.extras import logging as lf_logging

    ours = logging.getLogger("p2d_llamafactory")
    if not any(isinstance(handler, _ToLlamaFactory) for handler in ours.handlers):
        ours.addHandler(_ToLlamaFactory(lf_logging.get_logger("llamafactory")))
        ours.setLevel(logging.INFO)
        ours.propagate = False
