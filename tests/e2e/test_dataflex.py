"""Beside DataFlex 1.1.0 (``dataflex-cli train``, installed ``--no-deps`` by scripts/setup.sh): its own runs work with
the plugin installed; with ``p2d_*`` keys, P2D's static selection (or head training) composes with DataFlex's
in-training selection, and is refused by name where DataFlex replaces LLaMA-Factory's ``get_dataset``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.examples import demo_examples


pytest.importorskip("dataflex", reason="DataFlex is not installed (scripts/setup.sh installs dataflex==1.1.0)")
DATAFLEX_CLI = str(Path(sys.executable).parent / "dataflex-cli")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("dataflex_data")
    scored = demo_examples(48)
    for i, row in enumerate(scored):
        row["score"] = (i * 37 % 48) / 48  # DataFlex's static reorder reads a raw `score` column
    files = {
        "p2d_demo": demo_examples(48),
        "p2d_demo_b": demo_examples(32, seed=3),
        "p2d_eval": demo_examples(8, seed=7),
        "p2d_scored": scored,
    }
    for name, rows in files.items():
        (data / f"{name}.json").write_text(json.dumps(rows))
    (data / "dataset_info.json").write_text(json.dumps({name: {"file_name": f"{name}.json"} for name in files}))
    return data


def _components(path: Path) -> Path:
    """DataFlex's components, with caches beside them: its selectors reuse a cached ``step_N.json`` by step number
    alone, so runs on other data (a P2D-selected subset) must not share a cache dir."""
    cache = {"score_batch_size": 8, "score_num_workers": 0}
    loss = {"cache_dir": str(path.parent / "loss_cache"), "focus": "medium", **cache}
    lego = {"cache_dir": str(path.parent / "lego_cache"), **cache}
    lego["stages"] = [{"family": "selector", "component": "loss", "mode": "draw"}]
    sorting = {"kind": "static", "pattern": "sorting", "apply_at": "raw", "polarity": "higher_later"}
    sorting |= {"ascending": True, "window_size": 0, "seed": 42, "score_source": "precomputed"}
    sorting["score_params"] = {"score_field": "score"}
    components = {
        "selectors": {"loss": {"name": "loss", "params": loss}},
        "mixers": {"random": {"name": "random", "params": {"seed": 42}}},
        "pipelines": {"loss_only": {"name": "loss_only", "params": lego}},
        "reorders": {"sorting": {"name": "sorting", "params": sorting}},
    }
    path.write_text(yaml.safe_dump(components))
    return path


def _config(model: Path, data: Path, out: Path, **overrides) -> dict:
    """DataFlex's examples/train_lora/selectors/loss.yaml (its loss selector with LoRA), sized for a tiny model."""
    config = {
        "model_name_or_path": str(model),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "lora_rank": 4,
        "lora_alpha": 8,
        "dataset": "p2d_demo",
        "dataset_dir": str(data),
        "template": "chatml",
        "cutoff_len": 128,
        "preprocessing_num_workers": 1,
        "dataloader_num_workers": 0,
        "seed": 42,
        "overwrite_cache": True,
        "output_dir": str(out),
        "logging_steps": 1,
        "save_steps": 100,
        "report_to": "none",
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-4,
        "num_train_epochs": 1.0,
        "train_type": "dynamic_select",
        "components_cfg_file": str(_components(out.parent / "components.yaml")),
        "component_name": "loss",
        "warmup_step": 2,
        "update_step": 2,
        "update_times": 2,
        "eval_dataset": "p2d_eval",
        "per_device_eval_batch_size": 2,
        "eval_strategy": "steps",
        "eval_steps": 3,
    }
    config.update(overrides)
    return {key: value for key, value in config.items() if value is not None}


