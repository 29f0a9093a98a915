"""LLaMA-Board with the plugin, built in-process: the P2D method, accordion, run arguments, alerts and saved configs
(the stock web UI in a real browser is ``tests/e2e/test_webui_browser.py``)."""

from pathlib import Path

import pytest
import yaml

from p2d_llamafactory.board.locales import ALERTS as P2D_ALERTS
from p2d_llamafactory.board.locales import LOCALES as P2D_LOCALES
from p2d_llamafactory.board.settings import KEYS, SETTINGS, BoardValueError, settings_to_args, validate_args
from tests.helpers.board import board_form


DEFAULTS = {setting.key: setting.default for setting in SETTINGS}


def test_p2d_heads_and_lofit_are_peft_methods_of_the_board():
    from llamafactory.extras.constants import METHODS, PEFT_METHODS

    assert METHODS[-2:] == ["p2d_heads", "lofit"] and METHODS.count("p2d_heads") == METHODS.count("lofit") == 1
    assert {"p2d_heads", "lofit"} <= PEFT_METHODS  # their runs save PEFT adapters: listed, loaded as adapters


def test_lofit_runs_get_the_head_budget_and_nuggets_runs_the_data_keys():
    values = {**DEFAULTS, "p2d_head_ratio": 0.25, "p2d_data_selection": "nuggets", "p2d_fhi_samples": 16}
    args = settings_to_args(values, "lofit")
    assert args == {
        "p2d_head_ratio": 0.25,
        "p2d_data_selection": "nuggets",
        "p2d_data_ratio": DEFAULTS["p2d_data_ratio"],
    }
    validate_args(args)


def test_texts_cover_every_language_of_the_board():
    from llamafactory.webui.locales import ALERTS, LOCALES

    languages = set(LOCALES["title"])
    assert languages == {"en", "ru", "zh", "ko", "ja"}
    assert set(P2D_LOCALES) == {"p2d_tab", *KEYS}
    for name, texts in P2D_LOCALES.items():
        assert set(texts) == languages, name
        assert LOCALES[name] is texts  # merged into LLaMA-Board's table
        for lang, text in texts.items():
            assert text["label"].strip(), (name, lang)
            if name != "p2d_tab":
                assert text["info"].strip(), (name, lang)
        assert len({text["label"] for text in texts.values()}) >= 4, name  # translated, not copied
    for name, texts in P2D_ALERTS.items():
        assert set(texts) == languages and ALERTS[name] is texts


@pytest.mark.parametrize(
    ("finetuning_type", "changes", "expected"),
    [
        ("lora", {}, {}),  # not a P2D run: no p2d_* key at all
        (
            "p2d_heads",
            {},
            {
                "p2d_head_ratio": 0.1,
                "p2d_head_modules": "q,o",
                "p2d_head_selection": "w1",
                "p2d_fhi_samples": 100,
                "p2d_fhi_steps": 20,
                "p2d_data_selection": "none",
                "p2d_head_lr_scale": 10.0,
            },
        ),
        (
            "full",
            {"p2d_data_selection": "random", "p2d_data_ratio": 0.3},
            {"p2d_data_selection": "random", "p2d_data_ratio": 0.3},
        ),
        (
            "lora",
            {"p2d_data_selection": "data_whisperer", "p2d_icl_instruction": "math", "p2d_aer_estimate_steps": 3},
            {
                "p2d_data_selection": "data_whisperer",
                "p2d_data_ratio": 0.1,
                "p2d_icl_scoring": "generate",
                "p2d_icl_instruction": "math",
                "p2d_aer_estimate_steps": 3,
            },
        ),
        (
            "freeze",
            {
                "p2d_data_selection": "p2d",
                "p2d_heads_file": " heads/p2d_heads.json ",
                "p2d_head_modules": ["o", "q", "k"],
            },
            {  # no slice keys: only p2d_heads trains slices (LLaMA-Factory would refuse p2d_head_modules here); no
                # head ratio: the heads file gives the heads
                "p2d_heads_file": "heads/p2d_heads.json",
                "p2d_data_selection": "p2d",
                "p2d_data_ratio": 0.1,
                "p2d_icl_scoring": "generate",
            },
        ),
        ("p2d_heads", {"p2d_fhi_samples": "16", "p2d_head_ratio": "0.25"}, None),
    ],
)
def test_accordion_values_become_the_keys_the_run_needs(finetuning_type, changes, expected):
    args = settings_to_args({**DEFAULTS, **changes}, finetuning_type)
    if expected is None:  # typed text becomes numbers of the right type
        assert args["p2d_fhi_samples"] == 16 and isinstance(args["p2d_fhi_samples"], int)
        assert args["p2d_head_ratio"] == 0.25
    else:
        assert args == expected
    validate_args({k: v for k, v in args.items() if k != "p2d_heads_file"})


