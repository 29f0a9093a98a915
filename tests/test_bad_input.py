"""Bad input that used to run to the end: refused early, clearly, with nothing half-written."""

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from p2d_llamafactory.data.cache import ProbeCheckpoint
from p2d_llamafactory.data.probe import PromptResult
from p2d_llamafactory.data.select import check_selection
from p2d_llamafactory.files import HEADS_FILE, TRAINING_STATE_FILE
from p2d_llamafactory.heads.headset import HeadSet
from p2d_llamafactory.heads.identify import FHIInputs, check_scores, identify_heads
from p2d_llamafactory.heads.layout import find_attention_layout
from p2d_llamafactory.hparams import P2DArguments
from p2d_llamafactory.io import LOCK_FILE, OutputDirBusy, OutputDirLock, atomic_write_json
from p2d_llamafactory.report.aer import aer_record
from p2d_llamafactory.report.timing import AERRequest, P2DTimingCallback
from tests.helpers.cli import parse_train_args
from tests.helpers.tiny import build_model, tiny_config


def _heads_file(path, shape, selected):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"shape": shape, "selected": selected, "model": "tiny"}))
    return path


TINY_SHAPE = {"num_layers": 3, "num_heads": 4, "num_kv_heads": 2, "head_dim": 16, "hidden_size": 64}


# ---------------------------------------------------------------- 1. degenerate head scores


def test_equal_scores_are_refused_naming_the_cause():
    flat = torch.zeros(3, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"every head scored the same \(0\).*the proxy did not move.*p2d_fhi_lr"):
        check_scores(flat, P2DArguments())
    with pytest.raises(ValueError, match=r"`p2d_task_model` 'base' has the same attention weights"):
        check_scores(flat, P2DArguments(p2d_task_model="base"))
    with pytest.raises(ValueError, match="not finite"):
        check_scores(torch.tensor([[1.0, math.nan]]), P2DArguments())
    check_scores(flat, P2DArguments(p2d_head_selection="random"))  # random scores are never flat
    check_scores(torch.tensor([[0.0, 1e-12]]), P2DArguments())  # any difference ranks


def test_a_task_model_that_is_the_base_model_stops_stage_one(tiny_models, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    inputs = FHIInputs(model, "tiny", [], None, 4, str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="has the same attention weights as the base model"):
        identify_heads(inputs, P2DArguments(p2d_task_model=str(tiny_models["llama"])))
    assert not (tmp_path / HEADS_FILE).exists()


@pytest.mark.parametrize("key", ["p2d_temperature", "p2d_fhi_lr"])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_non_finite_rates_and_temperatures_fail_at_parse_time(make_args, key, value, tmp_path):
    with pytest.raises(ValueError, match=rf"`{key}` must be a finite number"):
        parse_train_args(make_args(**{key: value}))
    assert not (tmp_path / "out").exists()


def test_result_files_never_hold_non_standard_json(tmp_path):
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "x.json", {"score": math.nan})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 2. an adapter on the wrong base model


def test_a_p2d_adapter_on_a_base_of_another_shape_is_refused(tiny_models, tmp_path):
    from llamafactory.hparams import get_infer_args

    deeper = tiny_config("llama", 400)
    deeper.num_hidden_layers = 4  # same per-layer shape, one layer more
    deeper.save_pretrained(tmp_path / "deeper")
    adapter = tmp_path / "adapter"
    _heads_file(adapter / HEADS_FILE, TINY_SHAPE, [[0, 1]])
    args = {"model_name_or_path": str(tmp_path / "deeper"), "adapter_name_or_path": str(adapter), "template": "chatml"}
    for finetuning_type in ("lora", "p2d_heads"):
        with pytest.raises(ValueError, match=r"is a P2D adapter of a model shaped .*'num_layers': 3.*'num_layers': 4"):
            get_infer_args({**args, "finetuning_type": finetuning_type})
    get_infer_args({**args, "model_name_or_path": str(tiny_models["llama"]), "finetuning_type": "lora"})  # its base


