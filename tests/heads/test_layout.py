"""Every supported decoder family: where a head's parameters live, and early refusal of any other model type.

The per-family core checks (only the selected slices change, the artifact reloads without the plugin, restricted
attention sums equal an eager reference, the scorers equal independent references) are parametrised over
``FAMILIES`` in adapter/test_model.py, data/test_attention.py and heads/test_scoring.py.
"""

import re

import pytest
import torch

from p2d_llamafactory.adapter.config import slice_targets
from p2d_llamafactory.heads.layout import (
    SUPPORTED_FAMILIES,
    UnsupportedModelError,
    find_attention_layout,
    layout_from_config,
    projection_weights,
)
from tests.conftest import PROJECT_ROOT
from tests.helpers.references import split_qkv
from tests.helpers.tiny import FAMILIES, build_model, tiny_config


@pytest.mark.parametrize("kind", FAMILIES)
def test_layout_of_each_family_from_its_config(kind):
    config = tiny_config(kind, vocab_size=300)
    layout = layout_from_config(config)  # meta device: what the parse-time checks see
    head_dim = 24 if kind.startswith("gemma") else 16  # Gemma: head_dim != hidden_size / num_heads
    assert (layout.num_layers, layout.num_heads, layout.num_kv_heads) == (3, 4, 2)
    assert (layout.head_dim, layout.hidden_size) == (head_dim, 64)
    assert layout.fused_qkv == (kind == "phi3")
    assert layout.attention_modules == tuple(f"model.layers.{i}.self_attn" for i in range(3))
    assert config.model_type in SUPPORTED_FAMILIES


@pytest.mark.parametrize("kind", FAMILIES)
def test_projection_weights_are_the_rows_the_model_computes_q_k_v_with(tiny_tokenizer, kind):
    model = build_model(kind, tiny_tokenizer)
    layout = find_attention_layout(model)
    attention = model.model.layers[1].self_attn
    names = ("qkv_proj", "o_proj") if kind == "phi3" else ("q_proj", "k_proj", "v_proj", "o_proj")
    expected = split_qkv({n: getattr(attention, n).weight for n in names}, model.config)
    found = projection_weights(model, layout, 1)
    for name, weight in zip("qkv", expected):
        assert torch.equal(found[name], weight), name
    assert found["o"] is attention.o_proj.weight
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(0))
    # the q rows of head 3 produce exactly the model's own query features of head 3 (before RoPE and norms)
    own = (attention.qkv_proj(x)[:, : 4 * layout.head_dim] if kind == "phi3" else attention.q_proj(x)).detach()
    d = layout.head_dim
    head3 = found["q"][3 * d : 4 * d]
    torch.testing.assert_close(x @ head3.T, own[:, 3 * d : 4 * d])


def test_phi3_fused_rows_of_one_head_are_three_blocks_of_one_module():
    layout = layout_from_config(tiny_config("phi3", vocab_size=300))
    (qkv, o) = slice_targets(layout, [(1, 3)], ("q", "k", "v", "o"))
    d, q_rows, kv_rows = 16, 64, 32
    assert (qkv.module, qkv.kind, o.module, o.kind) == (
        "model.layers.1.self_attn.qkv_proj",
        "rows",
        "model.layers.1.self_attn.o_proj",
        "cols",
    )
    kv = 1  # head 3 of 4 reads KV head 1 of 2
    expected = [*range(3 * d, 4 * d), *range(q_rows + kv * d, q_rows + (kv + 1) * d)]
    expected += range(q_rows + kv_rows + kv * d, q_rows + kv_rows + (kv + 1) * d)
    assert list(qkv.index) == expected and qkv.rank == 3 * d
    assert list(o.index) == list(range(3 * d, 4 * d))
    (q_only,) = slice_targets(layout, [(1, 3)], ("q",))
    assert list(q_only.index) == list(range(3 * d, 4 * d))


def test_gemma3_with_a_vision_tower_slices_the_text_decoder_only():
    from transformers import Gemma3Config

    text = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4)
    vision = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2, image_size=28)
    config = Gemma3Config(
        text_config={**text, "num_key_value_heads": 2, "head_dim": 24},
        vision_config={**vision, "patch_size": 14},
        mm_tokens_per_image=4,
    )
    layout = layout_from_config(config)
    assert layout.attention_modules == tuple(f"model.language_model.layers.{i}.self_attn" for i in range(2))
    assert (layout.num_heads, layout.head_dim, layout.hidden_size) == (4, 24, 64)


@pytest.mark.parametrize(
    ("config_name", "kwargs", "model_type"),
    [
        ("GPT2Config", dict(n_embd=32, n_layer=1, n_head=2, vocab_size=300), "gpt2"),
        (
            "OPTConfig",
            dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64, vocab_size=300),
            "opt",
        ),
        ("FalconConfig", dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=300), "falcon"),
    ],
)
def test_any_other_model_type_is_refused_by_name(config_name, kwargs, model_type):
    import transformers

    with pytest.raises(UnsupportedModelError, match=rf"model_type={model_type} .*supported.*llama, mistral, qwen2"):
        layout_from_config(getattr(transformers, config_name)(**kwargs))


def test_readme_table_names_every_supported_family():
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Supported models") :]
    section = section[: section.index("\n## ", 4)]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    listed = {t for row in rows for t in re.findall(r"`([a-z0-9_]+)`", row.split("|")[2])}
    assert listed == set(SUPPORTED_FAMILIES)
