"""The Python API (``p2d_llamafactory.api``): the CLI's stages, checks and files on a plain model, and the TRL example."""

import copy
import importlib.util
import json
import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from p2d_llamafactory import api
from p2d_llamafactory.adapter import count_slice_params
from p2d_llamafactory.files import HEADS_FILE, HEATMAP_FILE
from p2d_llamafactory.heads import identify as identify_module
from p2d_llamafactory.heads.headset import HeadSet
from p2d_llamafactory.heads.layout import find_attention_layout
from p2d_llamafactory.hparams import P2DArguments
from p2d_llamafactory.report.aer import record_timings
from tests.helpers.examples import demo_examples
from tests.helpers.tiny import build_model, lm_batch, logits, random_ids


ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "api_trl_sft.py"
STAGE1 = dict(p2d_head_ratio=0.25, p2d_fhi_samples=8, p2d_fhi_steps=2, p2d_fhi_lr=1e-3, p2d_seed=3)


@pytest.fixture
def chatml(tiny_tokenizer):
    """LLaMA-Factory's chatml template, on a copy of the tokenizer (the template fixes the tokenizer it gets)."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    tokenizer = copy.deepcopy(tiny_tokenizer)
    return get_template_and_fix_tokenizer(tokenizer, DataArguments(template="chatml")), tokenizer


def test_the_package_exports_the_api_without_importing_torch_at_start():
    code = (
        "import sys, p2d_llamafactory as p; assert 'torch' not in sys.modules, 'torch imported eagerly'; "
        "from p2d_llamafactory import api; assert 'llamafactory' not in sys.modules, 'the API imports llamafactory'; "
        "assert p.identify_heads is api.identify_heads and p.aer is api.aer; "
        "assert all(getattr(p, name) is getattr(api, name) for name in api.__all__); "
        "assert not hasattr(p, 'no_such_name') and not hasattr(p, '_settings'); print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_examples_are_tokenized_as_llamafactory_tokenizes_them(tiny_tokenizer, chatml):
    from p2d_llamafactory.integration.template import chat_frame

    template, lf_tokenizer = chatml
    examples = demo_examples(6)
    examples[1] = {**examples[1], "input": "Answer with a number."}  # alpaca: instruction and input joined by \n
    rows = api.tokenize_examples(tiny_tokenizer, examples)
    for example, row in zip(examples, rows, strict=True):
        query = "\n".join(part for part in (example["instruction"], example["input"]) if part)
        messages = [{"role": "user", "content": query}, {"role": "assistant", "content": example["output"]}]
        prompt, answer = template.encode_oneturn(lf_tokenizer, messages)
        assert row["input_ids"] == prompt + answer
        assert row["labels"] == [-100] * len(prompt) + answer
        assert row["attention_mask"] == [1] * len(prompt + answer)
    assert api.chat_frame(tiny_tokenizer) == chat_frame(template, lf_tokenizer)  # stage II's frame too
    same = [
        {"prompt": "\n".join(filter(None, (ex["instruction"], ex["input"]))), "response": ex["output"]}
        for ex in examples
    ]
    assert api.tokenize_examples(tiny_tokenizer, same) == rows
    assert api.tokenize_examples(tiny_tokenizer, rows) == rows  # already tokenized: kept
    assert [len(r["input_ids"]) for r in api.tokenize_examples(tiny_tokenizer, examples, max_length=7)] == [7] * 6


def test_identify_heads_writes_what_the_cli_stage_one_writes(tiny_tokenizer, chatml, tmp_path):
    """Same examples and seed: the API's files equal those of the entry point ``llamafactory-cli train`` calls, fed
    with LLaMA-Factory's own tokenization of the examples."""
    from p2d_llamafactory.integration.heads import find_run_heads
    from p2d_llamafactory.integration.run import P2DRun

    template, lf_tokenizer = chatml
    model = build_model("llama", tiny_tokenizer).train()
    before = copy.deepcopy(model.state_dict())
    examples = demo_examples(24)
    head_set = api.identify_heads(
        model, tiny_tokenizer, examples, output_dir=tmp_path / "api", model_name="tiny", progress=False, **STAGE1
    )

    tokenized = []
    for example in examples:
        messages = [
            {"role": "user", "content": example["instruction"]},
            {"role": "assistant", "content": example["output"]},
        ]
        prompt, answer = template.encode_oneturn(lf_tokenizer, messages)
        tokenized.append(
            {
                "input_ids": prompt + answer,
                "attention_mask": [1] * len(prompt + answer),
                "labels": [-100] * len(prompt) + answer,
            }
        )
    training_args = SimpleNamespace(
        output_dir=str(tmp_path / "cli"),
        per_device_train_batch_size=4,  # the API's micro_batch_size: the same summation order
        disable_tqdm=True,
        should_save=True,
        main_process_first=lambda **kwargs: nullcontext(),
    )
    model_args = SimpleNamespace(model_name_or_path="tiny")
    run = P2DRun(model_args, None, training_args, P2DArguments(**STAGE1), tokenizer=lf_tokenizer)
    cli = find_run_heads(run, model, tokenized, find_attention_layout(model))

    ours, theirs = (json.loads((tmp_path / d / HEADS_FILE).read_text()) for d in ("api", "cli"))
    assert (
        ours.pop("timings").keys()
        == theirs.pop("timings").keys()
        == {"proxy_seconds", "scoring_seconds", "total_seconds"}
    )
    assert ours == theirs  # scores, selected heads, proxy losses, settings (with the FHI data fingerprint)
    assert head_set.selected == cli.selected and len(head_set.selected) == 3
    for d in ("api", "cli"):
        assert sorted(p.name for p in (tmp_path / d).iterdir()) == [HEADS_FILE, HEATMAP_FILE, "p2d_timings.json"]
        assert set(json.loads((tmp_path / d / "p2d_timings.json").read_text())) == {"head_identification_seconds"}
    assert model.training and all(p.requires_grad for p in model.parameters())  # the model is left as it was
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())