@pytest.mark.parametrize(
    ("changes", "kind", "message"),
    [
        ({"p2d_head_ratio": 0}, "invalid", "`p2d_head_ratio` must be in (0, 1]; got 0.0."),
        ({"p2d_head_ratio": 2}, "invalid", "`p2d_head_ratio` must be in (0, 1]; got 2.0."),
        ({"p2d_head_ratio": None}, "invalid", "`p2d_head_ratio` must be a number; got an empty field."),
        ({"p2d_head_ratio": "abc"}, "invalid", "`p2d_head_ratio` must be a number; got 'abc'."),
        ({"p2d_fhi_steps": 2.5}, "invalid", "`p2d_fhi_steps` must be a whole number; got 2.5."),
        ({"p2d_fhi_samples": 0}, "invalid", "`p2d_fhi_samples` must be a positive integer; got 0."),
        ({"p2d_head_modules": []}, "invalid", "`p2d_head_modules` needs at least one of q, k, v, o."),
        (
            {"p2d_data_selection": "random", "p2d_data_ratio": 1.5},
            "invalid",
            "`p2d_data_ratio` must be in (0, 1]; got 1.5.",
        ),
        ({"p2d_heads_file": "/nonexistent/p2d_heads.json"}, "heads_file", "/nonexistent/p2d_heads.json"),
        (
            {"p2d_icl_scoring": "beam"},
            "invalid",
            "`p2d_icl_scoring` must be one of generate, teacher_forced; got 'beam'.",
        ),
    ],
)
def test_bad_values_name_the_key_and_the_allowed_values(changes, kind, message):
    with pytest.raises(BoardValueError) as err:
        values = {**DEFAULTS, **changes}
        if "p2d_icl_scoring" in changes:
            values["p2d_data_selection"] = "p2d"
        validate_args(settings_to_args(values, "p2d_heads"))
    assert err.value.kind == kind and err.value.detail == message


@pytest.fixture
def engine(tmp_path, monkeypatch):
    """The stock LLaMA-Board UI, built in this process in an empty working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")
    from llamafactory.webui.engine import Engine
    from llamafactory.webui.interface import create_ui

    captured = {}
    original = Engine.__init__

    def keep(self, *args, **kwargs):
        original(self, *args, **kwargs)
        captured["engine"] = self

    monkeypatch.setattr(Engine, "__init__", keep)
    create_ui()
    return captured["engine"]


def test_the_train_tab_runs_saves_and_restores_the_p2d_values(engine, tiny_models):
    runner, manager = engine.runner, engine.manager
    accordion = manager.get_elem_by_id("train.p2d_tab")
    tab_children = accordion.parent.children
    button_row = manager.get_elem_by_id("train.cmd_preview_btn").parent
    assert tab_children.index(accordion) == tab_children.index(button_row) - 1  # right above the buttons
    assert type(tab_children[tab_children.index(accordion) - 1]).__name__ == "Accordion"  # after LF's accordions

    data = board_form(
        engine, tiny_models["llama"], **{"train.p2d_head_ratio": 0.25, "train.p2d_data_selection": "p2d"}
    )
    args = runner._parse_train_args(data)
    assert args["finetuning_type"] == "p2d_heads" and args["p2d_head_ratio"] == 0.25
    assert args["p2d_data_selection"] == "p2d" and args["p2d_icl_scoring"] == "generate"
    assert runner._initialize(data, do_train=True, from_preview=True) == ""

    bad = board_form(engine, tiny_models["llama"], **{"top.lang": "zh", "train.p2d_data_ratio": 2})
    bad[manager.get_elem_by_id("train.p2d_data_selection")] = "random"
    assert runner._initialize(bad, do_train=True, from_preview=False) == (
        "P2D 参数无效：`p2d_data_ratio` must be in (0, 1]; got 2.0."
    )
    assert not Path("saves").exists()

    runner.save_args(data)
    saved = yaml.safe_load(Path("llamaboard_config/p2d.yaml").read_text())
    assert saved["train.p2d_head_ratio"] == 0.25 and saved["train.p2d_data_selection"] == "p2d"
    assert saved["train.p2d_head_modules"] == ["q", "o"]
    restored = runner.load_args("en", "p2d.yaml")
    assert restored[manager.get_elem_by_id("train.p2d_head_ratio")] == 0.25
    assert restored[manager.get_elem_by_id("train.p2d_data_selection")] == "p2d"

    zh = engine.change_lang("zh")
    assert zh[accordion].label == P2D_LOCALES["p2d_tab"]["zh"]["label"]
    assert zh[manager.get_elem_by_id("train.p2d_head_ratio")].label == "注意力头比例"
