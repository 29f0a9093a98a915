"""The restricted attention sums equal those of an eager reference with output_attentions on the same input."""

import pytest
import torch

from p2d_llamafactory.data.attention import AttentionProbe, probing
from tests.tiny import build_model


def _left_padded(lengths, vocab, pad_id=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad_id)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, width - n :] = torch.randint(4, vocab, (n,), generator=gen)
        mask[b, width - n :] = 1
    return ids, mask


def _reference(model, ids, mask, heads_by_layer, rows, spans):
    model.config._attn_implementation = "eager"
    try:
        attentions = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    finally:
        model.config._attn_implementation = "sdpa"
    expected = torch.zeros(len(rows), max(len(s) for s in spans), dtype=torch.float64)
    for layer, heads in heads_by_layer.items():
        for b in range(len(rows)):
            a = attentions[layer][b, heads][:, rows[b]].double()  # (heads, rows, keys)
            for d, (start, end) in enumerate(spans[b]):
                expected[b, d] += a[..., start:end].sum()
    return expected


@pytest.mark.parametrize("kind", ["llama", "qwen2", "llama_mha"])
def test_probe_sums_equal_eager_reference(tiny_tokenizer, kind):
    model = build_model(kind, tiny_tokenizer)
    model.config._attn_implementation = "sdpa"
    ids, mask = _left_padded([30, 22, 30], len(tiny_tokenizer))
    pads = [0, 8, 0]
    spans = [[(p + 2, p + 7), (p + 7, p + 15), (p + 15, p + 20)] for p in pads]
    rows = [list(range(p + 20, 30)) for p in pads]
    heads_by_layer = {0: [1, 3], 2: [0]}  # GQA: heads 1 and 3 read different KV heads
    probe = AttentionProbe(heads_by_layer)
    with torch.no_grad(), probing(model, probe):
        probe.start(rows, spans)
        logits = model(input_ids=ids, attention_mask=mask).logits
    expected = _reference(model, ids, mask, heads_by_layer, rows, spans)
    torch.testing.assert_close(probe.mass, expected, rtol=1e-5, atol=1e-6)
    assert (probe.mass > 0).all()
    with torch.no_grad():  # the probe does not change the model's output
        torch.testing.assert_close(logits, model(input_ids=ids, attention_mask=mask).logits)


def test_unselected_layers_and_decoding_steps_add_nothing(tiny_tokenizer):
    model = build_model("llama", tiny_tokenizer)
    model.config._attn_implementation = "sdpa"
    ids, mask = _left_padded([12], len(tiny_tokenizer))
    probe = AttentionProbe({1: [2]})
    with torch.no_grad(), probing(model, probe):
        probe.start([list(range(6, 12))], [[(0, 6)]])
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3, do_sample=False, pad_token_id=1)
    # only the prefill pass counts: each of the 6 query rows spreads mass 1 over keys <= itself
    expected = _reference(model, ids, mask, {1: [2]}, [list(range(6, 12))], [[(0, 6)]])
    torch.testing.assert_close(probe.mass, expected, rtol=1e-5, atol=1e-6)
