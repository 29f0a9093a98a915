"""AER through the stock ``llamafactory-cli train``: the measured and estimated t_FFT paths, the trainer_log line
LLaMA-Board reads, and a stock full fine-tuning run as the reference."""

import json

import pytest

from p2d_llamafactory.report.aer import reference_training_seconds
from tests.helpers.cli import run_cli, train_config, write_yaml


def test_measured_and_estimated_aer_through_the_cli(tiny_models, tiny_dataset_dir, tmp_path):
    from llamafactory.webui.control import get_trainer_info

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
        # LLaMA-Board's monitor parses the log with the P2D line last: progress label, loss plot, running log
        _, progress, info = get_trainer_info("en", str(out), do_train=True)
        assert progress.visible and progress.value == 100.0 and progress.label.startswith("Running 3/3: ")
        assert "loss_viewer" in info
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


@pytest.mark.core
def test_a_stock_full_run_writes_nothing_of_the_plugin_and_is_an_aer_reference(
    tiny_models, tiny_dataset_dir, tmp_path
):
    """A full fine-tuning run without ``p2d_*`` keys is LLaMA-Factory's alone (no P2D file, log line or callback);
    a later P2D run takes its t_FFT from LLaMA-Factory's own train_results.json."""
    config = train_config(
        tiny_models["llama"], tiny_dataset_dir, tmp_path / "fft", finetuning_type="full", max_steps=2
    )
    for key in ("p2d_head_ratio", "p2d_fhi_samples", "p2d_fhi_steps", "p2d_fhi_lr"):
        config.pop(key)
    log = run_cli("train", str(write_yaml(tmp_path / "fft.yaml", config)), cwd=tmp_path)
    written = sorted(str(path.relative_to(tmp_path / "fft")) for path in (tmp_path / "fft").rglob("*"))
    assert "checkpoint-2" in written and "train_results.json" in written
    assert [name for name in written if "p2d" in name] == [] and "P2D" not in log
    log_lines = [json.loads(line) for line in (tmp_path / "fft" / "trainer_log.jsonl").read_text().splitlines()]
    assert log_lines and not any(key.startswith("p2d_") for line in log_lines for key in line)
    runtime = json.loads((tmp_path / "fft" / "train_results.json").read_text())["train_runtime"]
    assert reference_training_seconds(tmp_path / "fft") == (runtime, str(tmp_path / "fft" / "train_results.json"))
