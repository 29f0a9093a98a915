"""QLoRA-style P2D through the stock ``llamafactory-cli``: a base quantized by bitsandbytes as it loads
(``quantization_bit``), stages I-III on it, chat on the quantized base, export onto the full-precision one."""

import json

import pytest
import torch

from p2d_llamafactory.files import HEADS_FILE, LOFIT_HEADS_FILE
from p2d_llamafactory.heads.headset import HeadSet
from p2d_llamafactory.models import Quantization, load_causal_lm
from tests.helpers.cli import adapter_config, run_cli, train_config, write_yaml
from tests.helpers.tiny import random_ids


pytest.importorskip("bitsandbytes")
pytestmark = pytest.mark.core


@pytest.fixture(scope="module")
def trained(tiny_models, tiny_dataset_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("quantized")
    model = tiny_models["llama_quant"]
    config = train_config(
        model,
        tiny_dataset_dir,
        root / "out",
        quantization_bit=4,
        p2d_fhi_trainable="attention",
        p2d_data_selection="p2d",
        p2d_data_ratio=0.5,
        use_cpu=True,
    )
    log = run_cli("train", str(write_yaml(root / "train.yaml", config)), cwd=root)
    return {"root": root, "out": root / "out", "log": log, "model": model}


def _chat_model(model_dir, adapter, finetuning_type, **overrides):
    from llamafactory.hparams import get_infer_args
    from llamafactory.model import load_model, load_tokenizer

    config = adapter_config(model_dir, adapter, finetuning_type, infer_dtype="float32", **overrides)
    model_args, _, finetuning_args, _ = get_infer_args(config)
    return load_model(load_tokenizer(model_args)["tokenizer"], model_args, finetuning_args)


def test_stages_one_to_three_run_on_a_4bit_base(trained):
    out, log = trained["out"], trained["log"]
    assert "Quantizing model to 4 bit with bitsandbytes" in log
    assert "P2D proxy training (FHI)" in log and "stage II done" in log
    head_set = HeadSet.load(out / HEADS_FILE)
    assert len(head_set.selected) == 3 and len(set(map(str, head_set.scores))) > 1
    assert len(json.loads((out / "p2d_data_selected.json").read_text())) == 24
    record = json.loads((out / "p2d_run.json").read_text())
    full = load_causal_lm(str(trained["model"]), torch.float32, "cpu")
    assert record["total_params"] == sum(p.numel() for p in full.parameters())  # unpacked 4-bit weights
    assert f"trainable params: {record['trainable_params']:,} " in log


def test_chat_on_the_quantized_base_and_export_onto_the_full_precision_one(trained, tiny_tokenizer):
    from peft import PeftModel

    out, root, model_dir = trained["out"], trained["root"], trained["model"]
    chat = _chat_model(model_dir, out, "p2d_heads", quantization_bit=4)
    quantized = load_causal_lm(str(model_dir), torch.float32, "cpu", quantization=Quantization(4))
    plain = PeftModel.from_pretrained(quantized, out).eval()
    ids = random_ids(tiny_tokenizer, seed=5)
    with torch.no_grad():
        chat_logits, plain_logits = chat(input_ids=ids).logits, plain(input_ids=ids).logits
        with plain.disable_adapter():
            quantized_base = plain(input_ids=ids).logits
    assert (chat_logits - plain_logits).abs().max() <= 1e-5
    assert (chat_logits - quantized_base).abs().max() > 1e-3

    export = adapter_config(model_dir, out, "p2d_heads", export_dir=str(root / "merged"))
    with pytest.raises(ValueError, match=r"Export merges the P2D adapter .*remove `quantization_bit`"):
        from llamafactory.hparams import get_infer_args

        get_infer_args({**export, "quantization_bit": 4})
    run_cli("export", str(write_yaml(root / "export.yaml", export)), cwd=root)
    merged = load_causal_lm(str(root / "merged"), torch.float32, "cpu")
    full = load_causal_lm(str(model_dir), torch.float32, "cpu")
    with torch.no_grad():
        merged_logits, full_base = merged(input_ids=ids).logits, full(input_ids=ids).logits
    assert (merged_logits - full_base).abs().max() > 1e-3
    assert (merged_logits - chat_logits).abs().max() <= 1.5 * (full_base - quantized_base).abs().max()


def test_lofit_trains_on_an_8bit_base_and_chats_unmerged(tiny_models, tiny_dataset_dir, tmp_path, tiny_tokenizer):
    model = tiny_models["llama_quant"]
    config = train_config(
        model, tiny_dataset_dir, tmp_path / "out", finetuning_type="lofit", quantization_bit=8, use_cpu=True
    )
    for key in ("p2d_fhi_samples", "p2d_fhi_steps", "p2d_fhi_lr"):
        config.pop(key)
    log = run_cli("train", str(write_yaml(tmp_path / "train.yaml", config)), cwd=tmp_path)
    assert "Quantizing model to 8 bit with bitsandbytes" in log and "LoFiT: step 1" in log
    assert (tmp_path / "out" / LOFIT_HEADS_FILE).is_file()
    chat = _chat_model(model, tmp_path / "out", "lofit", quantization_bit=8)
    assert type(chat).__name__.startswith("PeftModel")  # kept unmerged on the quantized base
    ids = random_ids(tiny_tokenizer, seed=6)
    with torch.no_grad():
        logits = chat(input_ids=ids).logits
        with chat.disable_adapter():
            assert (logits - chat(input_ids=ids).logits).abs().max() > 0


@pytest.mark.parametrize("method", ["data_whisperer", "nuggets"])
def test_other_selections_probe_the_quantized_base_for_qlora(method, tiny_models, tiny_dataset_dir, tmp_path):
    settings = {"p2d_data_selection": method, "p2d_data_ratio": 0.25, "p2d_nuggets_anchors": 8}
    if method != "nuggets":
        settings.pop("p2d_nuggets_anchors")
    config = train_config(
        tiny_models["llama_quant"],
        tiny_dataset_dir,
        tmp_path / "out",
        finetuning_type="lora",
        lora_target="all",
        quantization_bit=4,
        use_cpu=True,
        **settings,
    )
    for key in ("p2d_head_ratio", "p2d_fhi_samples", "p2d_fhi_steps", "p2d_fhi_lr"):
        config.pop(key)
    log = run_cli("train", str(write_yaml(tmp_path / "train.yaml", config)), cwd=tmp_path)
    assert "P2D: stages I and II read the base model quantized to 4 bit" in log
    assert f"data selection ({method}) keeps 12 of 48 training examples" in log
    assert len(json.loads((tmp_path / "out" / "p2d_data_selected.json").read_text())) == 12