def test_stages_one_and_three_on_a_quantized_model(tiny_tokenizer, tiny_models, tmp_path):
    """A model loaded with a bitsandbytes config: stage I with the `attention` proxy (the default `all` is refused by
    name before any work), then head slices as LoRA on the quantized layers, saved as a plain peft adapter."""
    pytest.importorskip("bitsandbytes")
    from p2d_llamafactory.models import Quantization, load_causal_lm

    model = load_causal_lm(str(tiny_models["llama_quant"]), torch.float32, "cpu", quantization=Quantization(4))
    examples = demo_examples(16)
    with pytest.raises(ValueError, match=r"`p2d_fhi_trainable: all` .*use `p2d_fhi_trainable: attention`"):
        api.identify_heads(model, tiny_tokenizer, examples, output_dir=tmp_path / "refused", **STAGE1)
    assert not (tmp_path / "refused").exists()
    head_set = api.identify_heads(
        model, tiny_tokenizer, examples, progress=False, p2d_fhi_trainable="attention", **STAGE1
    )
    assert len(head_set.selected) == 3 and head_set.method == "w1"
    peft_model = api.apply_head_adapter(model, head_set, learning_rate=1e-3)
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == count_slice_params(
        find_attention_layout(model), head_set.selected, ("q", "o")
    )
    batch = lm_batch(random_ids(tiny_tokenizer))
    peft_model.train()(**batch).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    peft_model.save_pretrained(tmp_path / "adapter")
    assert HeadSet.load(tmp_path / "adapter" / HEADS_FILE).selected == head_set.selected


def test_identical_rerun_reuses_the_head_set(tiny_tokenizer, tmp_path, monkeypatch):
    model = build_model("llama", tiny_tokenizer)
    first = api.identify_heads(model, tiny_tokenizer, demo_examples(16), output_dir=tmp_path, progress=False, **STAGE1)
    monkeypatch.setattr(identify_module, "train_proxy", lambda *a, **k: pytest.fail("stage I ran again"))
    again = api.identify_heads(model, tiny_tokenizer, demo_examples(16), output_dir=tmp_path, progress=False, **STAGE1)
    assert again.selected == first.selected and again.timings == first.timings


