"""The stock LLaMA-Board (``llamafactory-cli webui``) serves the P2D method and accordion: its Gradio ``/config``,
read without a browser (the part of the Board test that also runs against LLaMA-Factory main)."""

import json
import urllib.request

import pytest

from p2d_llamafactory.board.settings import KEYS
from p2d_llamafactory.methods import DATA_SELECTIONS, HEAD_SELECTIONS
from tests.helpers.browser import running_board


pytestmark = pytest.mark.core


def _choices(component: dict) -> list[str]:
    return [value for _, value in component.get("props", {}).get("choices") or []]


def test_the_board_config_offers_p2d_heads_and_the_p2d_accordion(tmp_path):
    work = tmp_path / "board"
    work.mkdir()
    with running_board(work, tmp_path / "webui.log") as url:
        config = json.loads(urllib.request.urlopen(url + "config", timeout=60).read())
    choices = [_choices(component) for component in config["components"]]
    methods = [values for values in choices if "freeze" in values and "full" in values]
    assert len(methods) == 1 and methods[0][-2:] == ["p2d_heads", "lofit"]  # the Finetuning method dropdown
    assert list(DATA_SELECTIONS) in choices and list(HEAD_SELECTIONS) in choices  # the P2D accordion's selectors
    # the accordion that holds the data selection dropdown holds one input per P2D key
    by_id = {component["id"]: component for component in config["components"]}
    selection = next(c["id"] for c in config["components"] if _choices(c) == list(DATA_SELECTIONS))
    accordion = next(
        node
        for node in _nodes(config["layout"])
        if by_id.get(node["id"], {}).get("type") == "accordion" and selection in _ids(node)
    )
    inputs = [
        i for i in _ids(accordion) if by_id[i].get("type") in ("dropdown", "number", "slider", "textbox", "checkbox")
    ]
    assert len(inputs) == len(KEYS)


def _nodes(node: dict):
    yield node
    for child in node.get("children", []):
        yield from _nodes(child)


def _ids(node: dict) -> list[int]:
    return [n["id"] for n in _nodes(node)][1:]
