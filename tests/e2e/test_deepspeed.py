"""Distributed training through ``llamafactory-cli train`` with torchrun and DeepSpeed (two CPU processes, gloo):
ZeRO-2 and ZeRO-3 runs of stages I, II and III against one process."""

import json

import pytest
import torch
from safetensors.torch import load_file

from p2d_llamafactory.files import HEADS_FILE, SCORES_FILE
from p2d_llamafactory.heads.headset import HeadSet
from tests.helpers.cli import cli_result, run_cli, run_distributed_cli, torchrun_env, train_config, write_yaml


DS_CONFIG = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "zero_allow_untested_optimizer": True,
    "bf16": {"enabled": "auto"},
}
ZERO = {
    2: {"stage": 2, "overlap_comm": False, "reduce_scatter": True, "contiguous_gradients": True},
    3: {
        "stage": 3,
        "overlap_comm": False,
        "contiguous_gradients": True,
        "stage3_gather_16bit_weights_on_model_save": True,
    },
}
COMMON = dict(p2d_data_ratio=0.5, p2d_icl_scoring="teacher_forced", p2d_data_ppl_samples=0)


def _ds_config(tmp_path, stage: int) -> str:
    path = tmp_path / f"ds_z{stage}.json"
    path.write_text(json.dumps({**DS_CONFIG, "zero_optimization": ZERO[stage]}))
    return str(path)


@pytest.fixture(scope="module")
def single(tiny_models, tiny_dataset_dir, tmp_path_factory):
    """The one-process run (global batch 4) of a data selection, which the DeepSpeed runs are compared with."""
    runs = {}

    def run(selection: str):
        if selection not in runs:
            root = tmp_path_factory.mktemp(f"single_{selection}")
            config = train_config(
                tiny_models["llama"],
                tiny_dataset_dir,
                root / "out",
                p2d_head_lr_scale=1,
                p2d_data_selection=selection,
                **COMMON,
            )
            run_cli("train", str(write_yaml(root / "single.yaml", config)), cwd=root)
            runs[selection] = root / "out"
        return runs[selection]

    return run


@pytest.mark.parametrize(
    "stage,selection",
    [(2, "p2d"), (3, "p2d"), (3, "random")],
    ids=["zero2-p2d", "zero3-p2d", "zero3-random"],  # random data: stage I runs in init_adapter, on a whole copy
)
def test_deepspeed_on_two_processes_matches_one_process(
    single, tiny_models, tiny_dataset_dir, tmp_path, stage, selection
):
    reference_dir = single(selection)
    config = train_config(
        tiny_models["llama"],
        tiny_dataset_dir,
        tmp_path / "out",
        deepspeed=_ds_config(tmp_path, stage),
        ddp_backend="gloo",
        per_device_train_batch_size=2,  # global batch 4, as the one-process run's
        p2d_head_lr_scale=1,
        p2d_data_selection=selection,
        **COMMON,
    )
    path = str(write_yaml(tmp_path / "ds.yaml", config))
    log = run_distributed_cli("train", path, cwd=tmp_path, output_dir=tmp_path / "out", **torchrun_env(2))
    assert "world size: 2" in log and "distributed training: True" in log
    assert "the micro-batches shared by 2 ranks" in log  # stage I by both ranks together
    assert "reusing the identical" not in log  # no rank waits for another's files
    head_set = HeadSet.load(tmp_path / "out" / HEADS_FILE)
    assert head_set.selected == HeadSet.load(reference_dir / HEADS_FILE).selected
    selected = [json.loads((d / SCORES_FILE).read_text())["selected"] for d in (reference_dir, tmp_path / "out")]
    assert selected[0] == selected[1]
    weights = load_file(tmp_path / "out" / "adapter_model.safetensors")
    reference = load_file(reference_dir / "adapter_model.safetensors")
    assert weights.keys() == reference.keys()  # under ZeRO-3 too, the fixed one-hot factors are saved
    assert {k.split(".self_attn")[0].split("layers.")[1] for k in weights} == {str(l) for l, _ in head_set.selected}
    for key, value in weights.items():
        if "q_proj.lora_B" in key or "o_proj.lora_A" in key:  # the fixed one-hot factors
            assert torch.equal(value, reference[key]), key
        else:
            assert value.abs().max() > 0, key
            # measured: 7e-7 relative (ZeRO-3, p2d), 6e-6 (ZeRO-3, random data: stage I's micro-batches are the
            # per-device batch, 2 here and 4 in one process, so its heads' scores differ by round-off)
            assert torch.linalg.norm(value - reference[key]) <= 1e-4 * torch.linalg.norm(reference[key]), key


def test_lofit_under_zero3_is_refused_before_anything_is_written(tiny_models, tiny_dataset_dir, tmp_path):
    config = train_config(tiny_models["llama"], tiny_dataset_dir, tmp_path / "out", deepspeed=_ds_config(tmp_path, 3))
    config["finetuning_type"] = "lofit"
    result = cli_result(
        "train", str(write_yaml(tmp_path / "z3.yaml", config)), cwd=tmp_path, timeout=600, **torchrun_env(1)
    )
    assert result.returncode != 0
    assert "supports DeepSpeed ZeRO stages 0-2, not ZeRO-3" in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()
