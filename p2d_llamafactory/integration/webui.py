"""Patches of LLaMA-Board (``llamafactory.webui``, ``llamafactory.extras.constants``): P2D in the web UI."""

from types import ModuleType
from typing import Any

from . import wrap


BOARD_METHODS = ("p2d_heads", "lofit")  # HEAD_FINETUNING_TYPES, without importing the method table here


def patch_constants(module: ModuleType) -> None:
    """METHODS / PEFT_METHODS: offer ``p2d_heads`` and ``lofit``, whose runs save PEFT adapters (listed, loaded as
    such)."""
    for method in BOARD_METHODS:
        if method not in module.METHODS:
            module.METHODS.append(method)  # in place: LLaMA-Board's modules share these objects
        module.PEFT_METHODS.add(method)


def patch_locales(module: ModuleType) -> None:
    """LOCALES / ALERTS: the P2D accordion's labels and messages in every language."""
    from ..board.locales import ALERTS, LOCALES

    module.LOCALES.update(LOCALES)
    module.ALERTS.update(ALERTS)


def create_train_tab(original, engine) -> dict[str, Any]:
    """Add the P2D accordion after the Train tab's other accordions, with its values among the run inputs."""
    from ..board.accordion import create_p2d_tab

    p2d_tab, p2d_elems = create_p2d_tab()
    inputs = [elem for name, elem in p2d_elems.items() if name != "p2d_tab"]
    manager = engine.manager
    get_base_elems = manager.get_base_elems
    manager.get_base_elems = lambda: get_base_elems() | set(inputs)  # the tab's input set starts from these
    try:
        elem_dict = original(engine)
    finally:
        del manager.get_base_elems
    _render_before(p2d_tab, elem_dict["cmd_preview_btn"].parent)
    return {**elem_dict, **p2d_elems}


def _render_before(block, anchor) -> None:
    """Render ``block`` in ``anchor``'s parent, just before ``anchor`` (the Train tab's button row)."""
    block.render()
    children = anchor.parent.children
    children.remove(block)
    children.insert(children.index(anchor), block)


def _p2d_values(runner, data: dict) -> dict[str, Any]:
    from ..board.settings import KEYS

    return {key: data[runner.manager.get_elem_by_id(f"train.{key}")] for key in KEYS}


def _finetuning_type(runner, data: dict) -> str:
    return data[runner.manager.get_elem_by_id("top.finetuning_type")]


def _parse_train_args(original, self, data: dict) -> dict[str, Any]:
    """Add the accordion's ``p2d_*`` keys to the run (shown by "Preview command", saved with the run)."""
    from ..board.settings import settings_to_args

    args = original(self, data)
    args.update(settings_to_args(_p2d_values(self, data), _finetuning_type(self, data)))
    return args


def _initialize(original, self, data: dict, do_train: bool, from_preview: bool) -> str:
    """Refuse invalid P2D values with LLaMA-Board's alert before anything launches."""
    from ..board.locales import ALERTS
    from ..board.settings import BoardValueError, settings_to_args, validate_args

    error = original(self, data, do_train, from_preview)
    if error or not do_train:
        return error
    lang = data[self.manager.get_elem_by_id("top.lang")] or "en"
    try:
        validate_args(settings_to_args(_p2d_values(self, data), _finetuning_type(self, data)))
    except BoardValueError as err:
        return ALERTS[f"err_p2d_{err.kind}"][lang] + err.detail
    return ""


def patch_train_tab(module: ModuleType) -> None:
    wrap(module, "create_train_tab", create_train_tab)


def patch_runner(module: ModuleType) -> None:
    wrap(module.Runner, "_parse_train_args", _parse_train_args)
    wrap(module.Runner, "_initialize", _initialize)
