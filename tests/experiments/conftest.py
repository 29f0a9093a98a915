"""The offline sweep's project folder: a toy data set, and a stub in place of llamafactory-cli and p2d-eval."""

import json
import sys

import pytest

from p2d_llamafactory.experiments.sweep import CLI_ENV, EVAL_ENV


STUB = r"""
import json, os, sys
from pathlib import Path

import yaml

mode, target = sys.argv[1], sys.argv[2]
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(f"{mode} {target} FORCE_TORCHRUN={os.environ.get('FORCE_TORCHRUN', '')}\n")
if mode == "train":
    config = yaml.safe_load(open(target))
    out = Path(config["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    if out.name in os.environ.get("STUB_FAIL", "").split(","):
        print(f"stub: {out.name} crashes", flush=True)
        sys.exit(3)
    print(f"stub: training {out.name}", flush=True)
    (out / "generated_predictions.jsonl").write_text('{"prompt": "q", "predict": "#### 1", "label": "#### 1"}\n')
    (out / "train_results.json").write_text(json.dumps({"train_runtime": 100.0}))
    if config.get("finetuning_type") == "p2d_heads" and not config.get("p2d_heads_file"):
        heads = {"method": config.get("p2d_head_selection", "w1"), "ratio": config.get("p2d_head_ratio", 0.1)}
        (out / "p2d_heads.json").write_text(json.dumps(heads))
    if config.get("finetuning_type") != "full" or config.get("p2d_data_selection", "none") != "none":
        (out / "p2d_aer.json").write_text(json.dumps({"aer": 0.5, "mode": "measured"}))
elif mode == "eval":
    out = Path(target)
    (out / "p2d_eval.json").write_text(json.dumps({"metric": "em", "score": 50.0, "num_predictions": 1}))
    print(f"stub: scored {out.name}", flush=True)
"""


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder (the cwd) with a toy data set and the stub commands in the environment."""
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data_info"
    data.mkdir()
    (data / "toy.json").write_text("[]")
    (data / "dataset_info.json").write_text(
        json.dumps({"gsm8k_local": {"file_name": "toy.json"}, "gsm8k_local_test": {"file_name": "toy.json"}})
    )
    stub = tmp_path / "stub.py"
    stub.write_text(STUB)
    log = tmp_path / "calls.log"
    log.touch()
    monkeypatch.setenv("STUB_LOG", str(log))
    monkeypatch.setenv(CLI_ENV, f"{sys.executable} {stub}")
    monkeypatch.setenv(EVAL_ENV, f"{sys.executable} {stub} eval")
    monkeypatch.delenv("FORCE_TORCHRUN", raising=False)
    monkeypatch.delenv("STUB_FAIL", raising=False)
    return tmp_path
