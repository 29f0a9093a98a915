"""`p2d_fhi_trainable`: the attention-only FHI proxy (q/k/v copies inside the shared base model) and the memory
preflight that refuses a proxy that cannot fit, before any proxy work."""

import copy
import dataclasses
import json
import re
import sys
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import DataCollatorForSeq2Seq

from p2d_llamafactory.experiments.published import PUBLISHED_MODELS, published_config
from p2d_llamafactory.files import HEADS_FILE
from p2d_llamafactory.heads import identify as identify_module
from p2d_llamafactory.heads import proxy as proxy_module
from p2d_llamafactory.heads import proxy_memory as memory_module
from p2d_llamafactory.heads.headset import HeadSet
from p2d_llamafactory.heads.identify import FHIInputs, identify_heads
from p2d_llamafactory.heads.layout import find_attention_layout
from p2d_llamafactory.heads.proxy import Float32Projection, make_batches, train_proxy
from p2d_llamafactory.heads.proxy_memory import (
    available_memory,
    check_proxy_fits,
    proxy_memory,
    proxy_memory_from_config,
)
from p2d_llamafactory.heads.scoring import weight_scores
from p2d_llamafactory.hparams import P2DArguments
from tests.helpers.examples import tokenized_examples
from tests.helpers.tiny import build_model, tiny_config


QKV = re.compile(r"\.(q|k|v|qkv)_proj\.")  # the projections the attention proxy trains, weights and biases


@pytest.fixture
def batches(tiny_tokenizer):
    collate = DataCollatorForSeq2Seq(tiny_tokenizer, label_pad_token_id=-100, padding=True, return_tensors="pt")
    examples = tokenized_examples(tiny_tokenizer, 12)

    def make(micro: int = 4, by_length: bool = True):
        return make_batches(examples, collate, micro, "cpu", by_length)

    return make


def _rows(batches) -> list[tuple[int, ...]]:
    """Every micro-batch row's unpadded input ids."""
    return [
        tuple(ids[mask.bool()].tolist()) for b in batches for ids, mask in zip(b["input_ids"], b["attention_mask"])
    ]


