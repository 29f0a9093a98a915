import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from p2d_llamafactory.adapter import apply_head_slices, count_slice_params
from p2d_llamafactory.adapter.config import slice_targets
from p2d_llamafactory.experiments.published import published_config
from p2d_llamafactory.heads.layout import find_attention_layout, layout_from_config
from p2d_llamafactory.hparams import count_for_ratio
from tests.helpers.tiny import FAMILIES, build_model, lm_batch, quantized_twin, random_ids, train_like


SELECTED = [(0, 1), (0, 3), (2, 0)]  # GQA: heads 1 and 3 of layer 0 use KV heads 0 and 1; head 0 uses KV head 0


def test_paper_trainable_share_on_qwen25_7b_shape():
    config = published_config("Qwen2.5-7B")
    layout = layout_from_config(config)
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        total = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    k = count_for_ratio(0.1, layout.total_heads)
    assert (layout.total_heads, k) == (784, 78)
    heads = [divmod(i * 10, 28) for i in range(k)]  # any 78 distinct heads: every head costs the same
    assert len(set(heads)) == k
    share = count_slice_params(layout, heads, ("q", "o")) / total
    assert 0.009 < share < 0.010, share  # the paper's ~0.94%
    targets = slice_targets(layout, heads[:1], ("q", "o"))
    assert [t.rank * layout.hidden_size for t in targets] == [128 * 3584, 128 * 3584]  # q rows == o columns


def _expected_changes(config) -> dict[str, tuple[str, set[int]]]:
    """Which rows (q/k/v) and columns (o) of which weights SELECTED with all four slices may change, from the
    config alone: heads 1 and 3 of layer 0 (KV heads 0 and 1) and head 0 of layer 2 (KV head 0). Phi-3's q, k and
    v rows are blocks of its fused qkv_proj, in that order."""
    d, q_rows = config.head_dim, config.num_attention_heads * config.head_dim
    kv_rows = config.num_key_value_heads * config.head_dim
    rows = lambda heads, offset=0: {offset + r for h in heads for r in range(h * d, (h + 1) * d)}
    expected = {}
    for layer, heads, kv in ((0, [1, 3], [0, 1]), (2, [0], [0])):
        prefix = f"model.layers.{layer}.self_attn"
        expected[f"{prefix}.o_proj.weight"] = ("cols", rows(heads))
        if config.model_type == "phi3":
            fused = rows(heads) | rows(kv, q_rows) | rows(kv, q_rows + kv_rows)
            expected[f"{prefix}.qkv_proj.weight"] = ("rows", fused)
        else:
            expected.update({f"{prefix}.{p}_proj.weight": ("rows", rows(heads if p == "q" else kv)) for p in "qkv"})
    return expected


@pytest.mark.parametrize("kind", FAMILIES)
def test_only_the_selected_slices_train(tiny_tokenizer, kind):
    base = build_model(kind, tiny_tokenizer)
    layout = find_attention_layout(base)
    reference = copy.deepcopy(base)
    model = apply_head_slices(base, layout, SELECTED, ("q", "k", "v", "o"))
    assert find_attention_layout(model) == layout  # the layout reads through the adapter layers
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert sum(p.numel() for p in trainable.values()) == count_slice_params(layout, SELECTED, ("q", "k", "v", "o"))
    row_modules = ("qkv_proj",) if kind == "phi3" else ("q_proj", "k_proj", "v_proj")
    for name in trainable:
        assert ("lora_A" in name) == any(f".{proj}." in name for proj in row_modules)
        assert ("lora_B" in name) == (".o_proj." in name)
        assert ".layers.1." not in name
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2, weight_decay=0.1)
    model.train()
    for step in range(2):
        optimizer.zero_grad()
        model(**lm_batch(random_ids(tiny_tokenizer, (2, 10), seed=step))).loss.backward()
        optimizer.step()
    assert len(optimizer.state) == len(trainable)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)
    merged = model.merge_and_unload()
    changed = {}
    for (name, new), (_, old) in zip(merged.named_parameters(), reference.named_parameters(), strict=True):
        diff = (new != old).nonzero()
        if len(diff):
            changed[name] = diff
    expected = _expected_changes(reference.config)
    assert set(changed) == set(expected)  # biases, MLPs, norms, embeddings and other heads: bit-identical
    for name, (kind_, allowed) in expected.items():
        touched = {int(i) for i in changed[name][:, 0 if kind_ == "rows" else 1]}
        assert touched == allowed, name


