"""LoFiT (``finetuning_type: lofit``): the exact forward change of both steps, step 1 against an independent
reparametrised reference, only v of the chosen heads training in step 2, and the stock-peft artifact (load, merge)."""

import copy
import json

import pytest
import torch
from torch import nn
from torch.func import functional_call

from p2d_llamafactory.adapter.lofit import (
    ATTENTION_BIAS_FAMILIES,
    apply_lofit_biases,
    bias_columns,
    count_bias_params,
    merge_lofit,
)
from p2d_llamafactory.files import LOFIT_HEADS_FILE
from p2d_llamafactory.heads.headset import HeadSet
from p2d_llamafactory.heads.layout import find_attention_layout
from p2d_llamafactory.heads.lofit import (
    INIT_STD,
    LofitSelectSettings,
    epoch_order,
    head_scalings,
    select_lofit_heads,
    train_head_scalings,
)
from p2d_llamafactory.hparams import P2DArguments
from tests.helpers.tiny import FAMILIES, build_model, lm_batch, logits, random_ids


SELECTED = [(0, 1), (0, 3), (2, 0)]


def _o_proj(model, layout, layer):
    return model.get_submodule(f"{layout.attention_modules[layer]}.o_proj")


@pytest.mark.parametrize("kind", FAMILIES)
def test_step1_scaling_is_out_h_times_one_plus_a(tiny_tokenizer, kind):
    """With the hooks on, the model equals one whose o_proj columns are scaled by (1 + A): o_proj((1+A) * x)."""
    model = build_model(kind, tiny_tokenizer)
    layout = find_attention_layout(model)
    ids = random_ids(tiny_tokenizer)
    before = logits(model, ids)
    reference = copy.deepcopy(model)
    with head_scalings(model, layout, seed=0) as scales:
        with torch.no_grad():
            for layer, scale in enumerate(scales):
                scale.normal_(0.0, 0.3)
                _o_proj(reference, layout, layer).weight.mul_(1.0 + scale.flatten())
        scaled = logits(model, ids)
    torch.testing.assert_close(scaled, logits(reference, ids), rtol=1e-4, atol=1e-4)
    assert (scaled - before).abs().max() > 1e-2  # the scaling mattered
    torch.testing.assert_close(logits(model, ids), before, rtol=0, atol=0)  # hooks removed on exit


def test_step1_initialisation_is_lofits(tiny_tokenizer):
    model = build_model("llama", tiny_tokenizer)
    layout = find_attention_layout(model)
    with head_scalings(model, layout, seed=5) as scales:
        values = torch.cat([s.detach().flatten() for s in scales])
    assert [tuple(s.shape) for s in scales] == [(layout.num_heads, layout.head_dim)] * layout.num_layers
    assert abs(values.std().item() - INIT_STD) < 0.15 * INIT_STD and abs(values.mean().item()) < 2e-4


def _reference_norms(model, layout, batches, settings):
    """Step 1 written independently: A enters as o_proj.weight * (1 + A) through functional_call."""
    names = [f"{prefix}.o_proj.weight" for prefix in layout.attention_modules]
    weights = {name: model.get_parameter(name).detach() for name in names}
    gen = torch.Generator().manual_seed(settings.seed)
    scales = [nn.Parameter(torch.randn(layout.num_heads, layout.head_dim, generator=gen) * INIT_STD) for _ in names]
    opt = torch.optim.AdamW(scales, lr=settings.lr, weight_decay=0.0)
    for step, batch in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = settings.lr * (1.0 - step / len(batches))
        opt.zero_grad()
        params = {name: weights[name] * (1.0 + a.flatten()) for name, a in zip(names, scales)}
        loss = functional_call(model, params, kwargs=batch).loss
        (loss + settings.l1_lambda * sum(a.abs().sum() for a in scales)).backward()
        opt.step()
    return torch.stack([a.detach().norm(dim=-1) for a in scales])


