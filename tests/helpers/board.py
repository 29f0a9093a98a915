"""LLaMA-Board's form as its runner receives it, for the web UI built in-process."""

from pathlib import Path


def board_form(engine, tiny_model: Path, **values) -> dict:
    """The values of every element, as LLaMA-Board hands them to the runner, with ``values`` (id -> value) set."""
    manager = engine.manager
    data = {elem: getattr(elem, "value", None) for elem in manager.get_elem_list()}
    settings = {
        "top.lang": "en",
        "top.model_name": "Custom",
        "top.model_path": str(tiny_model),
        "top.finetuning_type": "p2d_heads",
        "top.checkpoint_path": [],
        "top.template": "chatml",
        "train.dataset": ["p2d_demo"],
        "train.output_dir": "run1",
        "train.config_path": "p2d.yaml",
        **values,
    }
    for elem_id, value in settings.items():
        data[manager.get_elem_by_id(elem_id)] = value
    return data
