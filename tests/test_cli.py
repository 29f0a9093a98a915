"""End to end through the stock ``llamafactory-cli``: train, resume, export, chat-style loading, plain peft."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from p2d_llamafactory.adapter import apply_head_slices, count_slice_params
from p2d_llamafactory.heads.headset import HEADS_FILE, HEATMAP_FILE, HeadSet
from p2d_llamafactory.heads.layout import find_attention_layout


CLI = str(Path(sys.executable).parent / "llamafactory-cli")
pytestmark = pytest.mark.slow


def run_cli(*args: str, cwd: Path, **env: str) -> str:
    result = subprocess.run(
        [CLI, *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **env}, timeout=900
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-4000:]
    return log


def train_config(model_dir: Path, dataset_dir: Path, output_dir: Path, **overrides) -> dict:
    config = {
        "model_name_or_path": str(model_dir),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "p2d_heads",
        "p2d_head_ratio": 0.25,
        "p2d_fhi_samples": 16,
        "p2d_fhi_steps": 2,
        "p2d_fhi_lr": 1e-3,
        "dataset": "p2d_demo",
        "dataset_dir": str(dataset_dir),
        "template": "chatml",
        "cutoff_len": 128,
        "preprocessing_num_workers": 1,
        "output_dir": str(output_dir),
        "logging_steps": 1,
        "save_steps": 2,
        "report_to": "none",
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "cosine",
        "max_steps": 4,
        "seed": 11,
    }
    config.update(overrides)
    return config


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def trained(tiny_models, tiny_dataset_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    config = train_config(
        tiny_models["qwen2"], tiny_dataset_dir, root / "out", bf16=True, use_cpu=True
    )  # mixed precision
    log = run_cli("train", str(write_yaml(root / "train.yaml", config)), cwd=root)
    return {"root": root, "out": root / "out", "config": config, "log": log, "model": tiny_models["qwen2"]}


def test_train_writes_adapter_head_set_and_heatmap(trained):
    out, log = trained["out"], trained["log"]
    head_set = HeadSet.load(out / HEADS_FILE)
    assert len(head_set.selected) == 3 and head_set.method == "w1" and head_set.ratio == 0.25
    assert len(head_set.proxy_loss) == 2 and head_set.timings["total_seconds"] > 0
    assert (out / HEATMAP_FILE).stat().st_size > 1000
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and set(config["rank_pattern"].values()) <= {16, 32, 48}
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        layout = find_attention_layout(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(trained["model"])))
    expected = count_slice_params(layout, head_set.selected, ("q", "o"))
    assert f"trainable params: {expected:,} " in log
    assert "P2D proxy training (FHI)" in log and "P2D head scoring (w1)" in log  # progress bars
    logs = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
    assert [entry["current_steps"] for entry in logs if "loss" in entry] == [1, 2, 3, 4]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_stock_export_chat_loading_and_plain_peft_reproduce_the_trained_model(trained, tiny_tokenizer):
    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out, root, base_dir = trained["out"], trained["root"], trained["model"]
    export = {
        "model_name_or_path": str(base_dir),
        "adapter_name_or_path": str(out),
        "finetuning_type": "lora",
        "template": "chatml",
        "export_dir": str(root / "merged"),
    }
    run_cli("export", str(write_yaml(root / "export.yaml", export)), cwd=root, P2D_LLAMAFACTORY_DISABLE="1")
    ids = torch.randint(4, len(tiny_tokenizer), (2, 12), generator=torch.Generator().manual_seed(0))

    # the trained model, rebuilt in its training form (fast head-slice forward) with the trained weights
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    head_set = HeadSet.load(out / HEADS_FILE)
    trained_model = apply_head_slices(base, find_attention_layout(base), head_set.selected, ("q", "o"))
    result = set_peft_model_state_dict(trained_model, load_file(out / "adapter_model.safetensors"))
    assert not result.unexpected_keys
    reference = _logits(trained_model.eval(), ids)

    merged = AutoModelForCausalLM.from_pretrained(root / "merged", dtype=torch.float32)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), out)
    from llamafactory.hparams import get_infer_args
    from llamafactory.model import load_model, load_tokenizer

    model_args, _, finetuning_args, _ = get_infer_args(
        {**export, "finetuning_type": "p2d_heads", "export_dir": None, "infer_dtype": "float32"}
    )
    chat_model = load_model(load_tokenizer(model_args)["tokenizer"], model_args, finetuning_args)
    untrained = _logits(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), ids)
    assert (reference - untrained).abs().max() > 1e-3
    for name, model in {"export": merged, "plain peft": plain, "chat (p2d_heads)": chat_model}.items():
        diff = (reference - _logits(model.eval(), ids)).abs().max()
        assert diff <= 1e-5, f"{name}: {diff}"


def test_resume_from_checkpoint_matches_the_uninterrupted_run(trained):
    from safetensors.torch import load_file

    root = trained["root"]
    resumed = root / "resumed"
    resumed.mkdir()
    shutil.copytree(trained["out"] / "checkpoint-2", resumed / "checkpoint-2")
    shutil.copy(trained["out"] / HEADS_FILE, resumed / HEADS_FILE)
    config = {**trained["config"], "output_dir": str(resumed)}
    log = run_cli("train", str(write_yaml(root / "resume.yaml", config)), cwd=root)
    assert "Resuming training from" in log
    assert "reusing the identical head identification" in log  # finished stage I work is not redone
    assert "P2D proxy training (FHI)" not in log
    state = json.loads((resumed / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    final, uninterrupted = (
        load_file(resumed / "adapter_model.safetensors"),
        load_file(trained["out"] / "adapter_model.safetensors"),
    )
    assert final.keys() == uninterrupted.keys()
    for key in final:
        torch.testing.assert_close(final[key], uninterrupted[key], rtol=0, atol=1e-6, msg=key)


def test_one_hot_factors_stay_fixed_through_training(trained):
    from safetensors.torch import load_file

    weights = load_file(trained["out"] / "adapter_model.safetensors")
    for key, value in weights.items():
        fixed = ("q_proj.lora_B" in key) or ("o_proj.lora_A" in key)
        if fixed:
            assert set(value.unique().tolist()) == {0.0, 1.0} and int(value.sum()) == min(value.shape), key
        else:
            assert value.abs().max() > 0, key  # trained from zero
    assert re.search(r"trainable params: [\d,]+ \|\|", trained["log"])


DS_ZERO2 = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "zero_allow_untested_optimizer": True,
    "bf16": {"enabled": "auto"},
    "zero_optimization": {"stage": 2, "overlap_comm": False, "reduce_scatter": True, "contiguous_gradients": True},
}


def _torchrun_env(nproc: int) -> dict[str, str]:
    return {
        "FORCE_TORCHRUN": "1",
        "NPROC_PER_NODE": str(nproc),
        "DS_ACCELERATOR": "cpu",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # torchrun
    }


def test_deepspeed_zero3_is_refused_before_anything_is_written(tiny_models, tiny_dataset_dir, tmp_path):
    (tmp_path / "z3.json").write_text(json.dumps({**DS_ZERO2, "zero_optimization": {"stage": 3}}))
    config = train_config(
        tiny_models["llama"], tiny_dataset_dir, tmp_path / "out", deepspeed=str(tmp_path / "z3.json")
    )
    result = subprocess.run(
        [CLI, "train", str(write_yaml(tmp_path / "z3.yaml", config))],
        capture_output=True,
        text=True,
        env={**os.environ, **_torchrun_env(1)},
        timeout=600,
    )
    assert result.returncode != 0
    assert "supports DeepSpeed ZeRO stages 0-2, not ZeRO-3" in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


def test_deepspeed_zero2_on_two_processes(tiny_models, tiny_dataset_dir, tmp_path):
    from safetensors.torch import load_file

    (tmp_path / "ds_z2.json").write_text(json.dumps(DS_ZERO2))
    config = train_config(
        tiny_models["llama"],
        tiny_dataset_dir,
        tmp_path / "out",
        deepspeed=str(tmp_path / "ds_z2.json"),
        ddp_backend="gloo",
        p2d_data_selection="p2d",
        p2d_data_ratio=0.5,
        p2d_icl_scoring="teacher_forced",
        p2d_data_ppl_samples=0,
    )
    log = run_cli("train", str(write_yaml(tmp_path / "ds.yaml", config)), cwd=tmp_path, **_torchrun_env(2))
    assert "world size: 2" in log and "distributed training: True" in log
    assert log.count("P2D proxy training (FHI)") >= 1
    assert "reusing the identical head identification" in log  # rank 1 reads what rank 0 wrote
    assert "reusing the identical data scores" in log  # rank 1 does not probe again
    head_set = HeadSet.load(tmp_path / "out" / HEADS_FILE)
    weights = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert {k.split(".self_attn")[0].split("layers.")[1] for k in weights} == {str(l) for l, _ in head_set.selected}
    for key, value in weights.items():
        if "q_proj.lora_B" in key or "o_proj.lora_A" in key:  # fixed one-hot factors: untouched by ZeRO-2
            assert set(value.unique().tolist()) == {0.0, 1.0}, key
        else:
            assert value.abs().max() > 0, key