@pytest.mark.parametrize("kind", ["llama", "phi3"])
def test_step1_training_matches_an_independent_reference(tiny_tokenizer, kind):
    model = build_model(kind, tiny_tokenizer)
    layout = find_attention_layout(model)
    batches = [lm_batch(random_ids(tiny_tokenizer, (2, 10), seed=s)) for s in range(4)]
    settings = LofitSelectSettings(l1_lambda=1e-2, lr=5e-2, epochs=1.0, seed=7)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    norms, losses = train_head_scalings(model, layout, batches, len(batches), settings, progress=False)
    expected = _reference_norms(copy.deepcopy(model).eval().requires_grad_(False), layout, batches, settings)
    torch.testing.assert_close(norms, expected, rtol=1e-4, atol=1e-6)
    assert norms.shape == (layout.num_layers, layout.num_heads) and len(losses) == 4
    assert float(norms.std()) > 0  # the heads are told apart
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags  # restored
    assert not any(p.grad is not None for p in model.parameters())  # the base model got no gradient


def test_l1_penalty_shrinks_the_scalings(tiny_tokenizer):
    model = build_model("llama", tiny_tokenizer)
    layout = find_attention_layout(model)
    batches = [lm_batch(random_ids(tiny_tokenizer, (2, 10), seed=s)) for s in range(4)]
    run = lambda l1: train_head_scalings(model, layout, batches, 4, LofitSelectSettings(l1, 2e-2, 1.0, 0), False)[0]
    assert float(run(10.0).sum()) < 0.5 * float(run(0.0).sum())


def test_epoch_order_shuffles_each_pass_and_cuts_fractional_epochs():
    order = epoch_order(10, 2.5, 4, seed=1)
    assert len(order) == 8  # ceil(2.5 * ceil(10 / 4))
    first, second = order[:3], order[3:6]
    assert sorted(i for b in first for i in b) == list(range(10)) == sorted(i for b in second for i in b)
    assert first != second and epoch_order(10, 2.5, 4, seed=1) == order


@pytest.mark.parametrize("kind", FAMILIES)
def test_step2_adds_w_o_v_before_o_proj(tiny_tokenizer, kind):
    """The bias adapter equals out_h + v_h on the selected heads' outputs: o_proj(x + v) with v zero elsewhere."""
    base = build_model(kind, tiny_tokenizer)
    layout = find_attention_layout(base)
    reference = copy.deepcopy(base)
    model = apply_lofit_biases(copy.deepcopy(base), layout, SELECTED, seed=0)
    columns = bias_columns(layout, SELECTED)
    gen = torch.Generator().manual_seed(3)
    handles = []
    for layer, cols in columns.items():
        layer_module = model.get_base_model().get_submodule(f"{layout.attention_modules[layer]}.o_proj")
        v = torch.randn(len(cols), generator=gen) * 0.5
        with torch.no_grad():
            layer_module.lora_A["default"].weight[0, cols] = v
        full = torch.zeros(layout.num_heads * layout.head_dim)
        full[cols] = v
        hook = lambda mod, args, full=full: (args[0] + full, *args[1:])
        handles.append(_o_proj(reference, layout, layer).register_forward_pre_hook(hook))
    ids = random_ids(tiny_tokenizer)
    torch.testing.assert_close(logits(model, ids), logits(reference, ids), rtol=1e-4, atol=1e-5)
    for handle in handles:
        handle.remove()
    assert (logits(model, ids) - logits(base, ids)).abs().max() > 1e-3


def test_step2_initialises_v_as_lofit_and_counts_its_weights(tiny_tokenizer):
    base = build_model("llama", tiny_tokenizer)
    layout = find_attention_layout(base)
    model = apply_lofit_biases(base, layout, SELECTED, seed=0)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert all("o_proj.lora_A" in n for n in trainable) and len(trainable) == 2  # layers 0 and 2
    values = torch.cat([p[p != 0] for p in trainable.values()])
    assert values.numel() == count_bias_params(layout, SELECTED) == 3 * layout.head_dim
    assert values.abs().max() < 6 * INIT_STD


