"""LoFiT through the stock ``llamafactory-cli``: both steps in one run, resume, export into a plain model, chat
loading with and without a merge, and plain peft."""

import json

import pytest
import torch

from p2d_llamafactory.files import LOFIT_HEADS_FILE
from p2d_llamafactory.heads.headset import HeadSet
from tests.helpers.cli import (
    adapter_config,
    assert_same_adapters,
    cli_result,
    resume_run,
    run_cli,
    train_config,
    write_yaml,
)
from tests.helpers.tiny import logits, random_ids


LOFIT = {"finetuning_type": "lofit", "p2d_lofit_select_epochs": 1.0, "learning_rate": 1e-2}


def _train(kind, tiny_models, tiny_dataset_dir, root):
    config = train_config(tiny_models[kind], tiny_dataset_dir, root / "out", **LOFIT)
    log = run_cli("train", str(write_yaml(root / "train.yaml", config)), cwd=root)
    return {"root": root, "out": root / "out", "config": config, "log": log, "model": tiny_models[kind]}


@pytest.fixture(scope="module")
def trained(tiny_models, tiny_dataset_dir, tmp_path_factory):
    return _train("llama", tiny_models, tiny_dataset_dir, tmp_path_factory.mktemp("lofit"))


def test_train_runs_both_steps_and_writes_a_bias_adapter(trained):
    out, log = trained["out"], trained["log"]
    heads = HeadSet.load(out / LOFIT_HEADS_FILE)
    assert heads.method == "lofit" and len(heads.selected) == 3 and heads.ratio == 0.25  # 25% of 12 heads
    assert len(heads.proxy_loss) == 12  # step 1: 1 epoch of 48 examples in batches of 4
    assert "LoFiT head selection (A)" in log and "of 12 heads: 48 weights" in log  # 3 heads x head_dim 16
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["lora_bias"] is True and config["r"] == 1
    assert all(t.endswith("o_proj") for t in config["target_modules"])
    run = json.loads((out / "p2d_run.json").read_text())
    assert (run["finetuning_type"], run["trainable_params"], run["learning_rate"]) == ("lofit", 48, 1e-2)
    timings = json.loads((out / "p2d_timings.json").read_text())
    assert timings["head_identification_seconds"] > 0 and timings["training_seconds"] > 0
    assert (out / "checkpoint-2" / LOFIT_HEADS_FILE).is_file()


def test_export_chat_and_plain_peft_reproduce_the_trained_model(trained, tiny_tokenizer):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root, out, base_dir = trained["root"], trained["out"], trained["model"]
    export = adapter_config(base_dir, out, "lofit", export_dir=str(root / "merged"))
    run_cli("export", str(write_yaml(root / "export.yaml", export)), cwd=root)
    ids = random_ids(tiny_tokenizer)
    base = lambda: AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    plain = PeftModel.from_pretrained(base(), out).eval()  # stock peft, no plugin code in the forward
    reference = logits(plain, ids)
    assert (reference - logits(base(), ids)).abs().max() > 1e-4  # the biases changed the model
    merged = AutoModelForCausalLM.from_pretrained(root / "merged", dtype=torch.float32)  # a plain Llama
    assert merged.config.attention_bias is True
    assert (logits(merged, ids) - reference).abs().max() <= 1e-5


def test_resume_from_checkpoint_matches_the_uninterrupted_run(trained):
    log, resumed = resume_run(trained, (LOFIT_HEADS_FILE,))
    assert "Resuming training from" in log and "reusing the identical head selection" in log
    assert "LoFiT head selection (A)" not in log  # step 1 is not redone
    assert_same_adapters(resumed, trained["out"])


def test_a_family_without_o_proj_bias_chats_unmerged_and_refuses_export(
    tiny_models, tiny_dataset_dir, tmp_path, tiny_tokenizer
):
    from llamafactory.hparams import get_infer_args
    from llamafactory.model import load_model, load_tokenizer
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = _train("qwen2", tiny_models, tiny_dataset_dir, tmp_path)
    infer = adapter_config(run["model"], run["out"], "lofit", infer_dtype="float32")
    model_args, _, finetuning_args, _ = get_infer_args(infer)
    chat = load_model(load_tokenizer(model_args)["tokenizer"], model_args, finetuning_args)
    assert isinstance(chat, PeftModel)  # Qwen2's o_proj has no bias: kept unmerged, exact
    ids = random_ids(tiny_tokenizer)
    plain = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(run["model"], dtype=torch.float32), run["out"]
    )
    assert (logits(chat, ids) - logits(plain.eval(), ids)).abs().max() <= 1e-5
    export = {**infer, "export_dir": str(tmp_path / "merged")}
    result = cli_result("export", str(write_yaml(tmp_path / "export.yaml", export)), cwd=tmp_path)
    assert result.returncode != 0 and "cannot merge into qwen2" in result.stdout + result.stderr
    assert not (tmp_path / "merged" / "model.safetensors").exists()
