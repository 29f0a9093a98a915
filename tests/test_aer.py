"""AER: arithmetic, the measured and estimated t_FFT paths, the trainer_log line, and bad input."""

import json

import pytest

from p2d_llamafactory.report.aer import aer_record, reference_training_seconds
from tests.test_cli import run_cli, train_config, write_yaml


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


def _parse(args):
    from llamafactory.hparams import get_train_args

    return get_train_args(args)


def _args(tiny_models, tiny_dataset_dir, tmp_path, **kw):
    return {
        "model_name_or_path": str(tiny_models["llama"]),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "dataset": "p2d_demo",
        "dataset_dir": str(tiny_dataset_dir),
        "template": "chatml",
        "output_dir": str(tmp_path / "out"),
        "report_to": "none",
        **kw,
    }


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
            _parse(_args(tiny_models, tiny_dataset_dir, tmp_path, **overrides))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_measured_and_estimated_aer_through_the_cli(tiny_models, tiny_dataset_dir, tmp_path):
    reference = tmp_path / "fft"
    reference.mkdir()
    (reference / "train_results.json").write_text(json.dumps({"train_runtime": 200.0}))
    for mode, extra in {
        "measured": {"p2d_aer_reference": str(reference)},
        "estimated": {"p2d_aer_estimate_steps": 2},
    }.items():
        out = tmp_path / mode
        config = train_config(
            tiny_models["llama"], tiny_dataset_dir, out, p2d_data_selection="random", max_steps=3, **extra
        )
        log = run_cli("train", str(write_yaml(tmp_path / f"{mode}.yaml", config)), cwd=tmp_path)
        record = json.loads((out / "p2d_aer.json").read_text())
        timings = json.loads((out / "p2d_timings.json").read_text())
        assert record["mode"] == mode and f"P2D: AER = {record['aer']:.4f}" in log
        selection = timings["head_identification_seconds"] + timings["data_scoring_seconds"]
        assert record["selection_seconds"] == pytest.approx(selection)
        assert (
            record["training_seconds"] == pytest.approx(timings["training_seconds"]) and record["training_seconds"] > 0
        )
        assert record["aer"] == pytest.approx((selection + record["training_seconds"]) / record["t_fft_seconds"])
        last = json.loads((out / "trainer_log.jsonl").read_text().splitlines()[-1])
        assert last["p2d_aer"] == pytest.approx(record["aer"], abs=1e-4) and last["percentage"] == 100.0
        _llamaboard_reads(out)
        if mode == "measured":
            assert record["t_fft_seconds"] == 200.0
        else:
            inputs = record["t_fft_inputs"]
            assert inputs["estimate_steps"] == 2 and inputs["timed_tokens"] > 0
            recomputed = (
                inputs["timed_seconds"] / inputs["timed_tokens"] * inputs["full_data_tokens"] * inputs["epochs"]
            )
            assert record["t_fft_seconds"] == pytest.approx(recomputed)
            assert inputs["full_data_tokens"] > inputs["timed_tokens"]


def _llamaboard_reads(output_dir):
    """LLaMA-Board's monitor parses the log with the P2D line last: progress label, loss plot, running log."""
    from llamafactory.webui.control import get_trainer_info

    running_log, progress, info = get_trainer_info("en", str(output_dir), do_train=True)
    assert progress.visible and progress.value == 100.0 and progress.label.startswith("Running 3/3: ")
    assert "loss_viewer" in info


@pytest.mark.slow
def test_full_fine_tuning_on_the_full_data_is_its_own_reference(tiny_models, tiny_dataset_dir, tmp_path):
    config = train_config(
        tiny_models["llama"], tiny_dataset_dir, tmp_path / "fft", finetuning_type="full", max_steps=2
    )
    for key in ("p2d_head_ratio", "p2d_fhi_samples", "p2d_fhi_steps", "p2d_fhi_lr"):
        config.pop(key)
    run_cli("train", str(write_yaml(tmp_path / "fft.yaml", config)), cwd=tmp_path)
    record = json.loads((tmp_path / "fft" / "p2d_aer.json").read_text())
    assert record["aer"] == 1.0 and record["mode"] == "measured" and record["selection_seconds"] == 0
    assert reference_training_seconds(tmp_path / "fft")[0] == record["training_seconds"]  # usable as a reference