def test_step2_trains_only_v_of_the_chosen_heads(tiny_tokenizer):
    base = build_model("llama", tiny_tokenizer)
    layout = find_attention_layout(base)
    before = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = apply_lofit_biases(copy.deepcopy(base), layout, SELECTED, seed=0)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for seed in range(3):
        model(**lm_batch(random_ids(tiny_tokenizer, seed=seed))).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    columns = bias_columns(layout, SELECTED)
    for name, param in model.named_parameters():
        moved = (param.detach() != start[name]).nonzero()
        if "lora_A" in name:
            layer = int(name.split("layers.")[1].split(".")[0])
            assert set(moved[:, 1].tolist()) == set(columns[layer]), name  # exactly the chosen heads' v
        elif "lora_B.bias" not in name:  # lora_B.bias is derived from v (synced when saved)
            assert moved.numel() == 0, name
    merged = merge_lofit(model)
    for name, param in merged.named_parameters():
        if name.endswith(".weight"):
            torch.testing.assert_close(param, before[name], rtol=0, atol=0)  # no weight moved, only biases


@pytest.mark.parametrize("kind", FAMILIES)
def test_artifact_loads_in_stock_peft_and_merges_where_the_family_allows(tiny_tokenizer, tmp_path, kind):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = build_model(kind, tiny_tokenizer)
    layout = find_attention_layout(base)
    model = apply_lofit_biases(copy.deepcopy(base), layout, SELECTED, seed=0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.mul_(200.0)  # "trained": v well away from its N(0, 1e-3) start
    ids = random_ids(tiny_tokenizer)
    trained = logits(model, ids)
    model.save_pretrained(tmp_path / "adapter")
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["lora_bias"] is True and adapter_config["r"] == 1
    stock = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter")  # no LoFiT variant involved
    assert not any(layer_variants(stock))
    torch.testing.assert_close(logits(stock, ids), trained, rtol=1e-4, atol=1e-5)
    mergeable = base.config.model_type in ATTENTION_BIAS_FAMILIES
    assert mergeable == (kind not in ("qwen2", "mistral", "phi3"))  # o_proj without a bias, hard-wired
    if not mergeable:
        with pytest.raises(ValueError, match="cannot merge into"):
            merge_lofit(stock)
        return
    merged = merge_lofit(stock)
    merged.save_pretrained(tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    torch.testing.assert_close(logits(plain, ids), trained, rtol=1e-4, atol=1e-5)


def layer_variants(model):
    return [layer.lora_variant for layer in model.modules() if hasattr(layer, "lora_variant") and layer.lora_variant]


def _tokenized(tiny_tokenizer, n=6):
    return [
        {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids}
        for ids in (random_ids(tiny_tokenizer, (1, 8 + i), seed=i)[0].tolist() for i in range(n))
    ]


def _collate(tokenizer):
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True, return_tensors="pt")


def test_head_selection_file_is_reused_only_with_identical_settings(tiny_tokenizer, tmp_path, monkeypatch):
    import p2d_llamafactory.heads.lofit as lofit

    model = build_model("llama", tiny_tokenizer)
    layout = find_attention_layout(model)
    examples = _tokenized(tiny_tokenizer)
    args = P2DArguments(p2d_head_ratio=0.25, p2d_lofit_select_epochs=1.0, p2d_seed=3)
    run = lambda a: select_lofit_heads(
        model, examples, _collate(tiny_tokenizer), layout, a, 2, "m", str(tmp_path), False
    )
    first = run(args)
    assert len(first.selected) == 3 and first.method == "lofit" and len(first.proxy_loss) == 3
    scores = torch.tensor(first.scores)
    assert {(l, h) for l, h in first.selected} == {divmod(int(i), 4) for i in scores.flatten().topk(3).indices}
    assert HeadSet.load(tmp_path / LOFIT_HEADS_FILE).selected == first.selected

    def fail(*a, **k):
        raise AssertionError("step 1 ran again")

    monkeypatch.setattr(lofit, "train_head_scalings", fail)
    assert run(args).scores == first.scores  # identical settings: reused
    with pytest.raises(AssertionError, match="ran again"):
        run(P2DArguments(p2d_head_ratio=0.25, p2d_lofit_select_epochs=1.0, p2d_seed=3, p2d_lofit_l1_lambda=1e-3))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("p2d_lofit_l1_lambda", -1e-4, "must be >= 0"),
        ("p2d_lofit_select_lr", 0.0, "must be > 0"),
        ("p2d_lofit_select_epochs", -1.0, "must be > 0"),
        ("p2d_lofit_select_lr", float("nan"), "finite"),
        ("p2d_lofit_select_epochs", "5", "must be a number"),
    ],
)
def test_bad_lofit_keys_are_refused_naming_the_key(key, value, message):
    with pytest.raises(ValueError, match=message) as err:
        P2DArguments(**{key: value})
    assert key in str(err.value)


