"""The p2d_* keys through LLaMA-Factory's stock parser: valid forms, and every bad input failing early."""

import json
import math
import sys

import pytest

from p2d_llamafactory.heads.headset import HeadSet
from tests.helpers.cli import parse_train_args


def test_dict_form_parses_defaults_and_values(make_args):
    _, _, _, finetuning_args, _ = parse_train_args(make_args())
    assert type(finetuning_args).__name__ == "P2DFinetuningArguments"
    assert finetuning_args.finetuning_type == "p2d_heads"
    assert finetuning_args.head_modules == ("q", "o")
    assert (finetuning_args.p2d_head_ratio, finetuning_args.p2d_fhi_samples, finetuning_args.p2d_fhi_steps) == (
        0.1,
        100,
        20,
    )
    assert (finetuning_args.p2d_fhi_lr, finetuning_args.p2d_temperature, finetuning_args.p2d_head_selection) == (
        2e-5,
        0.1,
        "w1",
    )
    _, _, _, finetuning_args, _ = parse_train_args(
        make_args(p2d_head_modules="all", p2d_head_selection="cosine", p2d_seed=7)
    )
    assert finetuning_args.head_modules == ("q", "k", "v", "o")
    assert (finetuning_args.p2d_head_selection, finetuning_args.p2d_seed) == ("cosine", 7)


def test_yaml_and_command_line_forms(make_args, tmp_path, monkeypatch):
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(make_args(p2d_head_ratio=0.25, p2d_head_modules="q,k,v")))
    monkeypatch.setattr(sys, "argv", ["llamafactory-cli", str(path), "p2d_seed=3"])
    _, _, _, finetuning_args, _ = parse_train_args(None)
    assert (finetuning_args.p2d_head_ratio, finetuning_args.head_modules, finetuning_args.p2d_seed) == (
        0.25,
        ("q", "k", "v"),
        3,
    )
    argv = [f"--{k}={v}" for k, v in make_args(p2d_head_selection="gradient").items()]
    _, _, _, finetuning_args, _ = parse_train_args(argv)
    assert finetuning_args.p2d_head_selection == "gradient"


def test_command_line_choices_name_the_allowed_values(make_args, capsys):
    argv = [f"--{k}={v}" for k, v in make_args(p2d_head_selection="magnitude").items()]
    with pytest.raises(SystemExit):
        parse_train_args(argv)
    err = capsys.readouterr().err
    assert "p2d_head_selection" in err and "w1" in err and "gradient" in err


BAD_VALUES = [
    ({"finetuning_type": "heads"}, r"`finetuning_type` must be one of lora, oft, freeze, full, p2d_heads"),
    ({"p2d_head_selection": "magnitude"}, r"`p2d_head_selection` must be one of w1, random, cosine, gradient"),
    ({"p2d_head_ratio": 0}, r"`p2d_head_ratio` must be in \(0, 1\]"),
    ({"p2d_head_ratio": -0.1}, r"`p2d_head_ratio` must be in \(0, 1\]"),
    ({"p2d_head_ratio": 1.5}, r"`p2d_head_ratio` must be in \(0, 1\]"),
    (
        {"p2d_head_ratio": 0.01},
        r"`p2d_head_ratio: 0.01` selects 0 of the 12 heads.*\[0.0417, 1\] \(0.0417 keeps 1 head\)",
    ),
    ({"p2d_head_trainable_layers": 0}, r"`p2d_head_trainable_layers` must be a nonzero integer"),
    ({"p2d_head_trainable_layers": 4}, r"`p2d_head_trainable_layers: 4` asks for more layers than this model's 3"),
    (
        {"p2d_head_ratio": 0.5, "p2d_head_trainable_layers": 1},
        r"`p2d_head_ratio: 0.5` keeps 6 heads, but the last 1 layers .* hold only 4; allow at least 2 layers",
    ),
    ({"p2d_head_modules": "q,x"}, r"`p2d_head_modules` takes a comma-separated subset of q, k, v, o"),
    (
        {"finetuning_type": "lora", "p2d_head_modules": "q"},
        r"`p2d_head_modules` only applies to `finetuning_type: p2d_heads`",
    ),
    ({"p2d_fhi_samples": 0}, r"`p2d_fhi_samples` must be a positive integer"),
    ({"p2d_fhi_steps": -1}, r"`p2d_fhi_steps` must be a positive integer"),
    ({"p2d_temperature": 0}, r"`p2d_temperature` must be > 0"),
    ({"p2d_fhi_lr": 0}, r"`p2d_fhi_lr` must be > 0"),
    ({"quantization_bit": 3}, r"`quantization_bit` must be 4 or 8 \(bitsandbytes\); got 3"),
    (
        {"quantization_bit": 4, "p2d_fhi_trainable": "all"},
        r"`p2d_fhi_trainable: all` trains a float32 copy of every weight.*use `p2d_fhi_trainable: attention`",
    ),
    (
        {"quantization_bit": 8, "p2d_fhi_trainable": "attention", "quantization_method": "eetq"},
        r"P2D supports `quantization_method: bnb` \(bitsandbytes\) with `quantization_bit`; got 'eetq'",
    ),
    ({"stage": "dpo"}, r"`finetuning_type: p2d_heads` supports `stage` sft; got 'dpo'"),
    ({"use_dora": True}, r"`use_dora` cannot be combined with `finetuning_type: p2d_heads`"),
    (
        {"p2d_data_selection": "best"},
        r"`p2d_data_selection` must be one of none, ifd, nuggets, data_whisperer, random, p2d",
    ),
    ({"p2d_icl_metric": "bleu"}, r"`p2d_icl_metric` must be one of auto, em, rougeL; got 'bleu'"),
    ({"p2d_icl_scoring": "sample"}, r"`p2d_icl_scoring` must be one of generate, teacher_forced"),
    ({"p2d_data_ratio": 0}, r"`p2d_data_ratio` must be in \(0, 1\]"),
    ({"p2d_icl_demos": 0}, r"`p2d_icl_demos` must be a positive integer"),
    ({"finetuning_type": "lora", "p2d_data_selection": "p2d"}, r"`p2d_data_selection: p2d` needs a head set"),
    ({"p2d_data_selection": "random", "streaming": True, "max_steps": 10}, r"turn off `streaming`"),
    (
        {"p2d_heads_file": "/nonexistent/p2d_heads.json"},
        r"`p2d_heads_file` '/nonexistent/p2d_heads.json' does not exist",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), BAD_VALUES, ids=[str(o) for o, _ in BAD_VALUES])
