"""Plain DDP (torchrun, no DeepSpeed) training of ``p2d_heads`` on two CPU processes (gloo)."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from p2d_llamafactory.files import HEADS_FILE, SCORES_FILE
from p2d_llamafactory.heads.headset import HeadSet
from tests.helpers.cli import run_cli, run_distributed_cli, torchrun_env, train_config, write_yaml


def _train(tmp_path, name, nproc, **overrides):
    config = train_config(
        overrides.pop("model"),
        overrides.pop("dataset_dir"),
        tmp_path / name,
        ddp_backend="gloo" if nproc > 1 else None,
        p2d_head_lr_scale=1,
        **overrides,
    )
    path = str(write_yaml(tmp_path / f"{name}.yaml", config))
    if nproc > 1:
        log = run_distributed_cli("train", path, cwd=tmp_path, output_dir=tmp_path / name, **torchrun_env(nproc))
    else:
        log = run_cli("train", path, cwd=tmp_path)
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


def test_two_processes_share_stages_one_and_two_and_match_one_process(tiny_models, tiny_dataset_dir, tmp_path):
    """P2D data selection with p2d_heads: stage I's micro-batches and stage II's probe batches are shared by the two
    ranks (outside LLaMA-Factory's main_process_first), and heads, selection and adapter equal one process's."""
    common = dict(
        model=tiny_models["llama"],
        dataset_dir=tiny_dataset_dir,
        p2d_data_selection="p2d",
        p2d_data_ratio=0.5,
        p2d_icl_scoring="teacher_forced",
        p2d_data_ppl_samples=0,
        p2d_fhi_samples=16,
        per_device_train_batch_size=4,
    )
    _, single = _train(tmp_path, "single", 1, **common)
    log, ddp = _train(tmp_path, "ddp", 2, **{**common, "per_device_train_batch_size": 2})
    assert "the micro-batches shared by 2 ranks" in log
    assert "reusing the identical" not in log  # no rank waits for another's files
    one, two = (HeadSet.load(tmp_path / name / HEADS_FILE) for name in ("single", "ddp"))
    assert two.selected == one.selected
    # stage I's micro-batch is the per-device batch (4, and 2 per rank): the same full-batch step up to float32
    # round-off, which W1 at tau = 0.1 amplifies (measured: 1.8e-5 relative at most)
    assert np.allclose(two.scores, one.scores, rtol=1e-4, atol=0)
    scores = [json.loads((tmp_path / name / SCORES_FILE).read_text()) for name in ("single", "ddp")]
    assert scores[1]["selected"] == scores[0]["selected"] and scores[1]["scores"] == scores[0]["scores"]
    for key in single:
        if "q_proj.lora_B" in key or "o_proj.lora_A" in key:
            continue
        assert torch.linalg.norm(ddp[key] - single[key]) <= 1e-4 * torch.linalg.norm(single[key]), key


def test_lofit_step_one_runs_once_under_ddp_and_every_rank_trains_its_heads(tiny_models, tiny_dataset_dir, tmp_path):
    """LoFiT's step 1 (head selection) runs on rank 0 only; the other rank trains the heads rank 0 chose, and the
    adapter equals one process's at the same global batch."""
    common = dict(
        model=tiny_models["llama"],
        dataset_dir=tiny_dataset_dir,
        finetuning_type="lofit",
        p2d_heads_file=None,
        p2d_lofit_select_epochs=1.0,
        learning_rate=1e-2,
    )
    # step 1 takes the per-device batch: 2 in both runs; the one process accumulates 2 micro-batches (global batch 4)
    single_log, single = _train(
        tmp_path, "single", 1, per_device_train_batch_size=2, gradient_accumulation_steps=2, **common
    )
    log, ddp = _train(tmp_path, "ddp", 2, per_device_train_batch_size=2, **common)
    assert "world size: 2" in log
    assert single_log.count("LoFiT: step 1, head selection") == 1
    assert log.count("LoFiT: step 1, head selection") == 1  # once, not once per rank
    one, two = (json.loads((tmp_path / name / "p2d_lofit_heads.json").read_text()) for name in ("single", "ddp"))
    assert two["selected"] == one["selected"] and two["scores"] == one["scores"]
    assert single.keys() == ddp.keys()
    trained = [key for key in single if single[key].abs().max() > 0]  # the layers without a selected head stay 0
    assert trained
    for key in single:
        assert torch.linalg.norm(ddp[key] - single[key]) <= 1e-4 * torch.linalg.norm(single[key]), key