# ---------------------------------------------------------------- 3. types


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


# ---------------------------------------------------------------- 4. heads files


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
    heads = _heads_file(tmp_path / "h" / HEADS_FILE, TINY_SHAPE, selected)
    extra = {"p2d_data_selection": "p2d"} if finetuning_type == "lora" else {}
    with pytest.raises(ValueError, match=r"`p2d_heads_file` '.*p2d_heads.json': `selected` .*" + message):
        parse_train_args(make_args(finetuning_type=finetuning_type, p2d_heads_file=str(heads), **extra))
    assert not (tmp_path / "out").exists()


def test_a_heads_file_that_is_a_directory_or_of_another_shape(make_args, tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="is a directory; give the p2d_heads.json file"):
        parse_train_args(make_args(p2d_heads_file=str(tmp_path / "folder")))
    other = _heads_file(tmp_path / "o" / HEADS_FILE, {**TINY_SHAPE, "num_layers": 5}, [[4, 0]])
    for finetuning_type, extra in (("p2d_heads", {}), ("lora", {"p2d_data_selection": "p2d"})):  # lora too
        with pytest.raises(ValueError, match="holds heads of a model shaped"):
            parse_train_args(make_args(finetuning_type=finetuning_type, p2d_heads_file=str(other), **extra))


def test_a_run_given_a_heads_file_keeps_it_in_its_output_dir(tiny_tokenizer, tmp_path):
    model = build_model("llama", tiny_tokenizer)
    source = _heads_file(tmp_path / "src" / HEADS_FILE, TINY_SHAPE, [[2, 3], [0, 1]])
    inputs = FHIInputs(model, "tiny", [], None, 4, str(tmp_path / "run"), progress=False)
    head_set = identify_heads(inputs, P2DArguments(p2d_heads_file=str(source)), find_attention_layout(model))
    assert HeadSet.load(tmp_path / "run" / HEADS_FILE).selected == head_set.selected == [(0, 1), (2, 3)]


# ---------------------------------------------------------------- 5. keys that do nothing, paths that do not exist


def test_keys_without_effect_warn(make_args, p2d_log):
    parse_train_args(make_args(finetuning_type="lora", p2d_head_ratio=0.3, p2d_fhi_lr=1e-4, p2d_icl_demos=4))
    text = p2d_log.text
    assert "`p2d_head_ratio` has no effect in this run: no heads are identified" in text
    assert "`p2d_fhi_lr` has no effect in this run: no proxy is trained" in text
    assert "`p2d_icl_demos` has no effect in this run: no probing selection" in text
    p2d_log.clear()
    parse_train_args(make_args(p2d_head_ratio=0.3, p2d_fhi_lr=1e-4))  # p2d_heads: both matter
    assert "no effect" not in p2d_log.text


def test_paths_that_do_not_exist_are_refused_with_any_finetuning_type(make_args, tmp_path):
    for finetuning_type in ("p2d_heads", "lora"):
        with pytest.raises(ValueError, match=r"`p2d_heads_file` '.*missing.json' does not exist"):
            parse_train_args(make_args(finetuning_type=finetuning_type, p2d_heads_file=str(tmp_path / "missing.json")))
        with pytest.raises(ValueError, match=r"`p2d_task_model` '.*nowhere' is not a model folder"):
            parse_train_args(make_args(finetuning_type=finetuning_type, p2d_task_model=str(tmp_path / "nowhere")))


# ---------------------------------------------------------------- 6. AER that stays true


def test_aer_counts_inherited_costs_and_says_which_were_paid():
    record = aer_record(
        {"data_scoring_seconds": 20.0}, 30.0, 100.0, "measured", {}, {"inherited_head_identification_seconds": 50.0}
    )
    assert record["aer"] == pytest.approx(1.0) and record["aer_this_run"] == pytest.approx(0.5)
    assert record["paid_by_this_run"] == {"data_scoring_seconds": 20.0, "training_seconds": 30.0}
    assert record["inherited"] == {"inherited_head_identification_seconds": 50.0}
    assert (
        aer_record({}, 50.0, 100.0, "measured", {})["aer"]
        == aer_record({}, 50.0, 100.0, "measured", {})["aer_this_run"]
    )


