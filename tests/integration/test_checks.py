"""Parse-time checks of a LLaMA-Factory run's own arguments for P2D: refused before anything loads or is written."""

import os
from types import SimpleNamespace

import pytest

from p2d_llamafactory.files import HEADS_FILE
from tests.helpers.cli import parse_train_args
from tests.helpers.tiny import TINY_SHAPE, tiny_config, write_heads_file


def test_a_p2d_adapter_on_a_base_of_another_shape_is_refused(tiny_models, tmp_path):
    from llamafactory.hparams import get_infer_args

    deeper = tiny_config("llama", 400)
    deeper.num_hidden_layers = 4  # same per-layer shape, one layer more
    deeper.save_pretrained(tmp_path / "deeper")
    adapter = tmp_path / "adapter"
    write_heads_file(adapter / HEADS_FILE, TINY_SHAPE, [[0, 1]])
    args = {"model_name_or_path": str(tmp_path / "deeper"), "adapter_name_or_path": str(adapter), "template": "chatml"}
    for finetuning_type in ("lora", "p2d_heads"):
        with pytest.raises(ValueError, match=r"is a P2D adapter of a model shaped .*'num_layers': 3.*'num_layers': 4"):
            get_infer_args({**args, "finetuning_type": finetuning_type})
    get_infer_args({**args, "model_name_or_path": str(tiny_models["llama"]), "finetuning_type": "lora"})  # its base


@pytest.mark.parametrize(
    ("selected", "message"),
    [
        ({"0": [1]}, r"must be a non-empty list of distinct \[layer, head\] pairs of integers.*got \{'0'"),
        ([0, 1, 2], "found the entry 0"),
        ([["0", "1"]], r"found the entry \['0', '1'\]"),
        ([[0.0, 1.5]], r"found the entry \[0.0, 1.5\]"),
        ([[0, 1], [0, 1]], r"\[\[0, 1\]\] repeat"),
        ([], "must be a non-empty list"),
    ],
)
@pytest.mark.parametrize("finetuning_type", ["p2d_heads", "lora"])
def test_malformed_heads_files_fail_at_parse_time(make_args, tmp_path, selected, message, finetuning_type):
    heads = write_heads_file(tmp_path / "h" / HEADS_FILE, TINY_SHAPE, selected)
    extra = {"p2d_data_selection": "p2d"} if finetuning_type == "lora" else {}
    with pytest.raises(ValueError, match=r"`p2d_heads_file` '.*p2d_heads.json': `selected` .*" + message):
        parse_train_args(make_args(finetuning_type=finetuning_type, p2d_heads_file=str(heads), **extra))
    assert not (tmp_path / "out").exists()


def test_a_heads_file_that_is_a_directory_or_of_another_shape(make_args, tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="is a directory; give the p2d_heads.json file"):
        parse_train_args(make_args(p2d_heads_file=str(tmp_path / "folder")))
    other = write_heads_file(tmp_path / "o" / HEADS_FILE, {**TINY_SHAPE, "num_layers": 5}, [[4, 0]])
    for finetuning_type, extra in (("p2d_heads", {}), ("lora", {"p2d_data_selection": "p2d"})):  # lora too
        with pytest.raises(ValueError, match="holds heads of a model shaped"):
            parse_train_args(make_args(finetuning_type=finetuning_type, p2d_heads_file=str(other), **extra))


def test_paths_that_do_not_exist_are_refused_with_any_finetuning_type(make_args, tmp_path):
    for finetuning_type in ("p2d_heads", "lora"):
        with pytest.raises(ValueError, match=r"`p2d_heads_file` '.*missing.json' does not exist"):
            parse_train_args(make_args(finetuning_type=finetuning_type, p2d_heads_file=str(tmp_path / "missing.json")))
        with pytest.raises(ValueError, match=r"`p2d_task_model` '.*nowhere' is not a model folder"):
            parse_train_args(make_args(finetuning_type=finetuning_type, p2d_task_model=str(tmp_path / "nowhere")))


def test_an_output_dir_that_cannot_be_written_fails_at_parse_time(make_args, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"`output_dir` '.*file' is a file, not a directory"):
        parse_train_args(make_args(output_dir=str(tmp_path / "file")))
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="cannot be written"):
            parse_train_args(make_args(output_dir=str(locked / "out")))