def test_apply_head_adapter_trains_only_the_head_slices_and_saves_a_plain_peft_adapter(tiny_tokenizer, tmp_path):
    from peft import PeftModel

    heads = [(0, 1), (2, 3)]
    base = build_model("llama", tiny_tokenizer)
    layout = find_attention_layout(base)
    reference = copy.deepcopy(base)
    model = api.apply_head_adapter(base, heads, output_dir=tmp_path / "run", learning_rate=1e-3)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == count_slice_params(layout, heads, ("q", "o"))
    assert all(p.dtype == torch.float32 for p in trainable.values())
    assert model.p2d_learning_rate == pytest.approx(1e-2)  # 1e-3 x p2d_head_lr_scale 10
    optimizer = torch.optim.AdamW(trainable.values(), lr=model.p2d_learning_rate)
    model.train()
    for step in range(3):
        optimizer.zero_grad()
        model(**lm_batch(random_ids(tiny_tokenizer, (2, 10), seed=step))).loss.backward()
        optimizer.step()
    model.eval()

    ids = random_ids(tiny_tokenizer, (2, 12), seed=9)
    trained = logits(model, ids)
    assert not torch.allclose(trained, logits(reference, ids))
    model.save_pretrained(tmp_path / "adapter")
    saved = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert {"adapter_config.json", "adapter_model.safetensors", HEADS_FILE} <= set(saved), saved
    assert HeadSet.load(tmp_path / "adapter" / HEADS_FILE).selected == heads
    loaded = PeftModel.from_pretrained(build_model("llama", tiny_tokenizer), tmp_path / "adapter").eval()  # plain peft
    torch.testing.assert_close(logits(loaded, ids), trained, rtol=0, atol=1e-5)

    # a save given only the trainable tensors (what a Trainer passes under ZeRO-3) keeps the fixed one-hot factors
    state = {name: param.detach().clone() for name, param in trainable.items()}
    model.save_pretrained(tmp_path / "trainable_only", state_dict=state)
    from safetensors.torch import load_file

    written = load_file(tmp_path / "trainable_only" / "adapter_model.safetensors")
    assert len(written) == 2 * len(trainable)  # each module's trainable factor and its fixed one-hot factor
    loaded = PeftModel.from_pretrained(build_model("llama", tiny_tokenizer), tmp_path / "trainable_only").eval()
    torch.testing.assert_close(logits(loaded, ids), trained, rtol=0, atol=1e-5)
    assert (tmp_path / "trainable_only" / HEADS_FILE).is_file()

    merged = copy.deepcopy(model).merge_and_unload()
    d = layout.head_dim
    changed = {
        name: (new != old).nonzero()
        for (name, new), (_, old) in zip(merged.named_parameters(), reference.named_parameters(), strict=True)
        if not torch.equal(new, old)
    }
    assert set(changed) == {f"model.layers.{i}.self_attn.{p}_proj.weight" for i in (0, 2) for p in ("q", "o")}
    for (layer, head), (proj, axis) in [(h, s) for h in heads for s in (("q", 0), ("o", 1))]:
        touched = set(changed[f"model.layers.{layer}.self_attn.{proj}_proj.weight"][:, axis].tolist())
        assert touched <= set(range(head * d, (head + 1) * d))

    run = json.loads((tmp_path / "run" / "p2d_run.json").read_text())
    assert (run["heads"], run["total_heads"], run["head_modules"]) == (2, 12, ["q", "o"])
    assert run["trainable_params"] == count_slice_params(layout, heads, ("q", "o"))
    assert run["learning_rate"] == pytest.approx(1e-2) and run["p2d_head_lr_scale"] == 10.0
    assert HeadSet.load(tmp_path / "run" / HEADS_FILE).selected == heads


def test_apply_head_adapter_takes_the_slice_keys_and_a_heads_file(tiny_tokenizer, tmp_path):
    layout = find_attention_layout(build_model("llama", tiny_tokenizer))
    head_set = HeadSet("tiny", layout.shape(), "w1", 0, 0.1, [[0.0] * 4] * 3, [(1, 2)])
    head_set.save(tmp_path / HEADS_FILE)
    model = api.apply_head_adapter(
        build_model("llama", tiny_tokenizer), tmp_path / HEADS_FILE, p2d_head_modules="all", p2d_head_lr_scale=1.0
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == count_slice_params(layout, [(1, 2)], ("q", "k", "v", "o"))
    assert model.p2d_learning_rate is None and model.p2d_heads.selected == [(1, 2)]

    half = build_model("llama", tiny_tokenizer).to(torch.bfloat16)
    model = api.apply_head_adapter(half, [(0, 0)])  # a bf16 model: its slices train in float32, as the CLI's
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}
    assert model.base_model.model.model.layers[0].self_attn.q_proj.base_layer.weight.dtype == torch.bfloat16


