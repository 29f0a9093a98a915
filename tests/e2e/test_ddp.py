"""Plain DDP (torchrun, no DeepSpeed) training of ``p2d_heads`` on two CPU processes (gloo)."""

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.cli import run_cli, torchrun_env, train_config, write_yaml


def _train(tmp_path, name, nproc, **overrides):
    config = train_config(
        overrides.pop("model"),
        overrides.pop("dataset_dir"),
        tmp_path / name,
        ddp_backend="gloo" if nproc > 1 else None,
        p2d_head_lr_scale=1,
        **overrides,
    )
    env = torchrun_env(nproc) if nproc > 1 else {}
    log = run_cli("train", str(write_yaml(tmp_path / f"{name}.yaml", config)), cwd=tmp_path, **env)
    return log, load_file(tmp_path / name / "adapter_model.safetensors")


@pytest.mark.parametrize("checkpointing", [True, False], ids=["gradient_checkpointing", "no_checkpointing"])
def test_two_process_ddp_matches_one_process_at_the_same_global_batch(
    tiny_models, tiny_dataset_dir, tmp_path, checkpointing
):
    common = dict(model=tiny_models["llama"], dataset_dir=tiny_dataset_dir, p2d_heads_file=None)
    common["disable_gradient_checkpointing"] = not checkpointing  # LLaMA-Factory checkpoints by default
    _, single = _train(tmp_path, "single", 1, per_device_train_batch_size=4, **common)
    log, ddp = _train(tmp_path, "ddp", 2, per_device_train_batch_size=2, **common)  # global batch 4 either way
    assert "world size: 2" in log and "ddp_find_unused_parameters` to False" in log
    assert single.keys() == ddp.keys()
    for key in single:
        if "q_proj.lora_B" in key or "o_proj.lora_A" in key:
            continue  # the fixed one-hot factors
        delta_single, delta_ddp = single[key], ddp[key]
        assert delta_single.abs().max() > 0, key  # it trained
        # the same examples per optimizer step; the loss is normalised over the global batch's tokens (measured:
        # relative difference 2e-8, float round-off of the all-reduce)
        assert torch.linalg.norm(delta_ddp - delta_single) <= 1e-5 * torch.linalg.norm(delta_single), key
