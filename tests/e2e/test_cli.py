"""End to end through the stock ``llamafactory-cli``: train, resume, export, chat-style loading, plain peft."""

import json
import re

import pytest
import torch

from p2d_llamafactory.adapter import apply_head_slices, count_slice_params
from p2d_llamafactory.files import HEADS_FILE, HEATMAP_FILE
from p2d_llamafactory.heads.headset import HeadSet
from p2d_llamafactory.heads.layout import find_attention_layout
from tests.helpers.cli import adapter_config, assert_same_adapters, resume_run, run_cli, train_config, write_yaml
from tests.helpers.tiny import logits, random_ids


pytestmark = pytest.mark.core


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


def test_stock_export_chat_loading_and_plain_peft_reproduce_the_trained_model(trained, tiny_tokenizer):
    from peft import PeftModel, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out, root, base_dir = trained["out"], trained["root"], trained["model"]
    export = adapter_config(base_dir, out, "lora", export_dir=str(root / "merged"))
    run_cli("export", str(write_yaml(root / "export.yaml", export)), cwd=root, P2D_LLAMAFACTORY_DISABLE="1")
    ids = random_ids(tiny_tokenizer)

    # the trained model, rebuilt in its training form (fast head-slice forward) with the trained weights
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    head_set = HeadSet.load(out / HEADS_FILE)
    trained_model = apply_head_slices(base, find_attention_layout(base), head_set.selected, ("q", "o"))
    result = set_peft_model_state_dict(trained_model, load_file(out / "adapter_model.safetensors"))
    assert not result.unexpected_keys
    reference = logits(trained_model.eval(), ids)

    merged = AutoModelForCausalLM.from_pretrained(root / "merged", dtype=torch.float32)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), out)
    from llamafactory.hparams import get_infer_args
    from llamafactory.model import load_model, load_tokenizer

    model_args, _, finetuning_args, _ = get_infer_args(
        {**export, "finetuning_type": "p2d_heads", "export_dir": None, "infer_dtype": "float32"}
    )
    chat_model = load_model(load_tokenizer(model_args)["tokenizer"], model_args, finetuning_args)
    untrained = logits(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), ids)
    assert (reference - untrained).abs().max() > 1e-3
    for name, model in {"export": merged, "plain peft": plain, "chat (p2d_heads)": chat_model}.items():
        diff = (reference - logits(model.eval(), ids)).abs().max()
        assert diff <= 1e-5, f"{name}: {diff}"


def test_an_adapter_merged_by_an_export_is_refused_on_the_merged_model(trained):
    """Exporting onto a model that already holds the adapter would apply its update twice (stock LoRA does so
    silently): the export records what it merged, and loading the adapter onto the result is refused."""
    from llamafactory.hparams import get_infer_args

    out, root, base_dir = trained["out"], trained["root"], trained["model"]
    export = adapter_config(base_dir, out, "p2d_heads", export_dir=str(root / "merged_p2d"))
    run_cli("export", str(write_yaml(root / "export_p2d.yaml", export)), cwd=root)
    assert json.loads((root / "merged_p2d" / "config.json").read_text())["p2d_merged_adapters"]
    again = {**export, "model_name_or_path": str(root / "merged_p2d"), "export_dir": str(root / "twice")}
    with pytest.raises(ValueError, match=r"is already merged into `model_name_or_path` .*apply its update twice"):
        get_infer_args(again)
    get_infer_args({**export, "export_dir": str(root / "again_from_base")})  # onto its base model: fine


def test_resume_from_checkpoint_matches_the_uninterrupted_run(trained):
    log, resumed = resume_run(trained, (HEADS_FILE,))
    assert "Resuming training from" in log
    assert "reusing the identical head identification" in log  # finished stage I work is not redone
    assert "P2D proxy training (FHI)" not in log
    state = json.loads((resumed / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert_same_adapters(resumed, trained["out"])


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