def test_probe_time_accumulates_across_resumes(tmp_path, monkeypatch):
    clock = iter([0.0, 0.0, 10.0, 25.0, 1000.0, 1000.0, 1000.0, 1004.0])
    monkeypatch.setattr("p2d_llamafactory.data.cache.time.perf_counter", lambda: next(clock))
    first = ProbeCheckpoint(tmp_path, {"s": 1})
    first.load()
    first.append(PromptResult(0, [1], [0.5], [1.0]))  # at 10 s
    first.append(PromptResult(1, [2], [0.5], [1.0]))  # at 25 s, then the run is killed
    resumed = ProbeCheckpoint(tmp_path, {"s": 1})
    assert sorted(resumed.load()) == [0, 1] and resumed.previous_seconds == 25.0
    assert resumed.elapsed() == pytest.approx(25.0)
    assert resumed.elapsed() == pytest.approx(29.0)  # 4 s after the resume, 29 s in all


def test_training_time_accumulates_across_resumes(tmp_path):
    callback = P2DTimingCallback(AERRequest())
    args = SimpleNamespace(output_dir=str(tmp_path))
    (tmp_path / "checkpoint-4").mkdir()
    atomic_write_json(tmp_path / "checkpoint-4" / TRAINING_STATE_FILE, {"training_seconds": 41.5})
    callback.on_train_begin(args, SimpleNamespace(global_step=4), None)
    assert callback.before == 41.5 and callback.elapsed() >= 41.5
    callback.on_save(args, SimpleNamespace(global_step=4, is_world_process_zero=True), None)
    saved = json.loads((tmp_path / "checkpoint-4" / TRAINING_STATE_FILE).read_text())["training_seconds"]
    assert 41.5 <= saved < 45.0
    callback.on_train_begin(args, SimpleNamespace(global_step=0), None)  # a fresh run starts at 0
    assert callback.before == 0.0


# ---------------------------------------------------------------- 7. fail before the expensive work


def test_an_output_dir_that_cannot_be_written_fails_at_parse_time(make_args, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"`output_dir` '.*file' is a file, not a directory"):
        parse_train_args(make_args(output_dir=str(tmp_path / "file")))
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="cannot be written"):
            parse_train_args(make_args(output_dir=str(locked / "out")))


def test_a_dataset_too_small_for_one_probe_prompt_fails_before_any_model_work():
    args = P2DArguments(p2d_data_selection="p2d", p2d_icl_demos=5, p2d_icl_queries=3)
    with pytest.raises(ValueError, match=r"at least 8 usable examples .*got 6.*\(2 of the 8 examples are longer"):
        check_selection(args, [10] * 6 + [999] * 2, max_length=100)
    assert check_selection(P2DArguments(p2d_data_selection="random"), [10] * 6, 100)[0] == 1


# ---------------------------------------------------------------- 8. two runs, one output dir


def test_a_second_run_on_the_same_output_dir_fails_at_once_naming_the_holder(tmp_path):
    with OutputDirLock(tmp_path, command="llamafactory-cli train a.yaml"):
        with pytest.raises(OutputDirBusy, match=rf"in use by another run \(pid {os.getpid()} on .*a.yaml"):
            OutputDirLock(tmp_path, command="b").acquire()
    assert not (tmp_path / LOCK_FILE).exists()  # released


def test_a_stale_lock_from_a_killed_run_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    (tmp_path / LOCK_FILE).write_text(
        json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "command": "killed"})
    )
    with OutputDirLock(tmp_path, command="new") as lock:
        assert lock.owned and json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


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
    from types import SimpleNamespace

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