def test_select_data_keeps_the_ratio_and_writes_the_cli_records(tiny_tokenizer, chatml, tmp_path):
    from p2d_llamafactory.data.prompts import Example
    from p2d_llamafactory.data.select import SelectionInputs, select_examples
    from p2d_llamafactory.integration.template import chat_frame

    model = build_model("llama", tiny_tokenizer)
    examples = [{"prompt": ex["instruction"], "response": ex["output"]} for ex in demo_examples(24)]
    heads = [(0, 1), (1, 0), (2, 3)]
    keys = dict(p2d_data_ratio=0.25, p2d_icl_scoring="teacher_forced", p2d_data_ppl_samples=4, p2d_seed=5)
    selection = api.select_data(
        model, tiny_tokenizer, examples, heads=heads, output_dir=tmp_path, progress=False, max_length=512, **keys
    )
    assert selection.method == "p2d" and len(selection.selected) == 6 and len(selection.scores) == 24

    template, lf_tokenizer = chatml  # stage II as the CLI builds its inputs, on the same examples and heads
    layout = find_attention_layout(model)
    texts = [Example(i, ex["prompt"], ex["response"]) for i, ex in enumerate(examples)]
    encode = lambda text: len(lf_tokenizer.encode(text, add_special_tokens=False))
    head_set = HeadSet("tiny", layout.shape(), "given", 0, 0.25, [], heads)
    reference = select_examples(
        SelectionInputs(
            texts,
            [encode(t.prompt) + encode(t.response) for t in texts],
            512,
            lf_tokenizer,
            chat_frame(template, lf_tokenizer),
            lambda: model,
            layout,
            head_set,
            None,
            "tiny",
            "fp",
            False,
        ),
        P2DArguments(p2d_data_selection="p2d", **keys),
    )
    assert selection.selected == reference.selected and selection.scores == pytest.approx(reference.scores)

    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [
        "p2d_data_hist.png",
        "p2d_data_scores.json",
        "p2d_data_selected.json",
        "p2d_data_stats.json",
        "p2d_timings.json",
    ]
    scores = json.loads((tmp_path / "p2d_data_scores.json").read_text())
    assert scores["selected"] == selection.selected and scores["num_examples"] == 24
    assert scores["settings"]["heads"] == {"0": [1], "1": [0], "2": [3]}
    subset = json.loads((tmp_path / "p2d_data_selected.json").read_text())
    assert [row["conversations"][0]["value"] for row in subset] == [examples[i]["prompt"] for i in selection.selected]
    assert [row["conversations"][1]["value"] for row in subset] == [
        examples[i]["response"] for i in selection.selected
    ]
    stats = json.loads((tmp_path / "p2d_data_stats.json").read_text())
    assert stats["num_selected"] == 6 and stats["perplexity_all"]["sampled"] == 4
    assert set(json.loads((tmp_path / "p2d_timings.json").read_text())) == {"data_scoring_seconds"}

    random = api.select_data(model, tiny_tokenizer, examples, p2d_data_selection="random", p2d_data_ratio=0.5)
    assert len(random.selected) == 12  # no heads needed, nothing written without output_dir


