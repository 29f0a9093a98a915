"""The stock LLaMA-Board (``llamafactory-cli webui``) with the plugin, driven end to end in a real browser
(Debian's chromium through Playwright): language switch, alerts, saved configs, command preview, a run, and the
trained adapter in the Chat and Export tabs."""

import json
import os
import re
import shutil

import pytest
import yaml

from p2d_llamafactory.board.locales import LOCALES as P2D_LOCALES
from tests.helpers.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    choose,
    field,
    fill,
    playwright_or_skip,
    running_board,
    wait_text,
)


@pytest.fixture
def board(tmp_path):
    """``llamafactory-cli webui`` on loopback in an empty working directory; yields its URL and folder."""
    playwright_or_skip()  # before the server starts
    work = tmp_path / "board"
    work.mkdir()
    with running_board(work, tmp_path / "webui.log") as url:
        yield url, work


def test_p2d_in_the_web_ui_end_to_end(board, tiny_models, tiny_dataset_dir, tmp_path):
    sync_playwright = playwright_or_skip()
    url, work = board
    runs = work / "saves" / "Custom" / "p2d_heads"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(url)
        page.get_by_text("Finetuning method").first.wait_for(timeout=120_000)

        choose(page, "Model name", "Custom")
        fill(page, {"Model path": str(tiny_models["llama"])})
        choose(page, "Finetuning method", "p2d_heads")
        choose(page, "Chat template", "chatml")
        choose(page, "Compute type", "fp32")
        fill(page, {"Data dir": str(tiny_dataset_dir)})
        field(page, "Dataset").click()
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
        fill(page, {"Extra arguments": json.dumps(extra)})
        page.get_by_text("P2D configurations").click()

        # the language switch keeps working and translates the accordion
        choose(page, "Language", "zh")
        wait_text(page, P2D_LOCALES["p2d_tab"]["zh"]["label"])
        wait_text(page, "注意力头比例")
        choose(page, "语言", "en")
        wait_text(page, "Head ratio")

        # invalid values: LLaMA-Board's alert, nothing launched
        fill(page, {"Head ratio": "2"})
        page.get_by_role("button", name="Start").click()
        wait_text(page, "Invalid P2D setting: `p2d_head_ratio` must be in (0, 1]; got 2.0.")
        fill(page, {"Head ratio": "0"})
        page.get_by_role("button", name="Preview command").click()
        wait_text(page, "Invalid P2D setting: `p2d_head_ratio` must be in (0, 1]; got 0.0.")
        fill(page, {"Head ratio": "0.25", "Heads file": "/nonexistent/p2d_heads.json"})
        page.get_by_role("button", name="Start").click()
        wait_text(page, "P2D heads file not found: /nonexistent/p2d_heads.json")
        assert not runs.exists()

        # valid values; saving and loading the board's config keeps them
        fill(page, {"Heads file": "", "FHI samples": "16", "FHI steps": "2", "Data ratio": "0.5"})
        choose(page, "Data selection method", "p2d")
        choose(page, "ICL scoring mode", "teacher_forced")
        fill(page, {"AER estimate steps": "1"})
        page.get_by_role("button", name="Save arguments").click()
        body = wait_text(page, "Arguments have been saved at: ")
        saved_path = re.search(r"Arguments have been saved at: (\S+\.yaml)", body).group(1)
        saved = yaml.safe_load((work / saved_path).read_text())
        assert saved["train.p2d_head_ratio"] == 0.25 and saved["train.p2d_data_selection"] == "p2d"
        fill(page, {"Head ratio": "0.5"})
        page.get_by_role("button", name="Load arguments").click()
        wait_text(page, "Arguments have been restored.")
        assert float(field(page, "Head ratio").input_value()) == 0.25

        page.get_by_role("button", name="Preview command").click()
        body = wait_text(page, "--p2d_head_ratio 0.25")
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
        output_dir = field(page, "Output dir").input_value()
        page.get_by_role("button", name="Start").click()
        wait_text(page, "Finished.", timeout=600)
        run = runs / output_dir
        # the log the board shows: LLaMA-Factory's final "Finished." box repeats the log as last polled (every 2 s,
        # while the run lived), so a tiny run's last lines, the AER among them, reach the file but not always the page
        running_log = (run / "running_log.txt").read_text()
        assert "P2D: AER = " in running_log
        assert "P2D: stage I, head identification (w1)" in running_log
        assert "P2D: stage II done in" in running_log and "keeps 24 of 48 training examples" in running_log
        last = json.loads((run / "trainer_log.jsonl").read_text().splitlines()[-1])
        assert last["p2d_aer"] > 0 and (run / "adapter_config.json").is_file()
        loss_plot = page.locator(".block", has_text="Loss").locator("img").last
        loss_plot.wait_for(timeout=30_000)  # the board's loss curve, drawn from trainer_log.jsonl
        assert loss_plot.get_attribute("src")
        page.screenshot(path=str(tmp_path / "llamaboard_finished.png"), full_page=True)

        # the saved adapter is a checkpoint that loads in the Chat and Export tabs
        field(page, "Checkpoint path").click()
        page.get_by_role("option", name=output_dir, exact=True).click()
        page.keyboard.press("Escape")
        page.get_by_role("tab", name="Chat").click()
        page.get_by_role("button", name="Load model", exact=True).click()
        wait_text(page, "Model loaded, now you can chat with your model!", timeout=180)
        page.get_by_role("button", name="Unload model", exact=True).click()
        wait_text(page, "Model unloaded.", timeout=60)
        page.get_by_role("tab", name="Export").click()
        export_dir = tmp_path / "exported"
        fill(page, {"Export dir": str(export_dir)})
        page.get_by_role("button", name="Export", exact=True).click()
        wait_text(page, "Model exported.", timeout=180)
        assert (export_dir / "config.json").is_file() and (export_dir / "model.safetensors").is_file()
        assert not (export_dir / "adapter_config.json").exists()  # merged into a plain model
        browser.close()
