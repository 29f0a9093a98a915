"""One source of truth for the P2D settings: every consumer derives its keys from the dataclasses."""

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest

from p2d_llamafactory import hparams
from p2d_llamafactory.board.settings import BoardSetting
from p2d_llamafactory.data.cache import finished_scores
from p2d_llamafactory.data.select import selection_settings
from p2d_llamafactory.files import HEADS_FILE, SCORES_FILE
from p2d_llamafactory.heads.headset import HeadSet
from p2d_llamafactory.heads.identify import plan_identification, reusable_identification
from p2d_llamafactory.heads.layout import AttentionLayout
from p2d_llamafactory.hparams import P2DArguments, identity_keys, p2d_field
from p2d_llamafactory.io import atomic_write_json


@dataclasses.dataclass
class WithNewKnob(P2DArguments):
    """A later plugin version's hypothetical key, part of both stages' identity."""

    p2d_new_knob: float = p2d_field(0.5, "A hypothetical probing key.", "probing", ("heads", "selection"))


# a valid other value for every identity field; a new identity field must be added here (the test says so)
OTHER_VALUES = {
    "p2d_head_ratio": 0.2,
    "p2d_head_trainable_layers": -1,
    "p2d_head_selection": "cosine",
    "p2d_seed": 7,
    "p2d_fhi_samples": 50,
    "p2d_fhi_steps": 3,
    "p2d_fhi_lr": 1e-4,
    "p2d_fhi_trainable": "attention",
    "p2d_temperature": 0.5,
    "p2d_task_model": "some/task-model",
    "p2d_data_selection": "ifd",
    "p2d_data_ratio": 0.3,
    "p2d_nuggets_anchors": 50,
    "p2d_nuggets_anchor_sampling": "random",
    "p2d_icl_instruction": "summarization",
    "p2d_icl_demos": 4,
    "p2d_icl_queries": 2,
    "p2d_icl_rounds": 2,
    "p2d_icl_metric": "em",
    "p2d_icl_scoring": "teacher_forced",
    "p2d_icl_max_new_tokens": 64,
    "p2d_new_knob": 0.25,
}
LAYOUT = AttentionLayout(("l0", "l1"), num_heads=4, num_kv_heads=2, head_dim=8, hidden_size=32)
EXAMPLES = [{"input_ids": [1, 2, i], "labels": [-100, 2, i]} for i in range(6)]


def _head_set(args: P2DArguments, output_dir: Path) -> dict:
    _, settings = plan_identification(EXAMPLES, args, "tiny")
    HeadSet("tiny", LAYOUT.shape(), "w1", 0, 0.1, [[0.0] * 4] * 2, [(0, 0)], settings).save(output_dir / HEADS_FILE)
    return settings


def _selection_inputs() -> SimpleNamespace:
    return SimpleNamespace(model_name="tiny", data_fingerprint="abc", max_length=64)


def test_identity_keys_come_from_field_metadata():
    heads = identity_keys("heads")
    selection = identity_keys("selection")
    assert {"p2d_head_ratio", "p2d_head_selection", "p2d_fhi_lr", "p2d_temperature", "p2d_seed"} <= set(heads)
    assert {"p2d_data_selection", "p2d_data_ratio", "p2d_icl_demos", "p2d_seed"} <= set(selection)
    # what changes no result is no part of an identity
    for key in (
        "p2d_head_modules",
        "p2d_heads_file",
        "p2d_icl_batch_size",
        "p2d_data_ppl_samples",
        "p2d_aer_reference",
    ):
        assert key not in heads and key not in selection
    assert hparams.keys_of_concern("proxy") == (
        "p2d_fhi_samples",
        "p2d_fhi_steps",
        "p2d_fhi_lr",
        "p2d_fhi_trainable",
        "p2d_temperature",
        "p2d_task_model",
    )
    with pytest.raises(ValueError, match="unknown concern 'fhi'; allowed: heads, proxy"):
        hparams.keys_of_concern("fhi")