def test_micro_batches_group_examples_by_length(tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(proxy_module, "PAD_MULTIPLE", 8)
    collate = DataCollatorForSeq2Seq(tiny_tokenizer, label_pad_token_id=-100, padding=True, return_tensors="pt")
    examples = tokenized_examples(tiny_tokenizer, 12)
    examples[5] = {key: value * 6 for key, value in examples[5].items()}  # one long outlier
    lengths = sorted(len(ex["input_ids"]) for ex in examples)
    grouped = make_batches(examples, collate, 4, "cpu")
    widths = [b["input_ids"].shape[1] for b in grouped]
    assert widths == [min(-(-max(lengths[i : i + 4]) // 8) * 8, lengths[-1]) for i in range(0, 12, 4)]
    assert widths[-1] == lengths[-1] and widths[0] < lengths[-1] // 2  # only the outlier's batch is that wide
    flat = make_batches(examples, collate, 4, "cpu", by_length=False)
    assert [b["input_ids"].shape[1] for b in flat] == [lengths[-1]] * 3
    assert sorted(_rows(grouped)) == sorted(_rows(flat)) == sorted(tuple(ex["input_ids"]) for ex in examples)
    assert sorted(int(mask.sum()) for b in grouped for mask in b["attention_mask"]) == lengths
    assert all((b["labels"][b["attention_mask"] == 0] == -100).all() for b in grouped)  # padding carries no loss


def test_grouping_by_length_does_not_change_a_proxy_step(tiny_tokenizer, batches):
    model = build_model("llama", tiny_tokenizer)
    (a, la), (b, lb) = (
        train_proxy(model, batches(4, by_length), steps=2, lr=1e-3, progress=False) for by_length in (True, False)
    )
    assert la == pytest.approx(lb, rel=1e-5)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=3e-6, msg=name)


@pytest.fixture
def fhi(tiny_tokenizer, tmp_path):
    def make(kind="llama", output_dir=tmp_path):
        return FHIInputs(
            model=build_model(kind, tiny_tokenizer),
            model_name=f"tiny-{kind}",
            examples=tokenized_examples(tiny_tokenizer, 12),
            collate=DataCollatorForSeq2Seq(tiny_tokenizer, label_pad_token_id=-100, padding=True, return_tensors="pt"),
            micro_batch_size=4,
            output_dir=str(output_dir) if output_dir else None,
            progress=False,
        )

    return make


def _reference_proxy(model, batches, steps, lr):
    """Independent reference: a float32 deep copy in which only the q/k/v projections train (the paper's proxy,
    restricted to what `attention` trains), with the full-batch mean token loss."""
    ref = copy.deepcopy(model).to(torch.float32)
    ref.requires_grad_(False)
    params = [p for name, p in ref.named_parameters() if QKV.search(name)]
    for p in params:
        p.requires_grad_(True)
    ref.train()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    total = sum(int((b["labels"][..., 1:] != -100).sum()) for b in batches)
    for _ in range(steps):
        optimizer.zero_grad()
        for b in batches:
            (ref(**b).loss * int((b["labels"][..., 1:] != -100).sum()) / total).backward()
        optimizer.step()
    return ref


def _snapshot(model):
    return {
        "tensors": {name: t.detach().clone() for name, t in model.state_dict().items()},
        "pointers": {name: p.data_ptr() for name, p in model.named_parameters()},
        "dtypes": {name: p.dtype for name, p in model.named_parameters()},
        "modules": {name: id(m) for name, m in model.named_modules()},
        "flags": {name: p.requires_grad for name, p in model.named_parameters()},
        "modes": {name: m.training for name, m in model.named_modules()},
    }


# ---------------------------------------------------------------- the attention-only proxy


@pytest.mark.parametrize("kind", ["llama", "qwen2", "phi3"])
def test_attention_proxy_equals_a_full_copy_training_only_qkv(kind, tiny_tokenizer, batches):
    model = build_model(kind, tiny_tokenizer)
    proxy, losses = train_proxy(model, batches(), steps=2, lr=1e-3, progress=False, trainable="attention")
    reference = _reference_proxy(model, batches(), steps=2, lr=1e-3)
    trained = {name: p for name, p in proxy.named_parameters() if QKV.search(name)}
    expected = {name: p for name, p in reference.named_parameters() if QKV.search(name)}
    assert set(trained) == set(expected) and trained  # q/k/v (qkv for phi3), with qwen2's biases
    assert any(name.endswith("bias") for name in trained) == (kind == "qwen2")
    for name, param in trained.items():
        assert param.dtype == torch.float32 and not param.requires_grad
        # float32 rounding of two computations of the same update, which Adam's normalisation can amplify
        torch.testing.assert_close(param, expected[name], rtol=0, atol=3e-6, msg=name)
        assert not torch.equal(param, model.get_parameter(name)), name  # the proxy moved
    assert losses[1] < losses[0]


def test_attention_proxy_steps_are_full_batch_whatever_the_micro_batch(tiny_tokenizer, batches):
    model = build_model("llama", tiny_tokenizer)
    (a, la), (b, lb) = (
        train_proxy(model, batches(micro), steps=2, lr=1e-3, progress=False, trainable="attention")
        for micro in (1, 12)
    )
    assert la == pytest.approx(lb, rel=1e-5)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=2e-6, msg=name)


@pytest.mark.parametrize("kind", ["llama", "phi3"])
def test_attention_proxy_shares_every_frozen_weight_and_trains_only_qkv(kind, tiny_tokenizer, batches, monkeypatch):
    model = build_model(kind, tiny_tokenizer)
    pointers = {name: p.data_ptr() for name, p in model.named_parameters()}
    seen, optimizers = [], []
    real_fit = proxy_module._fit

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            optimizers.append(self)

    def fit(trained_model, params, *args):  # what the training loop sees
        named = {name: (p.data_ptr(), p.dtype, p.requires_grad) for name, p in trained_model.named_parameters()}
        seen.append((trained_model, named, params))
        return real_fit(trained_model, params, *args)

    monkeypatch.setattr(proxy_module, "_fit", fit)
    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    proxy, _ = train_proxy(model, batches(), steps=2, lr=1e-3, progress=False, trainable="attention")

    (trained_model, named, params), (optimizer,) = seen[0], optimizers
    assert trained_model is model  # no deep copy: the base model itself runs the steps
    copies = {name for name in named if QKV.search(name)}
    assert len(copies) == len(params) == (3 if kind == "phi3" else 9)
    for name, (pointer, dtype, requires_grad) in named.items():
        if name in copies:  # float32 trainable copies in their own storage
            assert dtype == torch.float32 and requires_grad and pointer not in pointers.values(), name
        else:  # every other weight is the base's own tensor, frozen
            assert pointer == pointers[name] and not requires_grad, name
    # optimizer state only for the copies, which are exactly the proxy's q/k/v
    assert {id(p) for p in optimizer.state} == {id(p) for p in params}
    assert {id(p) for n, p in proxy.named_parameters() if QKV.search(n)} == {id(p) for p in params}
    assert all(set(state) >= {"exp_avg", "exp_avg_sq"} for state in optimizer.state.values())
    # the proxy's o_proj is the base's own (untrained, shared)
    o_name = next(n for n in pointers if n.endswith("o_proj.weight"))
    assert proxy.get_parameter(o_name).data_ptr() == pointers[o_name]
    assert all(p.grad is None for p in model.parameters())  # no gradient ever reached a base weight


@pytest.mark.parametrize("fails", [False, True])
def test_attention_proxy_leaves_the_base_model_exactly_as_it_was(fails, tiny_tokenizer, batches):
    model = build_model("qwen2", tiny_tokenizer)
    model.model.embed_tokens.weight.requires_grad_(False)  # mixed flags and modes must come back as they were
    model.model.layers[1].train()
    before = _snapshot(model)
    calls = []

    def second_forward_fails(*_):  # the second micro-batch of the first step, after a backward pass
        calls.append(1)
        if fails and len(calls) == 2:
            raise RuntimeError("boom")

    hook = model.model.layers[2].register_forward_hook(second_forward_fails)
    try:
        if fails:
            with pytest.raises(RuntimeError, match="boom"):
                train_proxy(model, batches(), steps=2, lr=1e-3, progress=False, trainable="attention")
        else:
            train_proxy(model, batches(), steps=2, lr=1e-3, progress=False, trainable="attention")
    finally:
        hook.remove()
    assert len(calls) == (2 if fails else 6)
    after = _snapshot(model)
    for key in ("pointers", "dtypes", "modules", "flags", "modes"):
        assert after[key] == before[key], key
    for name, tensor in before["tensors"].items():
        assert torch.equal(after["tensors"][name], tensor), name
    assert all(p.grad is None for p in model.parameters())
    assert not model.model.embed_tokens.weight.requires_grad and model.model.layers[1].training and not model.training


def test_attention_proxy_in_half_precision(tiny_tokenizer, batches):
    model32 = build_model("llama", tiny_tokenizer)
    model16 = build_model("llama", tiny_tokenizer).to(torch.bfloat16)
    before = {name: t.clone() for name, t in model16.state_dict().items()}
    proxy16, losses = train_proxy(model16, batches(), steps=2, lr=1e-3, progress=False, trainable="attention")
    proxy32, _ = train_proxy(model32, batches(), steps=2, lr=1e-3, progress=False, trainable="attention")
    assert all(torch.equal(before[name], t) and t.dtype == torch.bfloat16 for name, t in model16.state_dict().items())
    assert losses[1] < losses[0]
    for name, param in proxy16.named_parameters():
        if not QKV.search(name):
            continue
        assert param.dtype == torch.float32
        update16 = (param - model16.get_parameter(name).float()).flatten()
        update32 = (proxy32.get_parameter(name) - model32.get_parameter(name)).flatten()
        # the frozen layers compute in bfloat16, so the update is close to, not equal to, the float32 one
        assert torch.nn.functional.cosine_similarity(update16, update32, dim=0) > 0.95, name


def test_a_float32_projection_in_a_half_precision_model():
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 6).to(torch.bfloat16)
    projection = Float32Projection(linear)
    assert projection.weight.dtype == torch.float32 and projection.weight.data_ptr() != linear.weight.data_ptr()
    assert torch.equal(projection.weight, linear.weight.float()) and torch.equal(projection.bias, linear.bias.float())
    x = torch.randn(2, 5, 8, dtype=torch.bfloat16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = projection(x)
    assert out.dtype == torch.bfloat16
    assert not any(t.dtype == torch.float32 and t.numel() == x.numel() for t in saved)  # no float32 copy of x kept
    grad = torch.randn(2, 5, 6, dtype=torch.bfloat16)
    out.backward(grad)
    # reference: the same float32 computation by autograd, on a float32 copy of x
    x32 = x.detach().float().requires_grad_(True)
    w32, b32 = (
        projection.weight.detach().clone().requires_grad_(True),
        projection.bias.detach().clone().requires_grad_(),
    )
    reference = torch.nn.functional.linear(x32, w32, b32)
    reference.backward(grad.float())
    assert torch.equal(out, reference.to(torch.bfloat16))
    torch.testing.assert_close(projection.weight.grad, w32.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(projection.bias.grad, b32.grad, rtol=1e-6, atol=1e-6)
    assert x.grad.dtype == torch.bfloat16 and torch.equal(x.grad, x32.grad.to(torch.bfloat16))
    double = Float32Projection(torch.nn.Linear(4, 3)).double()  # the backward is the linear's exact gradient
    assert torch.autograd.gradcheck(double, (torch.randn(2, 4, dtype=torch.float64, requires_grad=True),))


def test_attention_identification_scores_the_base_against_the_qkv_proxy(fhi, tmp_path, monkeypatch):
    inputs = fhi()
    args = P2DArguments(
        p2d_head_ratio=0.25, p2d_fhi_samples=12, p2d_fhi_steps=2, p2d_fhi_lr=1e-3, p2d_fhi_trainable="attention"
    )
    with monkeypatch.context() as patch:
        patch.setattr(proxy_module, "copy", SimpleNamespace(deepcopy=lambda *a: pytest.fail("a model was copied")))
        head_set = identify_heads(inputs, args)
    assert head_set.settings["p2d_fhi_trainable"] == "attention" and len(head_set.proxy_loss) == 2
    assert HeadSet.load(tmp_path / HEADS_FILE).settings["p2d_fhi_trainable"] == "attention"
    batches = make_batches(inputs.examples, inputs.collate, 4, "cpu")
    reference = _reference_proxy(inputs.model, batches, steps=2, lr=1e-3)
    layout = find_attention_layout(inputs.model)
    expected = weight_scores(inputs.model, reference, layout, "w1", 0.1, progress=False)
    assert (expected > 0).all()
    torch.testing.assert_close(torch.tensor(head_set.scores, dtype=torch.float64), expected, rtol=1e-4, atol=1e-12)
    # the paper's proxy (all) is another stage I result: not reused for attention, and vice versa
    calls = []
    real = identify_module.train_proxy
    monkeypatch.setattr(identify_module, "train_proxy", lambda *a, **k: calls.append(a[5]) or real(*a, **k))
    identify_heads(inputs, args)
    assert calls == []
    identify_heads(inputs, dataclasses.replace(args, p2d_fhi_trainable="all"))
    assert calls == ["all"]


def test_a_head_set_recorded_before_the_key_existed_is_the_all_proxy(fhi, tmp_path, monkeypatch):
    inputs = fhi()
    args = P2DArguments(p2d_head_ratio=0.25, p2d_fhi_samples=8, p2d_fhi_steps=1, p2d_fhi_lr=1e-3)
    first = identify_heads(inputs, args)
    path = tmp_path / HEADS_FILE
    old = json.loads(path.read_text())
    del old["settings"]["p2d_fhi_trainable"]  # as written before p2d_fhi_trainable existed
    path.write_text(json.dumps(old))
    monkeypatch.setattr(identify_module, "train_proxy", lambda *a, **k: pytest.fail("should be reused"))
    assert identify_heads(inputs, args).scores == first.scores
    with pytest.raises(pytest.fail.Exception, match="should be reused"):
        identify_heads(inputs, dataclasses.replace(args, p2d_fhi_trainable="attention"))


@pytest.mark.parametrize("trainable", ["all", "attention"])
def test_the_proxy_is_freed_before_identify_returns(trainable, fhi, monkeypatch):
    refs = []
    real = identify_module.train_proxy

    def tracked(*args, **kwargs):
        proxy, losses = real(*args, **kwargs)
        refs.append(weakref.ref(proxy))
        return proxy, losses

    monkeypatch.setattr(identify_module, "train_proxy", tracked)
    args = P2DArguments(p2d_fhi_samples=4, p2d_fhi_steps=1, p2d_fhi_lr=1e-3, p2d_fhi_trainable=trainable)
    identify_heads(fhi(output_dir=None), args)
    assert len(refs) == 1 and refs[0]() is None


def test_the_key_through_llamafactorys_parser(make_args, tmp_path):
    from tests.helpers.cli import parse_train_args

    assert parse_train_args(make_args())[3].p2d_fhi_trainable == "all"  # the paper's proxy by default
    assert parse_train_args(make_args(p2d_fhi_trainable="attention"))[3].p2d_fhi_trainable == "attention"
    with pytest.raises(ValueError, match=r"`p2d_fhi_trainable` must be one of all, attention; got 'qkv'"):
        parse_train_args(make_args(p2d_fhi_trainable="qkv"))
    with pytest.raises(ValueError, match=r"`p2d_fhi_trainable` must be one of all, attention; got 'qkv'"):
        P2DArguments(p2d_fhi_trainable="qkv")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- the memory preflight


def test_memory_estimates_are_the_hand_counted_bytes(tiny_tokenizer):
    vocab, h, i, layers, tokens = len(tiny_tokenizer), 64, 96, 3, 40
    model = build_model("llama", tiny_tokenizer)  # 4 query heads, 2 kv heads of 16: k and v have 32 rows
    layout = find_attention_layout(model)
    per_layer = h * h + 2 * 32 * h + h * h + 3 * h * i + 2 * h  # q, k, v, o, gate/up/down, two norms
    total = 2 * vocab * h + layers * per_layer + h  # untied embeddings and lm_head, final norm
    qkv = layers * (h * h + 2 * 32 * h)

    def activations(itemsize):
        return tokens * (layers * (8 * h + 4 * i) * itemsize + 3 * vocab * 4)

    full = proxy_memory(model, layout, "all", tokens)
    assert (full.parameters, full.state_bytes, full.activation_bytes) == (total, 16 * total, activations(4))
    assert full.total_bytes == 16 * total + activations(4)
    assert proxy_memory_from_config(tiny_config("llama", vocab), "all", tokens, torch.float32) == full  # meta
    lean = proxy_memory(model.to(torch.bfloat16), layout, "attention", tokens)
    assert (lean.parameters, lean.state_bytes, lean.activation_bytes) == (qkv, 16 * qkv, activations(2))
    model.gradient_checkpointing_enable()  # each layer's input, plus one layer's recomputation
    checkpointed = proxy_memory(model, layout, "all", tokens)
    assert checkpointed.activation_bytes == tokens * ((layers * h + 8 * h + 4 * i) * 4 + 3 * vocab * 4)


@pytest.mark.parametrize(("kind", "rows"), [("phi3", 128 * 64), ("qwen2", 128 * 64 + 128)])
def test_the_attention_estimate_counts_what_the_proxy_trains(kind, rows, tiny_tokenizer, batches):
    model = build_model(kind, tiny_tokenizer)  # phi3: one fused qkv_proj; qwen2: q/k/v biases
    estimate = proxy_memory(model, find_attention_layout(model), "attention", 0)
    proxy, _ = train_proxy(model, batches(), steps=1, lr=1e-3, progress=False, trainable="attention")
    trained = sum(p.numel() for name, p in proxy.named_parameters() if QKV.search(name))
    assert estimate.parameters == trained == 3 * rows
    assert estimate.state_bytes == 16 * trained and estimate.activation_bytes == 0


def test_estimates_of_published_models_from_their_configs():
    qkv = {  # q rows (+ Qwen2's biases) and the k, v rows of the KV heads, per layer
        "Qwen2.5-7B": 28 * (3584 * 3584 + 3584 + 2 * (512 * 3584 + 512)),
        "Llama-3-8B": 32 * (4096 * 4096 + 2 * 1024 * 4096),
        "Qwen3-8B": 36 * (4096 * 4096 + 2 * 1024 * 4096),
    }
    for name, (_, _, published) in PUBLISHED_MODELS.items():
        config = published_config(name)
        full = proxy_memory_from_config(config, "all", 0)
        lean = proxy_memory_from_config(config, "attention", 0)
        assert full.parameters == published and full.state_bytes == 16 * published  # the model cards' counts
        assert lean.parameters == qkv[name] and lean.state_bytes == 16 * qkv[name]
        assert full.state_bytes > 80e9 > lean.state_bytes + 2 * published  # bf16 base + q/k/v proxy fit 80 GB


def _estimates(inputs):
    model = inputs.model
    tokens = 4 * max(len(ex["input_ids"]) for ex in inputs.examples)  # micro-batches of 4, padded to the longest
    layout = find_attention_layout(model)
    return proxy_memory(model, layout, "all", tokens), proxy_memory(model, layout, "attention", tokens)


@pytest.mark.parametrize(
    ("trainable", "room", "message"),
    [
        (
            "all",
            "between",
            r"\(`p2d_fhi_trainable: all`\) needs about [\d.]+ GB on cpu .*: set `p2d_fhi_trainable: "
            r"attention` \(float32 copies of q/k/v only: about [\d.e-]+ GB\)\. Nothing was trained\.",
        ),
        ("all", "none", r"\(`p2d_fhi_trainable: all`\) needs about .*: even `p2d_fhi_trainable: attention` needs"),
        ("attention", "none", r"\(`p2d_fhi_trainable: attention`\) needs .*: even `p2d_fhi_trainable: attention`"),
    ],
)
def test_a_proxy_that_cannot_fit_is_refused_before_any_proxy_work(
    trainable, room, message, fhi, tmp_path, monkeypatch
):
    inputs = fhi()
    full, lean = _estimates(inputs)
    assert lean.total_bytes < full.total_bytes
    free = (full.total_bytes + lean.total_bytes) // 2 if room == "between" else 1000
    monkeypatch.setattr(memory_module, "available_memory", lambda device: free)
    monkeypatch.setattr(identify_module, "make_batches", lambda *a: pytest.fail("batches were built"))
    monkeypatch.setattr(identify_module, "train_proxy", lambda *a: pytest.fail("a proxy was trained"))
    args = P2DArguments(p2d_fhi_samples=12, p2d_fhi_steps=1, p2d_fhi_lr=1e-3, p2d_fhi_trainable=trainable)
    with pytest.raises(ValueError, match=message) as error:
        identify_heads(inputs, args)
    estimate = full if trainable == "all" else lean
    assert f"needs about {estimate.total_bytes / 1e9:.3g} GB" in str(error.value)
    assert f"{estimate.parameters:,} trained parameters" in str(error.value)
    assert list(tmp_path.iterdir()) == []  # no p2d_heads.json, nothing else


def test_the_attention_proxy_runs_where_only_it_fits(fhi, tmp_path, monkeypatch):
    inputs = fhi()
    full, lean = _estimates(inputs)
    monkeypatch.setattr(memory_module, "available_memory", lambda device: lean.total_bytes)  # exactly enough
    identify_heads(inputs, P2DArguments(p2d_fhi_samples=12, p2d_fhi_steps=1, p2d_fhi_trainable="attention"))
    assert (tmp_path / HEADS_FILE).is_file()


@pytest.mark.parametrize("source", ["w1", "cosine", "reuse", "heads_file", "task_model", "random", "gradient"])
def test_the_preflight_runs_only_where_a_proxy_is_trained(source, fhi, tiny_tokenizer, tmp_path, monkeypatch):
    inputs = fhi()
    args = P2DArguments(p2d_head_ratio=0.25, p2d_fhi_samples=8, p2d_fhi_steps=1, p2d_fhi_lr=1e-3)
    if source == "reuse":
        identify_heads(inputs, args)
    elif source == "heads_file":
        HeadSet("x", find_attention_layout(inputs.model).shape(), "w1", 0, 0.1, [], [(0, 1)]).save(tmp_path / "h.json")
        args = dataclasses.replace(args, p2d_heads_file=str(tmp_path / "h.json"))
    elif source == "task_model":
        task = build_model("llama", tiny_tokenizer)
        with torch.no_grad():
            task.model.layers[1].self_attn.q_proj.weight[16:32] += 0.05  # three heads move: the top 3 are decided
            task.model.layers[1].self_attn.q_proj.weight[32:48] += 0.03
            task.model.layers[0].self_attn.q_proj.weight[0:16] += 0.04
        task.save_pretrained(tmp_path / "task")
        args = dataclasses.replace(args, p2d_task_model=str(tmp_path / "task"))
    elif source != "reuse":
        args = dataclasses.replace(args, p2d_head_selection=source)
    probes = []
    monkeypatch.setattr(memory_module, "available_memory", lambda device: probes.append(device) or 10**15)
    identify_heads(inputs, args)
    assert probes == ([torch.device("cpu")] if source in ("w1", "cosine") else [])


def test_available_memory_on_each_device(monkeypatch):
    ram = available_memory(torch.device("cpu"))
    assert ram > 0
    monkeypatch.setitem(sys.modules, "psutil", None)  # no psutil: /proc/meminfo
    if Path("/proc/meminfo").is_file():
        assert available_memory(torch.device("cpu")) == pytest.approx(ram, rel=0.2)
    assert available_memory(torch.device("meta")) is None
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (10 * 2**30, 80 * 2**30))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 2**30)
    assert available_memory(torch.device("cuda", 0)) == 12 * 2**30  # free + cached by torch but unused


def test_nothing_is_refused_where_the_free_memory_is_unknown(tiny_tokenizer, monkeypatch):
    model = build_model("llama", tiny_tokenizer)
    monkeypatch.setattr(memory_module, "available_memory", lambda device: None)
    check_proxy_fits(model, find_attention_layout(model), "all", 10**9)
    monkeypatch.setattr(memory_module, "available_memory", lambda device: 0)
    with pytest.raises(ValueError, match="needs about"):
        check_proxy_fits(model, find_attention_layout(model), "all", 10**9)


@pytest.mark.parametrize("bits", [4, 8])
def test_attention_proxy_on_a_quantized_base_trains_dequantized_copies(bits, tiny_models, batches):
    """On a bitsandbytes base the `attention` proxy trains float32 copies of the dequantized q/k/v: the same proxy
    as on the float32 model holding those dequantized weights. `all` cannot copy 4-/8-bit weights: refused."""
    pytest.importorskip("bitsandbytes")
    from tests.helpers.tiny import quantized_twin

    quantized, twin = quantized_twin(tiny_models["llama_quant"], bits)
    layout = find_attention_layout(twin)
    q_proj = type(quantized.model.layers[0].self_attn.q_proj)
    proxy, losses = train_proxy(quantized, batches(), steps=2, lr=1e-3, progress=False, trainable="attention")
    expected, expected_losses = train_proxy(twin, batches(), steps=2, lr=1e-3, progress=False, trainable="attention")
    assert type(quantized.model.layers[0].self_attn.q_proj) is q_proj  # the quantized linears are back
    assert losses == pytest.approx(expected_losses, rel=1e-5) and losses[1] < losses[0]
    trained = {name: p for name, p in proxy.named_parameters() if QKV.search(name)}
    assert len(trained) == 3 * layout.num_layers
    for name, param in trained.items():
        assert param.dtype == torch.float32
        torch.testing.assert_close(param, expected.get_parameter(name), rtol=0, atol=1e-5, msg=name)  # steps: 2e-3
    assert weight_scores(quantized, proxy, layout, "w1", 1.0, progress=False).min() > 0

    with pytest.raises(ValueError, match=r"`p2d_fhi_trainable: all` trains a float32 copy of every weight"):
        train_proxy(quantized, batches(), steps=1, lr=1e-3, progress=False, trainable="all")
    # the preflight counts the copies' unpacked weights and the activations in the compute dtype
    assert proxy_memory(quantized, layout, "attention", 64) == proxy_memory(twin, layout, "attention", 64)


@pytest.mark.parametrize("quantization", [None, (4, True), (4, False), (8, True)], ids=str)
def test_base_memory_estimate_equals_the_loaded_storage(quantization, tiny_models):
    from transformers import AutoConfig

    from p2d_llamafactory.heads.proxy_memory import base_memory_from_config
    from p2d_llamafactory.models import Quantization, load_causal_lm, weight_bytes

    if quantization is not None:
        pytest.importorskip("bitsandbytes")
        quantization = Quantization(quantization[0], double_quantization=quantization[1])
    path = str(tiny_models["llama_quant"])
    model = load_causal_lm(path, torch.float32, "cpu", quantization=quantization)
    estimate = base_memory_from_config(AutoConfig.from_pretrained(path), torch.float32, quantization)
    assert estimate == weight_bytes(model)