@pytest.mark.parametrize(
    ("call", "keys", "message"),
    [
        (
            "identify",
            {"p2d_head_selection": "magnitude"},
            "`p2d_head_selection` must be one of w1, random, cosine, gradient; got 'magnitude'",
        ),
        (
            "identify",
            {"head_ratio": 0.2},
            r"`head_ratio` is not a P2D key; identify_heads\(\) takes p2d_head_ratio, .*Did you mean `p2d_head_ratio`",
        ),
        (
            "identify",
            {"p2d_data_ratio": 0.2},
            r"`p2d_data_ratio` is not a setting of identify_heads\(\); identify_heads\(\) takes p2d_head_ratio",
        ),
        ("identify", {"p2d_head_ratio": 0.01}, "`p2d_head_ratio: 0.01` selects 0 of the 12 heads"),
        ("identify", {"p2d_head_trainable_layers": -4}, "asks for more layers than this model's 3"),
        ("identify", {"p2d_fhi_steps": 2.5}, "`p2d_fhi_steps` must be a whole number; got 2.5"),
        ("identify", {"p2d_fhi_lr": "1e-4"}, "`p2d_fhi_lr` must be a number; got the text '1e-4'"),
        ("identify", {"p2d_heads_file": "missing.json"}, "`p2d_heads_file` 'missing.json' does not exist"),
        ("select", {"p2d_icl_metric": "bleu"}, "`p2d_icl_metric` must be one of auto, em, rougeL; got 'bleu'"),
        ("select", {"p2d_data_ratio": 0.01}, "`p2d_data_ratio: 0.01` keeps 0 of the 24 training examples"),
        ("select", {"p2d_icl_demos": 30}, "Data selection needs at least 33 usable examples"),
        ("select", {"heads": None}, "`p2d_data_selection: p2d` needs `heads`"),
        ("select", {"p2d_data_selection": "none"}, "must be one of p2d, random, ifd, data_whisperer"),
        ("select", {"p2d_head_ratio": 0.2}, r"`p2d_head_ratio` is not a setting of select_data\(\)"),
        ("adapter", {"p2d_head_modules": "q,x"}, "`p2d_head_modules` takes a comma-separated subset of q, k, v, o"),
        ("adapter", {"p2d_head_lr_scale": 0}, "`p2d_head_lr_scale` must be a finite number > 0"),
        ("adapter", {"heads": [(3, 0)]}, r"`heads` selects head \(3, 0\), outside this model's layout"),
    ],
)
def test_bad_settings_fail_naming_the_key_before_any_work(tiny_tokenizer, tmp_path, monkeypatch, call, keys, message):
    monkeypatch.setattr(identify_module, "train_proxy", lambda *a, **k: pytest.fail("stage I ran"))
    model = build_model("llama", tiny_tokenizer)
    model.forward = lambda *a, **k: pytest.fail("the model ran")
    examples = demo_examples(24)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        if call == "identify":
            api.identify_heads(model, tiny_tokenizer, examples, output_dir=out, **keys)
        elif call == "select":
            api.select_data(model, tiny_tokenizer, examples, heads=keys.pop("heads", [(0, 0)]), output_dir=out, **keys)
        else:
            api.apply_head_adapter(model, keys.pop("heads", [(0, 0)]), output_dir=out, **keys)
    assert not out.exists()  # nothing written


def test_aer_counts_the_recorded_stages_against_t_fft(tiny_tokenizer, tmp_path):
    out = tmp_path / "run"
    record_timings(out, {"head_identification_seconds": 2.0, "data_scoring_seconds": 3.0})
    record = api.aer(out, training_seconds=5.0, t_fft=20.0)
    assert record["aer"] == pytest.approx(0.5) and record["mode"] == "measured"
    assert json.loads((out / "p2d_aer.json").read_text()) == record
    assert json.loads((out / "p2d_timings.json").read_text())["training_seconds"] == 5.0

    reference = tmp_path / "full_ft"
    record_timings(reference, {"training_seconds": 40.0})
    assert api.aer(out, p2d_aer_reference=str(reference))["aer"] == pytest.approx(0.25)  # training time as recorded

    record_timings(out, {"inherited_head_identification_seconds": 10.0})
    both = api.aer(out, t_fft=20.0)
    assert (both["aer"], both["aer_this_run"]) == pytest.approx((1.0, 0.5))

    model = build_model("llama", tiny_tokenizer)
    batches = [lm_batch(random_ids(tiny_tokenizer, (2, 8), seed=s)) for s in range(3)]
    t_fft = api.estimate_t_fft(model, batches, full_data_tokens=160, epochs=2.0, p2d_aer_estimate_steps=2)
    assert t_fft.mode == "estimated" and t_fft.inputs["timed_tokens"] == 32 and t_fft.inputs["estimate_steps"] == 2
    assert t_fft.seconds == pytest.approx(t_fft.inputs["seconds_per_token"] * 160 * 2.0)
    assert api.aer(out, t_fft=t_fft)["t_fft_inputs"] == t_fft.inputs

    with pytest.raises(ValueError, match="exactly one of `t_fft` and `p2d_aer_reference`"):
        api.aer(out)
    with pytest.raises(ValueError, match="`p2d_aer_reference` .* is not a directory"):
        api.aer(out, p2d_aer_reference=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="`p2d_aer_estimate_steps` must be a positive integer"):
        api.estimate_t_fft(model, batches, full_data_tokens=1, p2d_aer_estimate_steps=0)
    with pytest.raises(ValueError, match="has no training time"):
        api.aer(tmp_path / "empty", t_fft=1.0)


