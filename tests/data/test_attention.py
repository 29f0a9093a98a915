"""The restricted attention sums equal those of an eager reference with output_attentions on the same input."""

import pytest
import torch

from p2d_llamafactory.data.attention import AttentionProbe, probing
from tests.helpers.references import eager_attention_mass
from tests.helpers.tiny import FAMILIES, build_model, left_padded


# every family as loaded with SDPA; Gemma 2 (soft-capped, which SDPA cannot do) and the Llama also as loaded eager
CASES = [(kind, "sdpa") for kind in (*FAMILIES, "llama_mha")] + [("gemma2", "eager"), ("llama", "eager")]


@pytest.mark.parametrize(("kind", "attention"), CASES)
def test_probe_sums_equal_eager_reference(tiny_tokenizer, kind, attention):
    model = build_model(kind, tiny_tokenizer)
    model.config._attn_implementation = attention
    ids, mask = left_padded([30, 22, 30], len(tiny_tokenizer))
    pads = [0, 8, 0]
    spans = [[(p + 2, p + 7), (p + 7, p + 15), (p + 15, p + 20)] for p in pads]
    rows = [list(range(p + 20, 30)) for p in pads]
    heads_by_layer = {0: [1, 3], 2: [0]}  # GQA: heads 1 and 3 read different KV heads
    probe = AttentionProbe(heads_by_layer)
    with torch.no_grad(), probing(model, probe):
        probe.start(rows, spans)
        logits = model(input_ids=ids, attention_mask=mask).logits
    expected = eager_attention_mass(model, ids, mask, heads_by_layer, rows, spans)
    torch.testing.assert_close(probe.mass, expected, rtol=1e-5, atol=1e-6)
    assert (probe.mass[:, 1:] > 0).all()
    # layers 0 and 2 of the windowed tiny models attend to the last 8 keys: the first demo is out of their reach
    assert (probe.mass[:, 0] == 0).all() == (kind in ("mistral", "gemma2", "gemma3"))
    with torch.no_grad():  # the probe does not change the model's output (a soft-capped model's: its eager output)
        model.config._attn_implementation = "eager" if kind == "gemma2" else attention
        torch.testing.assert_close(logits, model(input_ids=ids, attention_mask=mask).logits)


def test_unselected_layers_and_decoding_steps_add_nothing(tiny_tokenizer):
    model = build_model("llama", tiny_tokenizer)
    model.config._attn_implementation = "sdpa"
    ids, mask = left_padded([12], len(tiny_tokenizer))
    probe = AttentionProbe({1: [2]})
    with torch.no_grad(), probing(model, probe):
        probe.start([list(range(6, 12))], [[(0, 6)]])
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=1)
    # only the prefill pass counts: each of the 6 query rows spreads mass 1 over keys <= itself
    expected = eager_attention_mass(model, ids, mask, {1: [2]}, [list(range(6, 12))], [[(0, 6)]])
    torch.testing.assert_close(probe.mass, expected, rtol=1e-5, atol=1e-6)


def test_the_probe_state_ends_with_its_block_also_when_the_forward_fails(tiny_tokenizer):
    from p2d_llamafactory.data import attention

    model = build_model("llama", tiny_tokenizer)
    previous = model.config._attn_implementation
    with (
        pytest.raises(RuntimeError, match="a failing forward"),
        attention.probing(model, attention.AttentionProbe({0: [1]})),
    ):
        assert attention._ACTIVE.get() is not None
        raise RuntimeError("a failing forward")
    assert attention._ACTIVE.get() is None and model.config._attn_implementation == previous
