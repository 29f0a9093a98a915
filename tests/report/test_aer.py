"""AER: arithmetic, the reference timing sources, and bad requests failing at parse time (the runs through
``llamafactory-cli`` are in ``tests/e2e/test_aer_cli.py``)."""

import json
from types import SimpleNamespace

import pytest

from p2d_llamafactory.data.cache import ProbeCheckpoint
from p2d_llamafactory.data.probe import PromptResult
from p2d_llamafactory.files import TRAINING_STATE_FILE
from p2d_llamafactory.io import atomic_write_json
from p2d_llamafactory.report.aer import aer_record, reference_training_seconds
from p2d_llamafactory.report.timing import AERRequest, P2DTimingCallback
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


def test_aer_counts_inherited_costs_and_says_which_were_paid():
    record = aer_record(
        {"data_scoring_seconds": 20.0}, 30.0, 100.0, "measured", {}, {"inherited_head_identification_seconds": 50.0}
    )
    assert record["aer"] == pytest.approx(1.0) and record["aer_this_run"] == pytest.approx(0.5)
    assert record["paid_by_this_run"] == {"data_scoring_seconds": 20.0, "training_seconds": 30.0}
    assert record["inherited"] == {"inherited_head_identification_seconds": 50.0}
    assert (
        aer_record({}, 50.0, 100.0, "measured", {})["aer"]
        == aer_record({}, 50.0, 100.0, "measured", {})["aer_this_run"]
    )


def test_probe_time_accumulates_across_resumes(tmp_path, monkeypatch):
    clock = iter([0.0, 0.0, 10.0, 25.0, 1000.0, 1000.0, 1000.0, 1004.0])
    monkeypatch.setattr("p2d_llamafactory.data.cache.time.perf_counter", lambda: next(clock))
    first = ProbeCheckpoint(tmp_path, {"s": 1})
    first.load()
    first.append(PromptResult(0, [1], [0.5], [1.0]))  # at 10 s
    first.append(PromptResult(1, [2], [0.5], [1.0]))  # at 25 s, then the run is killed
    resumed = ProbeCheckpoint(tmp_path, {"s": 1})
    assert sorted(resumed.load()) == [0, 1] and resumed.previous_seconds == 25.0
    assert resumed.elapsed() == pytest.approx(25.0)
    assert resumed.elapsed() == pytest.approx(29.0)  # 4 s after the resume, 29 s in all


def test_training_time_accumulates_across_resumes(tmp_path):
    callback = P2DTimingCallback(AERRequest())
    args = SimpleNamespace(output_dir=str(tmp_path))
    (tmp_path / "checkpoint-4").mkdir()
    atomic_write_json(tmp_path / "checkpoint-4" / TRAINING_STATE_FILE, {"training_seconds": 41.5})
    callback.on_train_begin(args, SimpleNamespace(global_step=4), None)
    assert callback.before == 41.5 and callback.elapsed() >= 41.5
    callback.on_save(args, SimpleNamespace(global_step=4, is_world_process_zero=True), None)
    saved = json.loads((tmp_path / "checkpoint-4" / TRAINING_STATE_FILE).read_text())["training_seconds"]
    assert 41.5 <= saved < 45.0
    callback.on_train_begin(args, SimpleNamespace(global_step=0), None)  # a fresh run starts at 0
    assert callback.before == 0.0


def test_the_aer_refuses_times_that_cannot_be_real():
    from p2d_llamafactory.report.aer import aer_record

    assert aer_record({"data_scoring_seconds": 5.0}, 15.0, 100.0, "measured", {})["aer"] == 0.2
    for selection, training, t_fft, named in [
        ({"data_scoring_seconds": -1.0}, 15.0, 100.0, "data_scoring_seconds -1.0"),
        ({}, float("nan"), 100.0, "training_seconds nan"),
        ({}, 15.0, 0.0, "t_fft_seconds 0.0"),
        ({}, 15.0, float("inf"), "t_fft_seconds inf"),
    ]:
        with pytest.raises(ValueError, match=f"finite times >= 0 and a t_FFT > 0; got .*{named}"):
            aer_record(selection, training, t_fft, "measured", {})