def _example_module():
    spec = importlib.util.spec_from_file_location("api_trl_sft", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_trl_example_runs_and_learns(tiny_models, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(EXAMPLE), "--model", str(tiny_models["llama"]), "--tiny", "--output-dir", str(out)]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "example_summary.json").read_text())
    assert summary["steps"] == 12 and len(summary["selected"]) == 12  # 50% of the 24 tiny examples
    assert summary["loss_after"]["train"] < summary["loss_before"]["train"] - 0.05, summary  # it learns
    files = {p.name for p in out.iterdir()}
    expected = {HEADS_FILE, HEATMAP_FILE, "p2d_data_scores.json", "p2d_data_selected.json", "p2d_data_stats.json"}
    expected |= {"p2d_data_hist.png", "p2d_timings.json", "p2d_run.json", "p2d_aer.json", "adapter_config.json"}
    assert expected <= files, expected - files
    timings = json.loads((out / "p2d_timings.json").read_text())
    assert {"head_identification_seconds", "data_scoring_seconds", "training_seconds"} <= set(timings)
    assert json.loads((out / "p2d_aer.json").read_text())["mode"] == "estimated"

    # the saved adapter, loaded with plain peft, is the trained model
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models["llama"]), out)
    examples = json.loads((out / "p2d_data_selected.json").read_text())
    subset = [
        {"prompt": ex["conversations"][0]["value"], "response": ex["conversations"][1]["value"]} for ex in examples
    ]
    rows = api.tokenize_examples(tokenizer, subset, 256)
    loss = _example_module().mean_response_loss(model, tokenizer, rows)
    assert loss == pytest.approx(summary["loss_after"]["train"], abs=1e-4)


def test_the_example_says_how_to_get_the_default_model(tmp_path):
    cmd = [sys.executable, str(EXAMPLE), "--model", str(tmp_path / "none"), "--output-dir", str(tmp_path / "out")]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "p2d-prepare" in done.stderr
    assert not (tmp_path / "out").exists()


def test_bad_plain_arguments_are_refused_naming_them(tiny_tokenizer, tmp_path):
    """What a notebook user can pass that the YAML path cannot: booleans as head indices, a prompt that is not a
    text, no examples, no tokens, a negative training time, an adapter applied twice."""
    model = build_model("llama", tiny_tokenizer)
    with pytest.raises(ValueError, match=r"`heads` pairs must be \[layer, head\] integers"):
        api.apply_head_adapter(model, [[True, 0]])
    with pytest.raises(ValueError, match="Example 0's prompt is NoneType None, not a text"):
        api.tokenize_examples(tiny_tokenizer, [{"prompt": None, "response": "yes"}])
    with pytest.raises(ValueError, match="`max_length` must be a whole number of tokens >= 1; got 0"):
        api.tokenize_examples(tiny_tokenizer, demo_examples(2), max_length=0)
    with pytest.raises(ValueError, match=r"identify_heads\(\) got no `examples`"):
        api.identify_heads(model, tiny_tokenizer, [], **STAGE1)
    with pytest.raises(ValueError, match="`training_seconds` must be a finite number of seconds >= 0; got -5"):
        api.aer(tmp_path, training_seconds=-5, t_fft=100.0)
    assert not (tmp_path / "p2d_timings.json").exists()  # refused before anything is written
    wrapped = api.apply_head_adapter(model, [[0, 1]])
    with pytest.raises(ValueError, match="already carries a PEFT adapter"):
        api.apply_head_adapter(wrapped, [[0, 1]])