def test_p2d_metadata_never_reaches_argparse():
    from transformers import HfArgumentParser

    parser = HfArgumentParser(P2DArguments)  # would raise on an unknown add_argument keyword
    (args,) = parser.parse_args_into_dataclasses(["--p2d_head_ratio", "0.2", "--p2d_icl_scoring", "teacher_forced"])
    assert args.p2d_head_ratio == 0.2 and args.p2d_icl_scoring == "teacher_forced"
    with pytest.raises(SystemExit):
        parser.parse_args_into_dataclasses(["--p2d_head_selection", "magnitude"])  # choices from the Literal


def test_a_new_field_reaches_every_consumer(monkeypatch):
    args = WithNewKnob(p2d_new_knob=0.75)
    # stage I and stage II cache keys
    _, head_settings = plan_identification(EXAMPLES, args, "tiny")
    assert head_settings["p2d_new_knob"] == 0.75
    assert selection_settings(args, _selection_inputs(), None)["p2d_new_knob"] == 0.75
    assert args.p2d_dict()["p2d_new_knob"] == 0.75

    monkeypatch.setattr(hparams, "P2DArguments", WithNewKnob)
    # the grid's method block and its keep-where-used list for the field's concern
    from p2d_llamafactory.experiments.grid import spec as grid_spec

    method_keys = grid_spec.blocks()["method"]
    assert "p2d_new_knob" in method_keys
    assert method_keys.index("p2d_new_knob") > method_keys.index("p2d_icl_batch_size")  # declaration order
    assert "p2d_new_knob" in hparams.keys_of_concern("probing")
    # LLaMA-Board: a widget for the key takes its default and group from the field
    widget = BoardSetting("p2d_new_knob", "number")
    assert widget.default == 0.5 and widget.group == "icl"


def test_every_identity_field_has_a_test_value():
    fields = set(identity_keys("heads", WithNewKnob)) | set(identity_keys("selection", WithNewKnob))
    assert fields == set(OTHER_VALUES), "add the new identity field to OTHER_VALUES"


@pytest.mark.parametrize("key", identity_keys("heads", WithNewKnob))
def test_changing_any_stage_one_identity_field_invalidates_reuse(key, tmp_path):
    base = WithNewKnob(p2d_head_selection="w1")
    settings = _head_set(base, tmp_path)
    assert reusable_identification(str(tmp_path), settings, LAYOUT) is not None  # identical: reused
    changed = dataclasses.replace(base, **{key: OTHER_VALUES[key]})
    _, other = plan_identification(EXAMPLES, changed, "tiny")
    assert other != settings
    assert reusable_identification(str(tmp_path), other, LAYOUT) is None


@pytest.mark.parametrize("key", identity_keys("selection", WithNewKnob))
def test_changing_any_stage_two_identity_field_invalidates_reuse(key, tmp_path):
    heads = {0: [1, 2]}
    base = WithNewKnob(p2d_data_selection="p2d")
    settings = selection_settings(base, _selection_inputs(), heads)
    atomic_write_json(tmp_path / SCORES_FILE, _scores_file(settings))
    assert finished_scores(tmp_path, settings) is not None  # identical: reused
    changed = dataclasses.replace(base, **{key: OTHER_VALUES[key]})
    assert finished_scores(tmp_path, selection_settings(changed, _selection_inputs(), heads)) is None


def test_changing_a_non_identity_field_keeps_reuse(tmp_path):
    base = WithNewKnob(p2d_data_selection="p2d")
    settings = selection_settings(base, _selection_inputs(), None)
    atomic_write_json(tmp_path / SCORES_FILE, _scores_file(settings))
    changed = dataclasses.replace(base, p2d_icl_batch_size=16, p2d_data_ppl_samples=0, p2d_head_modules="all")
    assert finished_scores(tmp_path, selection_settings(changed, _selection_inputs(), None)) is not None
    assert _head_set(base, tmp_path) == plan_identification(EXAMPLES, changed, "tiny")[1]