def _train(tmp_path: Path, config: dict, **env: str) -> tuple[int, str]:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [DATAFLEX_CLI, "train", str(path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        timeout=600,
    )
    return result.returncode, result.stdout + result.stderr


SELECT = {"p2d_data_selection": "random", "p2d_data_ratio": 0.5}
HEADS = {"finetuning_type": "p2d_heads", "lora_target": None, "lora_rank": None, "lora_alpha": None}
HEADS |= {"p2d_head_ratio": 0.25, "p2d_fhi_samples": 16, "p2d_fhi_steps": 2, "p2d_fhi_lr": 1e-3}
REPLACES_GET_DATASET = {  # DataFlex modes that load the data with their own get_dataset
    "dynamic_mix": {
        "train_type": "dynamic_mix",
        "component_name": "random",
        "dataset": "p2d_demo,p2d_demo_b",
        "mixture_sample_rule": "mixture",
        "init_mixture_proportions": [0.5, 0.5],
    },
    "dynamic_lego": {
        "train_type": "dynamic_lego",
        "component_name": "loss_only",
        "dataset": "p2d_demo,p2d_demo_b",
        "init_mixture_proportions": [0.5, 0.5],
    },
    "dynamic_reorder": {"train_type": "dynamic_reorder", "component_name": "sorting", "dataset": "p2d_scored"},
}


@pytest.mark.parametrize("disabled", ["", "1"], ids=["plugin on", "plugin off"])
def test_dataflex_loss_selector_with_lora_runs_unchanged(tiny_models, datasets, tmp_path, disabled):
    out = tmp_path / "out"
    code, log = _train(tmp_path, _config(tiny_models["llama"], datasets, out), P2D_LLAMAFACTORY_DISABLE=disabled)
    assert code == 0, log[-3000:]
    assert "step budget = 6 optimizer steps" in log and (out / "adapter_model.safetensors").is_file()
    assert not [path.name for path in out.rglob("*p2d*")] and "P2D" not in log


@pytest.mark.parametrize("mode", sorted(REPLACES_GET_DATASET))
def test_dataflex_modes_with_their_own_data_loading_run_unchanged(tiny_models, datasets, tmp_path, mode):
    config = _config(tiny_models["llama"], datasets, tmp_path / "out", **REPLACES_GET_DATASET[mode])
    code, log = _train(tmp_path, config)
    assert code == 0, log[-3000:]


def test_p2d_selection_first_then_dataflex_selects_in_training(tiny_models, datasets, tmp_path):
    out = tmp_path / "out"
    code, log = _train(tmp_path, _config(tiny_models["llama"], datasets, out, **SELECT))
    assert code == 0, log[-3000:]
    assert "keeps 24 of 48 training examples" in log  # P2D's static selection first ...
    assert "Calculating loss for 24 samples" in log  # ... then DataFlex's loss selector scores only that subset
    assert "Calculating loss for 48 samples" not in log
    assert json.loads((out / "p2d_timings.json").read_text())["training_seconds"] > 0


def test_p2d_heads_train_under_dataflex_selection(tiny_models, datasets, tmp_path):
    out = tmp_path / "out"
    code, log = _train(tmp_path, _config(tiny_models["llama"], datasets, out, **HEADS))
    assert code == 0, log[-3000:]
    assert "P2D: training 3 of 12 heads" in log and (out / "p2d_heads.json").is_file()


@pytest.mark.parametrize("p2d", [SELECT, HEADS], ids=["selection", "p2d_heads"])
@pytest.mark.parametrize("mode", sorted(REPLACES_GET_DATASET))
def test_p2d_is_refused_by_name_where_dataflex_replaces_get_dataset(tiny_models, datasets, tmp_path, mode, p2d):
    out = tmp_path / "out"
    config = _config(tiny_models["llama"], datasets, out, **REPLACES_GET_DATASET[mode], **p2d)
    code, log = _train(tmp_path, config)
    assert code != 0
    assert (
        "P2D needs LLaMA-Factory's `get_dataset`, but `llamafactory.train.sft.workflow.get_dataset` is replaced" in log
    )
    assert f"(DataFlex `train_type: {mode}`)" in log, log[-3000:]
    assert "trainable params" not in log and not out.exists()  # refused while parsing, before the model loads
