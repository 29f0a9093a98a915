"""The offline tools end on bad input with one line, never a traceback."""

import os

import yaml

from p2d_llamafactory.experiments.grid.cli import main as grid_main
from p2d_llamafactory.experiments.sweep.cli import main as sweep_main


def test_a_run_folder_whose_name_is_not_utf8_is_reported_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    name = os.fsdecode(b"run\xff")
    run = tmp_path / "saves" / "m" / "d" / name
    run.mkdir(parents=True)
    (run / "p2d_eval.json").write_text('{"score": 0.5, "metric": "rougeL", "num_predictions": 3}')
    config = {"model_name_or_path": "m", "output_dir": f"saves/m/d/{name}", "finetuning_type": "lora"}
    config.update(dataset="d", eval_dataset="d_test")
    (tmp_path / "run.yaml").write_bytes(yaml.safe_dump(config).encode("utf-8", "surrogateescape"))
    code = sweep_main(["run.yaml", "--collect-only", "--report-dir", "report"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("p2d-sweep: error: ") and "not UTF-8" in err and "Traceback" not in err


def test_a_spec_that_is_a_folder_is_reported_in_one_line(tmp_path, capsys):
    assert grid_main(["--spec", str(tmp_path), "--check"]) == 2
    assert capsys.readouterr().err.startswith("p2d-grid: error: ")