def test_lofit_parses_through_llamafactory_and_its_keys_apply_only_to_it(make_args):
    from tests.helpers.cli import parse_train_args

    _, _, training_args, args, _ = parse_train_args(
        make_args(finetuning_type="lofit", learning_rate=1e-2, p2d_lofit_l1_lambda=1e-3, p2d_head_lr_scale=3.0)
    )
    assert (args.finetuning_type, args.p2d_lofit_l1_lambda, args.p2d_lofit_select_epochs) == ("lofit", 1e-3, 5.0)
    assert training_args.learning_rate == 1e-2  # p2d_head_lr_scale is p2d_heads' alone
    assert "p2d_head_lr_scale" in args.ineffective_keys() and "p2d_lofit_l1_lambda" not in args.ineffective_keys()
    _, _, _, lora, _ = parse_train_args(make_args(finetuning_type="lora", p2d_lofit_l1_lambda=1e-3))
    assert "lofit" in lora.ineffective_keys()["p2d_lofit_l1_lambda"]


def test_lofit_with_p2d_selection_needs_a_heads_file(make_args):
    from tests.helpers.cli import parse_train_args

    with pytest.raises(ValueError, match="p2d_heads_file.*lofit"):
        parse_train_args(make_args(finetuning_type="lofit", p2d_data_selection="p2d"))


LOFIT_OTHER_VALUES = {
    "p2d_head_ratio": 0.5,
    "p2d_head_trainable_layers": 2,
    "p2d_seed": 4,
    "p2d_lofit_l1_lambda": 1e-3,
    "p2d_lofit_select_lr": 1e-2,
    "p2d_lofit_select_epochs": 2.0,
}


def test_every_lofit_identity_field_has_a_test_value():
    from p2d_llamafactory.hparams import identity_keys

    assert set(identity_keys("lofit")) == set(LOFIT_OTHER_VALUES), "add the new identity field to LOFIT_OTHER_VALUES"


@pytest.mark.parametrize("key", sorted(LOFIT_OTHER_VALUES))
def test_changing_any_lofit_identity_field_redoes_step_1(key):
    from p2d_llamafactory.heads.lofit import lofit_identity

    base = P2DArguments(p2d_head_ratio=0.25, p2d_lofit_select_epochs=1.0, p2d_seed=3)
    changed = P2DArguments(**{**{k: getattr(base, k) for k in LOFIT_OTHER_VALUES}, key: LOFIT_OTHER_VALUES[key]})
    assert lofit_identity(base, "m", "d", 2) != lofit_identity(changed, "m", "d", 2)
    assert lofit_identity(base, "m", "d", 2) != lofit_identity(base, "m", "d", 4)  # the batch size too