def test_one_rule_says_which_key_applies_to_which_run():
    from p2d_llamafactory.hparams import applicable, uses_p2d

    with_file = applicable({"p2d_heads_file": "h.json", "p2d_data_selection": "p2d"}, "lora")
    assert with_file["p2d_heads_file"] is None and with_file["p2d_icl_demos"] is None
    assert "a heads file gives them" in with_file["p2d_head_ratio"] == with_file["p2d_head_trainable_layers"]
    assert with_file["p2d_fhi_steps"] == "no proxy is trained"
    assert with_file["p2d_head_modules"] == "only `finetuning_type: p2d_heads` trains head slices"
    own = applicable({}, "p2d_heads")
    assert own["p2d_fhi_steps"] is None and own["p2d_head_modules"] is None
    assert own["p2d_data_ratio"] == "`p2d_data_selection` is none" and own["p2d_data_selection"] is None
    assert applicable({"p2d_head_selection": "random"}, "p2d_heads")["p2d_fhi_samples"] == "no FHI examples are used"
    lofit = applicable({"p2d_data_selection": "nuggets"}, "lofit")
    assert (
        lofit["p2d_head_ratio"] is None
        and lofit["p2d_head_trainable_layers"] is None
        and lofit["p2d_lofit_l1_lambda"] is None
        and lofit["p2d_nuggets_anchors"] is None
    )
    assert lofit["p2d_head_selection"] == "no heads are identified"
    assert uses_p2d({}, "lofit") and uses_p2d({"p2d_aer_estimate_steps": 3}, "lora") and not uses_p2d({}, "lora")


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"p2d_seed": 2**64}, r"`p2d_seed` must be an integer in \[0, 4294967295\]; got 18446744073709551616"),
        ({"p2d_seed": -1}, r"`p2d_seed` must be an integer in \[0, 4294967295\]; got -1"),
        ({"p2d_data_ppl_samples": -5}, r"`p2d_data_ppl_samples` must be an integer >= 0 \(0: no perplexity report\)"),
    ],
)
def test_integer_keys_out_of_range_are_refused_for_every_method(keys, message):
    for selection in ("w1", "random", "gradient"):
        with pytest.raises(ValueError, match=message):
            P2DArguments(p2d_head_selection=selection, **keys)
    P2DArguments(p2d_seed=2**32 - 1, p2d_data_ppl_samples=0)  # the bounds themselves are fine


def test_the_smallest_head_ratio_suggested_keeps_one_head():
    from types import SimpleNamespace

    from p2d_llamafactory.checks import check_head_ratio
    from p2d_llamafactory.hparams import count_for_ratio

    for heads, refused in ((24, 0.02083), (270, 0.0018), (12, 0.01), (7, 0.07)):
        with pytest.raises(ValueError, match=r"use a value in \[([0-9.]+), 1\]") as err:
            check_head_ratio(refused, SimpleNamespace(total_heads=heads))
        suggested = float(str(err.value).split("[")[1].split(",")[0])
        assert suggested != refused and count_for_ratio(suggested, heads) == 1


def test_head_trainable_layers_must_name_layers_that_hold_the_kept_heads():
    from p2d_llamafactory.checks import check_head_ratio

    layout = SimpleNamespace(total_heads=12, num_layers=3, num_heads=4)
    with pytest.raises(ValueError, match=r"`p2d_head_trainable_layers` must be a nonzero integer .* got 0"):
        P2DArguments(p2d_head_trainable_layers=0)
    for count in (-3, -1, 1, 3):
        check_head_ratio(0.25, layout, count)  # 3 heads fit in any one layer of 4 heads
    for count in (4, -4):
        with pytest.raises(
            ValueError, match=r"more layers than this model's 3; use a value in \[1, 3\] .* \[-3, -1\]"
        ):
            check_head_ratio(0.25, layout, count)
    with pytest.raises(
        ValueError, match=r"keeps 6 heads, but the last 1 layers .* hold only 4; allow at least 2 layers"
    ):
        check_head_ratio(0.5, layout, 1)
    with pytest.raises(ValueError, match=r"keeps 6 heads, but the first 1 layers"):
        check_head_ratio(0.5, layout, -1)
    check_head_ratio(0.5, layout, -2)


def _scores_file(settings):
    """A complete scores record (what a finished selection writes) with these settings."""
    return {"settings": settings, "method": "p2d", "num_examples": 10, "selected": [0], "scores": [1.0] + [0.5] * 9}