def test_bad_values_fail_at_parse_time_naming_the_key(make_args, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        parse_train_args(make_args(**overrides))
    assert not (tmp_path / "out").exists()  # nothing written


def test_training_on_top_of_an_adapter_is_refused(make_args, tiny_models, tmp_path):
    with pytest.raises(ValueError, match=r"training starts from the base model; merge `adapter_name_or_path` first"):
        parse_train_args(make_args(adapter_name_or_path=str(tiny_models["llama"])))
    assert not (tmp_path / "out").exists()


def test_model_without_standard_attention_projections(make_args, tmp_path, tiny_tokenizer):
    from transformers import GPT2Config, GPT2LMHeadModel

    model_dir = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=len(tiny_tokenizer))).save_pretrained(
        model_dir
    )
    tiny_tokenizer.save_pretrained(model_dir)
    with pytest.raises(ValueError, match=r"cannot find this model's heads: model_type=gpt2 .*not a supported decoder"):
        parse_train_args(make_args(model=model_dir))
    assert not (tmp_path / "out").exists()


def test_heads_file_from_a_model_of_another_shape(make_args, tmp_path):
    other = HeadSet(
        "other",
        {"num_layers": 30, "num_heads": 9, "num_kv_heads": 3, "head_dim": 64, "hidden_size": 576},
        "w1",
        0,
        0.1,
        [],
        [(0, 0)],
    )
    other.save(tmp_path / "heads.json")
    with pytest.raises(
        ValueError, match=r"`p2d_heads_file` holds heads of a model shaped .*'num_layers': 30.*this model"
    ):
        parse_train_args(make_args(p2d_heads_file=str(tmp_path / "heads.json")))
    (tmp_path / "bad.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match=r"is not a P2D head set"):
        parse_train_args(make_args(p2d_heads_file=str(tmp_path / "bad.json")))
    assert not (tmp_path / "out").exists()


def test_a_quantized_base_refuses_a_task_model_and_keeps_a_heads_file(make_args, tiny_models, tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoConfig

    from p2d_llamafactory.heads.layout import layout_from_config

    model = tiny_models["llama_quant"]
    quantized = {"model": model, "quantization_bit": 4, "p2d_fhi_trainable": "attention"}
    with pytest.raises(ValueError, match=r"`p2d_task_model` is compared with the base model's full-precision weights"):
        parse_train_args(make_args(**quantized, p2d_task_model=str(model)))
    shape = layout_from_config(AutoConfig.from_pretrained(model)).shape()
    scores = [[0.1 * head + 0.01 * layer for head in range(4)] for layer in range(3)]
    HeadSet("tiny", shape, "w1", 0, 0.25, scores, [(0, 3), (1, 3), (2, 3)]).save(tmp_path / "heads.json")
    given = {**quantized, "p2d_fhi_trainable": "all", "p2d_heads_file": str(tmp_path / "heads.json")}
    parse_train_args(make_args(**given))  # no proxy trains: nothing to refuse
    assert not (tmp_path / "out").exists()


def test_task_model_of_another_architecture(make_args, tiny_models, tmp_path):
    with pytest.raises(ValueError, match=r"`p2d_task_model` is a qwen2 model; the base model is llama"):
        parse_train_args(make_args(p2d_task_model=str(tiny_models["qwen2"])))
    with pytest.raises(ValueError, match=r"`p2d_task_model` has attention shape"):
        parse_train_args(make_args(p2d_task_model=str(tiny_models["llama_mha"])))
    with pytest.raises(ValueError, match=r"`p2d_task_model` compares weights.*choose w1 or cosine"):
        parse_train_args(make_args(p2d_task_model=str(tiny_models["llama"]), p2d_head_selection="random"))
    assert not (tmp_path / "out").exists()


def test_p2d_adapters_load_like_lora_for_inference(tiny_models):
    from llamafactory.hparams import get_infer_args

    model_args, _, finetuning_args, _ = get_infer_args(
        {
            "model_name_or_path": str(tiny_models["llama"]),
            "adapter_name_or_path": str(tiny_models["llama"]),
            "finetuning_type": "p2d_heads",
            "template": "chatml",
        }
    )
    assert finetuning_args.finetuning_type == "p2d_heads"
    assert model_args.adapter_name_or_path == [str(tiny_models["llama"])]


@pytest.mark.parametrize("key", ["p2d_temperature", "p2d_fhi_lr"])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_non_finite_rates_and_temperatures_fail_at_parse_time(make_args, key, value, tmp_path):
    with pytest.raises(ValueError, match=rf"`{key}` must be a finite number"):
        parse_train_args(make_args(**{key: value}))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("p2d_head_ratio", "0.2", r"`p2d_head_ratio` must be a number; got the text '0.2' \(write the number"),
        ("p2d_fhi_lr", "1e-4", r"`p2d_fhi_lr` must be a number; got the text '1e-4' \(YAML reads"),
        ("p2d_fhi_steps", "2", r"`p2d_fhi_steps` must be a whole number; got the text '2'"),
        ("p2d_fhi_samples", 2.5, r"`p2d_fhi_samples` must be a whole number; got 2.5 \(float\)"),
        ("p2d_icl_demos", "ten", r"`p2d_icl_demos` must be a whole number; got the text 'ten'"),
        ("p2d_seed", True, r"`p2d_seed` must be a whole number; got True \(bool\)"),
        ("p2d_head_selection", 1, r"`p2d_head_selection` must be one of w1, random, cosine, gradient; got 1"),
        ("p2d_head_modules", 3, r"`p2d_head_modules` must be a text; got 3"),
    ],
)
def test_wrong_types_fail_at_parse_time_naming_key_and_type(make_args, key, value, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        parse_train_args(make_args(**{key: value}))
    assert not (tmp_path / "out").exists()


def test_types_are_normalised_as_llamafactory_would(make_args):
    _, _, _, args, _ = parse_train_args(make_args(p2d_head_ratio=1, p2d_head_modules=["q_proj", "o_proj"]))
    assert isinstance(args.p2d_head_ratio, float) and args.head_modules == ("q", "o")
    from llamafactory.hparams import get_train_args

    argv = [f"--{k}={v}" for k, v in make_args(p2d_fhi_steps="3", p2d_head_ratio="0.25").items()]
    _, _, _, args, _ = get_train_args(argv)  # the command-line form: argparse converts, as for LF's own keys
    assert (args.p2d_fhi_steps, args.p2d_head_ratio) == (3, 0.25)


def test_keys_without_effect_warn(make_args, p2d_log):
    parse_train_args(make_args(finetuning_type="lora", p2d_head_ratio=0.3, p2d_fhi_lr=1e-4, p2d_icl_demos=4))
    text = p2d_log.text
    assert "`p2d_head_ratio` has no effect in this run: no heads are identified" in text
    assert "`p2d_fhi_lr` has no effect in this run: no proxy is trained" in text
    assert "`p2d_icl_demos` has no effect in this run: no probing selection" in text
    p2d_log.clear()
    parse_train_args(make_args(p2d_head_ratio=0.3, p2d_fhi_lr=1e-4))  # p2d_heads: both matter
    assert "no effect" not in p2d_log.text


def test_an_override_written_as_a_flag_after_the_yaml_gets_the_key_value_form(make_args, tmp_path, monkeypatch):
    import yaml
    from llamafactory.hparams import get_train_args

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(make_args()))
    monkeypatch.setattr(sys, "argv", ["llamafactory-cli", str(config), "--p2d_head_ratio", "0.5"])
    with pytest.raises(ValueError, match=r"write `p2d_head_ratio=...`, not `--p2d_head_ratio ...`"):
        get_train_args()
