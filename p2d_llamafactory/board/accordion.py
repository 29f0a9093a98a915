"""The gradio widgets of the P2D accordion (built unrendered; LLaMA-Board's Train tab places them)."""

from typing import Any

from .settings import SETTINGS, BoardSetting


ROWS = (
    ("p2d_head_ratio", "p2d_head_modules", "p2d_head_selection", "p2d_fhi_samples", "p2d_fhi_steps"),
    ("p2d_data_selection", "p2d_data_ratio", "p2d_icl_scoring", "p2d_icl_instruction", "p2d_aer_estimate_steps"),
    ("p2d_heads_file", "p2d_head_lr_scale"),
)


def _widget(setting: BoardSetting):
    import gradio as gr

    if setting.kind == "number":
        return gr.Number(value=setting.default, step=0.05)
    if setting.kind == "integer":
        return gr.Number(value=setting.default, precision=0, step=1)
    if setting.kind == "multichoice":
        return gr.Dropdown(choices=list(setting.choices), value=list(setting.default), multiselect=True)
    if setting.kind == "choice":
        custom = setting.key == "p2d_icl_instruction"  # own instruction texts are allowed
        return gr.Dropdown(choices=list(setting.choices), value=setting.default, allow_custom_value=custom)
    return gr.Textbox(value=setting.default)


def create_p2d_tab() -> tuple[Any, dict[str, Any]]:
    """The unrendered accordion and its elements by name (``p2d_tab`` and one per ``p2d_*`` key)."""
    import gradio as gr

    by_key = {setting.key: setting for setting in SETTINGS}
    elems: dict[str, Any] = {}
    with gr.Accordion(open=False, render=False) as p2d_tab:
        for row in ROWS:
            with gr.Row():
                for key in row:
                    elems[key] = _widget(by_key[key])
    return p2d_tab, {"p2d_tab": p2d_tab, **elems}
