"""LLaMA-Board with the plugin: the P2D method, accordion, run arguments, alerts and saved configs, then the stock
web UI driven end to end in a real browser (Debian's chromium through Playwright)."""

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from p2d_llamafactory.board.locales import ALERTS as P2D_ALERTS
from p2d_llamafactory.board.locales import LOCALES as P2D_LOCALES
from p2d_llamafactory.board.settings import KEYS, SETTINGS, BoardValueError, settings_to_args, validate_args


CHROMIUM = os.environ.get("P2D_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEFAULTS = {setting.key: setting.default for setting in SETTINGS}


def test_p2d_heads_is_a_peft_method_of_the_board():
    from llamafactory.extras.constants import METHODS, PEFT_METHODS

    assert METHODS[-1] == "p2d_heads" and METHODS.count("p2d_heads") == 1
    assert "p2d_heads" in PEFT_METHODS  # its runs save PEFT adapters: listed as checkpoints, loaded as adapters


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
            {
                "p2d_head_ratio": 0.1,
                "p2d_head_modules": "o,q,k",
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


def _form(engine, tiny_model: Path, **values) -> dict:
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


def test_the_train_tab_runs_saves_and_restores_the_p2d_values(engine, tiny_models):
    runner, manager = engine.runner, engine.manager
    accordion = manager.get_elem_by_id("train.p2d_tab")
    tab_children = accordion.parent.children
    button_row = manager.get_elem_by_id("train.cmd_preview_btn").parent
    assert tab_children.index(accordion) == tab_children.index(button_row) - 1  # right above the buttons
    assert type(tab_children[tab_children.index(accordion) - 1]).__name__ == "Accordion"  # after LF's accordions

    data = _form(engine, tiny_models["llama"], **{"train.p2d_head_ratio": 0.25, "train.p2d_data_selection": "p2d"})
    args = runner._parse_train_args(data)
    assert args["finetuning_type"] == "p2d_heads" and args["p2d_head_ratio"] == 0.25
    assert args["p2d_data_selection"] == "p2d" and args["p2d_icl_scoring"] == "generate"
    assert runner._initialize(data, do_train=True, from_preview=True) == ""

    bad = _form(engine, tiny_models["llama"], **{"top.lang": "zh", "train.p2d_data_ratio": 2})
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


# --- the real browser ---------------------------------------------------------------------------------------------


def _browser_or_skip():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e .[test])")
    if not Path(CHROMIUM).is_file():
        pytest.skip(
            f"Chromium is not installed at {CHROMIUM} (Debian: apt-get install chromium; scripts/test.sh does)"
        )
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def board(tmp_path, tiny_models, tiny_dataset_dir):
    """``llamafactory-cli webui`` on loopback in an empty working directory; yields its URL and folder."""
    bin_dir = Path(sys.executable).parent
    port = _free_port()
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",  # the board launches llamafactory-cli
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "BROWSER": "true",  # launch() opens a browser tab; make that a no-op
    }
    work = tmp_path / "board"
    work.mkdir()
    log = open(tmp_path / "webui.log", "w")
    server = subprocess.Popen(
        [str(bin_dir / "llamafactory-cli"), "webui"], cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "LLaMA-Board did not start:\n" + (tmp_path / "webui.log").read_text()[-4000:]
                    ) from None
                time.sleep(1)
        yield url, work
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _field(page, label: str):
    """A labelled input; LLaMA-Board's labels carry the help text after the name."""
    return page.get_by_label(re.compile(r"^\s*" + re.escape(label) + r"(\s|$)")).first


def _choose(page, label: str, value: str) -> None:
    _field(page, label).click()
    page.get_by_role("option", name=value, exact=True).click()


def _page_text(page) -> str:
    """What the page shows: its text and the values of its text fields (LLaMA-Board's info boxes)."""
    values = page.eval_on_selector_all("textarea, input", "els => els.map(e => e.value)")
    return page.inner_text("body") + "\n" + "\n".join(values)