def test_fast_forward_equals_plain_lora_math(tiny_tokenizer):
    base = build_model("qwen2", tiny_tokenizer)
    model = apply_head_slices(base, find_attention_layout(base), SELECTED, ("q", "k", "v", "o"))
    train_like(model)
    batch = lm_batch(random_ids(tiny_tokenizer, (2, 10)))
    fast = model(input_ids=batch["input_ids"]).logits
    for module in model.modules():
        if hasattr(module, "lora_variant"):
            module.lora_variant.clear()  # back to peft's own B @ A forward
    plain = model(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(fast, plain, rtol=0, atol=1e-5)


# run with `python -S`: site-packages is put on the path by hand, so no .pth file (ours included) is processed
LOAD_WITHOUT_PLUGIN = """
import sys
sys.path.append(sys.argv.pop())
import json, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
assert 'p2d_llamafactory' not in sys.modules, 'the plugin must be inactive here'
base = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
model = PeftModel.from_pretrained(base, sys.argv[2]).eval()
ids = torch.tensor(json.loads(sys.argv[3]))
torch.save(model(input_ids=ids).logits, sys.argv[4])
"""


@pytest.mark.parametrize("kind", FAMILIES)
def test_saved_adapter_reproduces_logits_with_plain_peft_and_no_plugin(tiny_tokenizer, tiny_models, tmp_path, kind):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_models[kind], dtype=torch.float32)
    model = apply_head_slices(base, find_attention_layout(base), SELECTED, ("q", "k", "v", "o"))
    train_like(model)
    model.eval()
    ids = random_ids(tiny_tokenizer, (2, 10))
    with torch.no_grad():
        trained = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["lora_dropout"] == 0.0
    args = [str(tiny_models[kind]), str(tmp_path / "adapter"), json.dumps(ids.tolist()), str(tmp_path / "logits.pt")]
    args.append(str(Path(torch.__file__).parents[1]))  # site-packages
    subprocess.run([sys.executable, "-S", "-c", LOAD_WITHOUT_PLUGIN, *args], check=True, cwd=tmp_path, timeout=300)
    reloaded = torch.load(tmp_path / "logits.pt")
    assert (trained - reloaded).abs().max() <= 1e-5
    with torch.no_grad(), model.disable_adapter():
        untrained = model(input_ids=ids).logits
    assert (trained - untrained).abs().max() > 1e-3  # the comparison above is not trivially satisfied


@pytest.mark.parametrize("kind", ["llama", "phi3"])
def test_a_save_given_only_the_trainable_weights_keeps_the_fixed_factors(tiny_tokenizer, tmp_path, kind):
    """DeepSpeed ZeRO-3 hands ``save_pretrained`` a state dict of the trainable weights only: the saved adapter must
    still hold the fixed one-hot factors, equal to the model's own."""
    from safetensors.torch import load_file

    base = build_model(kind, tiny_tokenizer)
    model = apply_head_slices(base, find_attention_layout(base), SELECTED, ("q", "k", "v", "o"))
    train_like(model)
    full = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    trainable = {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}
    assert 0 < len(trainable) < len(full)
    model.save_pretrained(tmp_path / "complete")
    model.save_pretrained(tmp_path / "trainable_only", state_dict=trainable)
    complete = load_file(tmp_path / "complete" / "adapter_model.safetensors")
    rebuilt = load_file(tmp_path / "trainable_only" / "adapter_model.safetensors")
    assert rebuilt.keys() == complete.keys()
    for key in complete:
        assert torch.equal(rebuilt[key], complete[key]), key