@pytest.mark.parametrize("how", ["fsdp key", "accelerate plugin"])
def test_fsdp_training_of_head_slices_is_refused_before_anything_loads(make_args, tmp_path, monkeypatch, how):
    args = make_args(fsdp="full_shard", use_cpu=True) if how == "fsdp key" else make_args()
    if how == "accelerate plugin":
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match=r"does not support FSDP .*plain DDP .*DeepSpeed .*ds_z3_config"):
        parse_train_args(args)
    assert not (tmp_path / "out").exists()
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    parse_train_args(
        make_args(fsdp="full_shard", use_cpu=True, finetuning_type="lora", p2d_head_ratio=None)
    )  # other methods: LF's


def test_zero3_refuses_lofit_and_the_timed_aer_estimate_and_takes_the_rest():

    from p2d_llamafactory.integration.checks import check_zero3

    run = lambda **kw: SimpleNamespace(**{"finetuning_type": "p2d_heads", "p2d_aer_estimate_steps": None, **kw})
    with pytest.raises(ValueError, match=r"`finetuning_type: lofit` supports DeepSpeed ZeRO stages 0-2, not ZeRO-3"):
        check_zero3(run(finetuning_type="lofit"), "`finetuning_type: lofit`")
    with pytest.raises(ValueError, match=r"`p2d_aer_estimate_steps` .* ZeRO-3 .* give `p2d_aer_reference`"):
        check_zero3(run(p2d_aer_estimate_steps=3), "`finetuning_type: p2d_heads`")
    check_zero3(run(), "`finetuning_type: p2d_heads`")  # the head slices train under ZeRO-3


def test_a_missing_scores_file_is_refused_at_parse_time(make_args, tmp_path):
    with pytest.raises(ValueError, match=r"`p2d_data_scores_file` '.*missing.json' does not exist"):
        parse_train_args(make_args(p2d_data_selection="random", p2d_data_scores_file=str(tmp_path / "missing.json")))
    assert not (tmp_path / "out").exists()


def test_a_lofit_adapter_loaded_as_another_method_is_refused_with_the_method_to_use(tiny_models, tmp_path):
    from types import SimpleNamespace

    from p2d_llamafactory.files import LOFIT_HEADS_FILE
    from p2d_llamafactory.integration.checks import check_adapters

    adapter = tmp_path / "lofit_adapter"
    adapter.mkdir()
    (adapter / LOFIT_HEADS_FILE).write_text("{}")
    model_args = SimpleNamespace(
        adapter_name_or_path=[str(adapter)], model_name_or_path=str(tiny_models["llama"]), trust_remote_code=False
    )
    with pytest.raises(ValueError, match=r"is a LoFiT adapter .*with `finetuning_type: lofit`, not 'lora'"):
        check_adapters(model_args, SimpleNamespace(finetuning_type="lora"))
    check_adapters(model_args, SimpleNamespace(finetuning_type="lofit"))  # its own method


def test_an_adapter_whose_config_or_heads_file_was_edited_is_refused(tiny_models, tiny_tokenizer, tmp_path):
    import json
    from types import SimpleNamespace

    from p2d_llamafactory.heads.headset import HeadSet
    from p2d_llamafactory.heads.layout import find_attention_layout
    from p2d_llamafactory.hparams import P2DArguments
    from p2d_llamafactory.integration.checks import check_adapters
    from p2d_llamafactory.pipeline import Output, adapt_heads
    from tests.helpers.tiny import build_model

    model = build_model("llama", tiny_tokenizer)
    layout = find_attention_layout(model)
    head_set = HeadSet("tiny", layout.shape(), "given", 0, 0.25, [], [(0, 1), (2, 3)])
    adapt_heads(model, layout, head_set, P2DArguments(), Output(None), None).save_pretrained(tmp_path / "adapter")
    model_args = SimpleNamespace(
        adapter_name_or_path=[str(tmp_path / "adapter")],
        model_name_or_path=str(tiny_models["llama"]),
        trust_remote_code=False,
    )
    check_adapters(model_args, SimpleNamespace(finetuning_type="lora"))  # as saved: loads
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["target_modules"] = config["target_modules"][1:]  # one target module removed by hand
    config_path.write_text(json.dumps(config))
    with pytest.raises(
        ValueError, match=r"adapter_config.json \(target modules and ranks\) does not match the head slices"
    ):
        check_adapters(model_args, SimpleNamespace(finetuning_type="lora"))
