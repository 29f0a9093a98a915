"""Distributed training through ``llamafactory-cli train`` with torchrun and DeepSpeed (two CPU processes, gloo)."""

import json

import torch
from safetensors.torch import load_file

from p2d_llamafactory.data.cache import SCORES_FILE
from p2d_llamafactory.heads.headset import HEADS_FILE, HeadSet
from tests.helpers.cli import cli_result, run_cli, torchrun_env, train_config, write_yaml


DS_ZERO2 = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "zero_allow_untested_optimizer": True,
    "bf16": {"enabled": "auto"},
    "zero_optimization": {"stage": 2, "overlap_comm": False, "reduce_scatter": True, "contiguous_gradients": True},
}


def test_deepspeed_zero3_is_refused_before_anything_is_written(tiny_models, tiny_dataset_dir, tmp_path):
    (tmp_path / "z3.json").write_text(json.dumps({**DS_ZERO2, "zero_optimization": {"stage": 3}}))
    config = train_config(
        tiny_models["llama"], tiny_dataset_dir, tmp_path / "out", deepspeed=str(tmp_path / "z3.json")
    )
    result = cli_result(
        "train", str(write_yaml(tmp_path / "z3.yaml", config)), cwd=tmp_path, timeout=600, **torchrun_env(1)
    )
    assert result.returncode != 0
    assert "supports DeepSpeed ZeRO stages 0-2, not ZeRO-3" in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


def test_deepspeed_zero2_on_two_processes_matches_one_process(tiny_models, tiny_dataset_dir, tmp_path):
    (tmp_path / "ds_z2.json").write_text(json.dumps(DS_ZERO2))
    common = dict(
        p2d_data_selection="p2d",
        p2d_data_ratio=0.5,
        p2d_icl_scoring="teacher_forced",
        p2d_data_ppl_samples=0,
        p2d_head_lr_scale=1,
    )
    single_config = train_config(tiny_models["llama"], tiny_dataset_dir, tmp_path / "single", **common)
    run_cli("train", str(write_yaml(tmp_path / "single.yaml", single_config)), cwd=tmp_path)
    config = train_config(
        tiny_models["llama"],
        tiny_dataset_dir,
        tmp_path / "out",
        deepspeed=str(tmp_path / "ds_z2.json"),
        ddp_backend="gloo",
        per_device_train_batch_size=2,  # global batch 4, as the one-process run's
        **common,
    )
    log = run_cli("train", str(write_yaml(tmp_path / "ds.yaml", config)), cwd=tmp_path, **torchrun_env(2))
    assert "world size: 2" in log and "distributed training: True" in log
    assert "the micro-batches shared by 2 ranks" in log  # stage I by both ranks together
    assert "reusing the identical" not in log  # no rank waits for another's files
    head_set = HeadSet.load(tmp_path / "out" / HEADS_FILE)
    assert head_set.selected == HeadSet.load(tmp_path / "single" / HEADS_FILE).selected
    selected = [json.loads((tmp_path / d / SCORES_FILE).read_text())["selected"] for d in ("single", "out")]
    assert selected[0] == selected[1]
    weights = load_file(tmp_path / "out" / "adapter_model.safetensors")
    single = load_file(tmp_path / "single" / "adapter_model.safetensors")
    assert {k.split(".self_attn")[0].split("layers.")[1] for k in weights} == {str(l) for l, _ in head_set.selected}
    for key, value in weights.items():
        if "q_proj.lora_B" in key or "o_proj.lora_A" in key:  # fixed one-hot factors: untouched by ZeRO-2
            assert set(value.unique().tolist()) == {0.0, 1.0}, key
        else:
            assert value.abs().max() > 0, key
            assert torch.linalg.norm(value - single[key]) <= 1e-4 * torch.linalg.norm(single[key]), key