def test_every_save_carries_the_head_set_with_the_fixed_factors(tiny_tokenizer, tmp_path):
    """The one save path: a checkpoint saved as the Trainer does under ZeRO-3 (trainable tensors only) holds both
    factors and the head set; a process that is not the main one writes no head set."""
    from safetensors.torch import load_file

    from p2d_llamafactory.adapter import save_head_set_with_adapter
    from p2d_llamafactory.files import HEADS_FILE
    from p2d_llamafactory.heads.headset import HeadSet

    base = build_model("llama", tiny_tokenizer)
    layout = find_attention_layout(base)
    model = apply_head_slices(base, layout, SELECTED, ("q", "o"))
    head_set = HeadSet("tiny", layout.shape(), "given", 0, 0.5, [], SELECTED)
    save_head_set_with_adapter(model, head_set, HEADS_FILE)
    trainable = {name: param.detach().clone() for name, param in model.named_parameters() if param.requires_grad}
    model.save_pretrained(tmp_path / "checkpoint-5", state_dict=trainable)
    saved = load_file(tmp_path / "checkpoint-5" / "adapter_model.safetensors")
    assert len(saved) == 2 * len(trainable)  # every trainable factor and its fixed partner
    assert HeadSet.load(tmp_path / "checkpoint-5" / HEADS_FILE).selected == sorted(SELECTED)
    model.save_pretrained(tmp_path / "rank1", is_main_process=False)
    assert not (tmp_path / "rank1" / HEADS_FILE).exists()


@pytest.mark.parametrize("bits", [4, 8])
def test_head_slices_on_a_quantized_base(tiny_tokenizer, tiny_models, tmp_path, bits):
    """QLoRA-style: the slices are LoRA modules on bitsandbytes layers. Only the selected slices change; the saved
    adapter on a fresh quantized base reproduces the trained model; merged into the full-precision base it matches
    the quantized model within the quantization error."""
    pytest.importorskip("bitsandbytes")
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    from p2d_llamafactory.models import Quantization, load_causal_lm

    path, quantization = str(tiny_models["llama_quant"]), Quantization(bits)
    base = load_causal_lm(path, torch.float32, "cpu", quantization=quantization)
    model = apply_head_slices(base, find_attention_layout(base), SELECTED, ("q", "k", "v", "o"))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == count_slice_params(
        find_attention_layout(base), SELECTED, ("q", "k", "v", "o")
    )
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    for step in range(3):
        optimizer.zero_grad()
        model(**lm_batch(random_ids(tiny_tokenizer, (2, 10), seed=step))).loss.backward()
        optimizer.step()
    expected = _expected_changes(base.config)
    layers = {
        name.removeprefix("base_model.model."): m for name, m in model.named_modules() if isinstance(m, LoraLayer)
    }
    assert {f"{name}.weight" for name in layers} == set(expected)  # no other module is wrapped
    for name, layer in layers.items():
        kind, allowed = expected[f"{name}.weight"]
        touched = layer.get_delta_weight("default").abs().sum(dim=1 if kind == "rows" else 0).nonzero()
        assert {int(i) for i in touched.flatten()} == allowed, name

    # train mode (no dropout here) keeps bitsandbytes on its dequantize-then-matmul path, which computes what the
    # dequantized twin computes; its CPU inference kernel would round to bfloat16
    ids = random_ids(tiny_tokenizer, (2, 10), seed=9)
    logits = lambda m: m.train()(input_ids=ids).logits
    with torch.no_grad():
        trained = logits(model)
        with model.disable_adapter():
            quantized_base = logits(model)
    model.save_pretrained(tmp_path / "adapter")
    fresh = load_causal_lm(path, torch.float32, "cpu", quantization=quantization)
    _, twin = quantized_twin(tiny_models["llama_quant"], bits)
    full = load_causal_lm(path, torch.float32, "cpu")
    with torch.no_grad():
        reloaded = logits(PeftModel.from_pretrained(fresh, tmp_path / "adapter"))
        on_twin = logits(PeftModel.from_pretrained(twin, tmp_path / "adapter").merge_and_unload())
        full_base = logits(full)
        on_full = logits(PeftModel.from_pretrained(full, tmp_path / "adapter").merge_and_unload())
    assert (trained - quantized_base).abs().max() > 0.1  # the adapter changed the model
    assert (reloaded - trained).abs().max() <= 1e-5
    assert (on_twin - trained).abs().max() <= 1e-4  # merged into the weights it trained on: the same model
    # merged into the full-precision base: off by what quantization itself costs
    assert (on_full - trained).abs().max() <= 1.5 * (full_base - quantized_base).abs().max()