def _wait_text(page, text: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = _page_text(page)
        if text in body:
            return body
        time.sleep(0.5)
    raise AssertionError(f"{text!r} never showed; the page ends with:\n{page.inner_text('body')[-3000:]}")


def _fill(page, values: dict[str, str]) -> None:
    for label, value in values.items():
        _field(page, label).fill(value)
    page.keyboard.press("Tab")


@pytest.mark.slow
def test_p2d_in_the_web_ui_end_to_end(board, tiny_models, tiny_dataset_dir, tmp_path):
    sync_playwright = _browser_or_skip()
    url, work = board
    runs = work / "saves" / "Custom" / "p2d_heads"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.get_by_text("Finetuning method").first.wait_for(timeout=120_000)

        _choose(page, "Model name", "Custom")
        _fill(page, {"Model path": str(tiny_models["llama"])})
        _choose(page, "Finetuning method", "p2d_heads")
        _choose(page, "Chat template", "chatml")
        _choose(page, "Compute type", "fp32")
        _fill(page, {"Data dir": str(tiny_dataset_dir)})
        _field(page, "Dataset").click()
        page.get_by_role("option", name="p2d_demo", exact=True).click()
        page.keyboard.press("Escape")
        page.get_by_text("Extra configurations").click()
        extra = {
            "optim": "adamw_torch",
            "max_steps": 3,
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 1,
            "preprocessing_num_workers": 1,
            "cutoff_len": 128,
            "logging_steps": 1,
            "p2d_fhi_lr": 0.001,
        }
        _fill(page, {"Extra arguments": json.dumps(extra)})
        page.get_by_text("P2D configurations").click()

        # the language switch keeps working and translates the accordion
        _choose(page, "Language", "zh")
        _wait_text(page, P2D_LOCALES["p2d_tab"]["zh"]["label"])
        _wait_text(page, "注意力头比例")
        _choose(page, "语言", "en")
        _wait_text(page, "Head ratio")

        # invalid values: LLaMA-Board's alert, nothing launched
        _fill(page, {"Head ratio": "2"})
        page.get_by_role("button", name="Start").click()
        _wait_text(page, "Invalid P2D setting: `p2d_head_ratio` must be in (0, 1]; got 2.0.")
        _fill(page, {"Head ratio": "0"})
        page.get_by_role("button", name="Preview command").click()
        _wait_text(page, "Invalid P2D setting: `p2d_head_ratio` must be in (0, 1]; got 0.0.")
        _fill(page, {"Head ratio": "0.25", "Heads file": "/nonexistent/p2d_heads.json"})
        page.get_by_role("button", name="Start").click()
        _wait_text(page, "P2D heads file not found: /nonexistent/p2d_heads.json")
        assert not runs.exists()

        # valid values; saving and loading the board's config keeps them
        _fill(page, {"Heads file": "", "FHI samples": "16", "FHI steps": "2", "Data ratio": "0.5"})
        _choose(page, "Data selection method", "p2d")
        _choose(page, "ICL scoring mode", "teacher_forced")
        _fill(page, {"AER estimate steps": "1"})
        page.get_by_role("button", name="Save arguments").click()
        body = _wait_text(page, "Arguments have been saved at: ")
        saved_path = re.search(r"Arguments have been saved at: (\S+\.yaml)", body).group(1)
        saved = yaml.safe_load((work / saved_path).read_text())
        assert saved["train.p2d_head_ratio"] == 0.25 and saved["train.p2d_data_selection"] == "p2d"
        _fill(page, {"Head ratio": "0.5"})
        page.get_by_role("button", name="Load arguments").click()
        _wait_text(page, "Arguments have been restored.")
        assert float(_field(page, "Head ratio").input_value()) == 0.25

        page.get_by_role("button", name="Preview command").click()
        body = _wait_text(page, "--p2d_head_ratio 0.25")
        for line in (
            "--finetuning_type p2d_heads",
            "--p2d_head_modules q,o",
            "--p2d_fhi_samples 16",
            "--p2d_data_selection p2d",
            "--p2d_data_ratio 0.5",
            "--p2d_icl_scoring teacher_forced",
            "--p2d_aer_estimate_steps 1",
        ):
            assert line in body, line
        accordion = page.locator(".block", has_text="P2D configurations").last
        accordion.screenshot(path=str(tmp_path / "p2d_accordion.png"))
        page.screenshot(path=str(tmp_path / "llamaboard_train_tab.png"), full_page=True)
        if os.environ.get("P2D_BOARD_SCREENSHOT"):
            shutil.copyfile(tmp_path / "p2d_accordion.png", os.environ["P2D_BOARD_SCREENSHOT"])

        # a run: the selection stages and the AER show in the log, as for any method
        output_dir = _field(page, "Output dir").input_value()
        page.get_by_role("button", name="Start").click()
        body = _wait_text(page, "Finished.", timeout=600)
        assert "P2D: AER = " in body
        run = runs / output_dir
        running_log = (run / "running_log.txt").read_text()
        assert "P2D: stage I, head identification (w1)" in running_log
        assert "P2D: stage II done in" in running_log and "keeps 24 of 48 training examples" in running_log
        last = json.loads((run / "trainer_log.jsonl").read_text().splitlines()[-1])
        assert last["p2d_aer"] > 0 and (run / "adapter_config.json").is_file()
        loss_plot = page.locator(".block", has_text="Loss").locator("img").last
        loss_plot.wait_for(timeout=30_000)  # the board's loss curve, drawn from trainer_log.jsonl
        assert loss_plot.get_attribute("src")
        page.screenshot(path=str(tmp_path / "llamaboard_finished.png"), full_page=True)

        # the saved adapter is a checkpoint that loads in the Chat and Export tabs
        _field(page, "Checkpoint path").click()
        page.get_by_role("option", name=output_dir, exact=True).click()
        page.keyboard.press("Escape")
        page.get_by_role("tab", name="Chat").click()
        page.get_by_role("button", name="Load model", exact=True).click()
        _wait_text(page, "Model loaded, now you can chat with your model!", timeout=180)
        page.get_by_role("button", name="Unload model", exact=True).click()
        _wait_text(page, "Model unloaded.", timeout=60)
        page.get_by_role("tab", name="Export").click()
        export_dir = tmp_path / "exported"
        _fill(page, {"Export dir": str(export_dir)})
        page.get_by_role("button", name="Export", exact=True).click()
        _wait_text(page, "Model exported.", timeout=180)
        assert (export_dir / "config.json").is_file() and (export_dir / "model.safetensors").is_file()
        assert not (export_dir / "adapter_config.json").exists()  # merged into a plain model
        browser.close()
