"""AER: arithmetic, the reference timing sources, and bad requests failing at parse time (the runs through
``llamafactory-cli`` are in ``tests/e2e/test_aer_cli.py``)."""

import json

import pytest

from p2d_llamafactory.report.aer import aer_record, reference_training_seconds
from tests.helpers.cli import parse_train_args, parser_args


def test_aer_arithmetic_and_record():
    record = aer_record(
        {"head_identification_seconds": 30.0, "data_scoring_seconds": 20.0}, 150.0, 1000.0, "measured", {}
    )
    assert record["aer"] == pytest.approx(0.2)
    assert record["selection_seconds"] == 50.0 and record["training_seconds"] == 150.0
    assert record["head_identification_seconds"] == 30.0 and record["t_fft_seconds"] == 1000.0
    assert aer_record({}, 500.0, 500.0, "measured", {})["aer"] == 1.0  # full fine-tuning itself


def test_reference_timing_sources(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "all_results.json").write_text(json.dumps({"train_runtime": 123.5, "epoch": 3.0}))
    assert reference_training_seconds(tmp_path / "a") == (123.5, str(tmp_path / "a" / "all_results.json"))
    (tmp_path / "a" / "p2d_timings.json").write_text(json.dumps({"training_seconds": 120.0}))
    assert reference_training_seconds(tmp_path / "a")[0] == 120.0  # the plugin's own timing wins
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match=r"`p2d_aer_reference` .* has no timing file"):
        reference_training_seconds(tmp_path / "b")


def test_bad_aer_requests_fail_at_parse_time(tiny_models, tiny_dataset_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    cases = [
        ({"p2d_aer_reference": str(tmp_path / "empty")}, r"has no timing file"),
        ({"p2d_aer_reference": str(tmp_path / "missing")}, r"`p2d_aer_reference` .* is not a directory"),
        (
            {"p2d_aer_estimate_steps": 2, "quantization_bit": 4},
            r"`p2d_aer_estimate_steps` times full fine-tuning steps",
        ),
        ({"p2d_aer_estimate_steps": 0}, r"`p2d_aer_estimate_steps` must be a positive integer"),
        ({"p2d_aer_estimate_steps": 2, "p2d_aer_reference": str(tmp_path)}, r"Set at most one of `p2d_aer_reference`"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            parse_train_args(
                parser_args(
                    tiny_models["llama"], tiny_dataset_dir, tmp_path / "out", finetuning_type="lora", **overrides
                )
            )
    assert not (tmp_path / "out").exists()
