import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from p2d_llamafactory.heads.layout import AttentionLayout, find_attention_layout, projection_weights
from p2d_llamafactory.heads.scoring import (
    composite_flat,
    cosine_distance,
    gradient_scores,
    head_distributions,
    random_scores,
    select_top,
    trainable_layers,
    w1_distance,
    weight_scores,
)
from tests.helpers.examples import tokenized_examples
from tests.helpers.references import cosine_distance_np, exact_w1, head_distribution_np, snip_head_scores
from tests.helpers.tiny import FAMILIES, build_model, perturbed, quantized_twin


def test_composite_matches_explicit_product(tiny_tokenizer):
    model = build_model("llama", tiny_tokenizer)
    layout = find_attention_layout(model)
    w = projection_weights(model, layout, 1)
    flat = composite_flat(w["q"], w["k"], w["v"], layout)
    d = layout.head_dim
    for h in range(layout.num_heads):
        g = h // layout.group_size  # GQA: 4 query heads share 2 KV heads
        wq = w["q"][h * d : (h + 1) * d].T.double()
        wk = w["k"][g * d : (g + 1) * d].T.double()
        wv = w["v"][g * d : (g + 1) * d].T.double()
        explicit = (wq @ wk.T) @ wv  # d_model x d_model intermediate, only in this test
        torch.testing.assert_close(flat[h], explicit.flatten(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [7, 1000, 36864])
def test_w1_equals_scipy_on_random_distributions(n):
    rng = np.random.default_rng(n)
    p, q = rng.random((2, n))
    p, q = p / p.sum(), q / q.sum()
    ours = float(w1_distance(torch.tensor(p), torch.tensor(q)))
    x = np.arange(n)
    assert ours == pytest.approx(wasserstein_distance(x, x, p, q), rel=1e-9)


def test_w1_and_cosine_are_zero_for_identical_and_positive_otherwise():
    p = torch.softmax(torch.randn(2, 50, dtype=torch.float64), dim=-1)
    assert torch.allclose(w1_distance(p, p), torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(cosine_distance(p, p), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert (w1_distance(p, p.flip(-1)) > 0).all()
    # a point mass moved by k positions costs exactly k
    a, b = torch.zeros(10, dtype=torch.float64), torch.zeros(10, dtype=torch.float64)
    a[2], b[7] = 1.0, 1.0
    assert float(w1_distance(a, b)) == pytest.approx(5.0)


def test_float64_softmax_keeps_the_signal_float32_loses():
    gen = torch.Generator().manual_seed(0)
    flat = torch.randn(1, 36864, dtype=torch.float64, generator=gen) * 1e-3
    drift = flat + torch.randn(flat.shape, dtype=torch.float64, generator=gen) * 1e-8
    exact = float(w1_distance(head_distributions(flat, 0.1), head_distributions(drift, 0.1)))
    p32 = torch.softmax(flat.float() / 0.1, dim=-1).double()
    q32 = torch.softmax(drift.float() / 0.1, dim=-1).double()
    lossy = float(w1_distance(p32, q32))
    assert exact > 0
    assert abs(lossy - exact) / exact > 0.05  # float32 softmax visibly wrong, so we must not use it


def test_weight_scores_agree_with_scipy_on_tiny_gqa_model(tiny_tokenizer):
    base = build_model("llama", tiny_tokenizer)
    other = perturbed(base)
    layout = find_attention_layout(base)
    scores = weight_scores(base, other, layout, "w1", 0.1, progress=False)
    assert scores.shape == (layout.num_layers, layout.num_heads)
    for layer in range(layout.num_layers):
        wb, wo = projection_weights(base, layout, layer), projection_weights(other, layout, layer)
        pb = head_distributions(composite_flat(wb["q"], wb["k"], wb["v"], layout), 0.1).numpy()
        po = head_distributions(composite_flat(wo["q"], wo["k"], wo["v"], layout), 0.1).numpy()
        x = np.arange(pb.shape[1])
        for h in range(layout.num_heads):
            ref = wasserstein_distance(x, x, pb[h], po[h])
            assert float(scores[layer, h]) == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("kind", FAMILIES)
def test_cosine_scores_equal_one_minus_cosine_of_the_softmaxes_in_numpy(tiny_tokenizer, kind):
    base = build_model(kind, tiny_tokenizer)
    other = perturbed(base, scale=1e-2)
    layout = find_attention_layout(base)
    scores = weight_scores(base, other, layout, "cosine", 0.1, progress=False)
    assert scores.shape == (3, 4) and scores.dtype == torch.float64
    for layer in range(layout.num_layers):  # every head, GQA groups included
        for head in range(layout.num_heads):
            p = head_distribution_np(base, layer, head, 0.1)
            q = head_distribution_np(other, layer, head, 0.1)
            assert p.shape == (64 * layout.head_dim,) and p.sum() == pytest.approx(1.0, rel=1e-12)
            ref = cosine_distance_np(p, q)
            assert ref > 1e-7  # a real signal, far above float64 round-off
            assert float(scores[layer, head]) == pytest.approx(ref, rel=1e-8, abs=1e-14)
    # the temperature enters as documented: a hotter softmax gives other distances
    hot = weight_scores(base, other, layout, "cosine", 1.0, progress=False)
    ref = cosine_distance_np(head_distribution_np(base, 1, 2, 1.0), head_distribution_np(other, 1, 2, 1.0))
    assert float(hot[1, 2]) == pytest.approx(ref, rel=1e-8, abs=1e-14) and float(hot[1, 2]) != float(scores[1, 2])


def test_cosine_scores_are_zero_for_identical_weights(tiny_tokenizer):
    base = build_model("llama", tiny_tokenizer)
    layout = find_attention_layout(base)
    scores = weight_scores(base, perturbed(base, scale=0.0), layout, "cosine", 0.1, progress=False)
    assert scores.shape == (3, 4)
    assert scores.abs().max() <= 1e-12  # 0 up to float64 round-off
    assert weight_scores(base, perturbed(base, scale=1e-2), layout, "cosine", 0.1, progress=False).min() > 1e-7


def test_exact_reference_is_exact():
    p = np.array([0.25, 0.5, 0.25])
    q = np.array([0.5, 0.25, 0.25])
    assert exact_w1(p, q) == 0.25
    x = np.arange(3)
    assert exact_w1(p, q) == pytest.approx(wasserstein_distance(x, x, p, q), rel=1e-15)


def test_w1_on_real_smollm2_weights_is_exact_and_agrees_with_scipy(smollm2_dir):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    layout = find_attention_layout(base)
    assert (layout.num_layers, layout.num_heads, layout.num_kv_heads, layout.head_dim) == (30, 9, 3, 64)
    proxy = perturbed(base, scale=2e-4)
    scipy_checked = 0
    for layer in [0, 14, 29]:
        wb, wp = projection_weights(base, layout, layer), projection_weights(proxy, layout, layer)
        pb = head_distributions(composite_flat(wb["q"], wb["k"], wb["v"], layout), 0.1)
        pp = head_distributions(composite_flat(wp["q"], wp["k"], wp["v"], layout), 0.1)
        ours = w1_distance(pb, pp).numpy()
        x = np.arange(pb.shape[1])
        for h in range(layout.num_heads):
            p, q = pb[h].numpy(), pp[h].numpy()
            exact = exact_w1(p, q)
            assert exact > 0
            assert ours[h] == pytest.approx(exact, rel=1e-9)
            ref = wasserstein_distance(x, x, p, q)
            if abs(ref - exact) <= 1e-6 * exact:  # where scipy's own round-off allows a 1e-6 comparison
                assert ours[h] == pytest.approx(ref, rel=1e-6)
                scipy_checked += 1
            else:  # scipy rounds the tail of a near point mass away; ours stays exact
                assert abs(ours[h] - exact) < abs(ref - exact)
    assert scipy_checked >= 9  # the comparison with scipy covers a real share of the heads


def test_select_top_breaks_ties_by_position_and_is_sorted():
    scores = torch.tensor([[1.0, 3.0, 3.0], [3.0, 0.5, 2.0]], dtype=torch.float64)
    assert select_top(scores, 2) == [(0, 1), (0, 2)]  # three heads tie at 3.0: the first two positions win
    assert select_top(scores, 4) == [(0, 1), (0, 2), (1, 0), (1, 2)]
    with pytest.raises(ValueError, match="NaN"):
        select_top(torch.tensor([[float("nan"), 1.0]]), 1)


def test_select_top_within_trainable_layers():
    assert trainable_layers(4, None) == trainable_layers(4, 0) == range(4)
    assert trainable_layers(4, 1) == range(3, 4) and trainable_layers(4, -2) == range(2)
    scores = torch.tensor([[9.0, 8.0], [1.0, 3.0], [2.0, 0.5]], dtype=torch.float64)
    assert select_top(scores, 2) == [(0, 0), (0, 1)]
    assert select_top(scores, 2, trainable_layers(3, 2)) == [(1, 1), (2, 0)]  # layer 0's high scores are out
    assert select_top(scores, 1, trainable_layers(3, -2)) == [(0, 0)]
    assert select_top(scores, 2, range(2, 3)) == [(2, 0), (2, 1)]


def test_random_scores_are_seeded_uniform_draws():
    layout = AttentionLayout(("a", "b", "c"), 4, 2, 8, 32)
    scores = random_scores(layout, 3)
    assert scores.shape == (3, 4) and scores.dtype == torch.float64
    assert torch.equal(scores, random_scores(layout, 3))  # deterministic per seed
    assert not torch.equal(scores, random_scores(layout, 4))  # another seed, other scores
    # the documented generator: one torch.rand draw of (layers, heads) in float64 from a generator seeded with p2d_seed
    expected = torch.rand(3, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(scores, expected)
    assert ((scores >= 0) & (scores < 1)).all() and len(set(scores.flatten().tolist())) == 12


@pytest.mark.parametrize("kind", FAMILIES)
def test_gradient_scores_equal_weight_times_gradient(tiny_tokenizer, kind):
    from transformers import DataCollatorForSeq2Seq

    model = build_model(kind, tiny_tokenizer)
    layout = find_attention_layout(model)
    collate = DataCollatorForSeq2Seq(tiny_tokenizer, label_pad_token_id=-100, padding=True, return_tensors="pt")
    examples = tokenized_examples(tiny_tokenizer, 6)  # prompts masked out of the labels
    micro = [collate(examples[:4]), collate(examples[4:])]  # 4 + 2 examples with different label-token counts
    n_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
    assert len({int((b["labels"][:, 1:] != -100).sum()) for b in micro}) == 2
    model.requires_grad_(False)  # as a frozen base model would be
    scores = gradient_scores(model, layout, micro, n_tokens, progress=False)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training  # left as it was
    # reference: |W * dL/dW| with L the mean token loss of all 6 examples in one batch, from torch.autograd
    model.requires_grad_(True)
    expected = snip_head_scores(model, collate(examples))
    assert scores.shape == (3, 4) and scores.dtype == torch.float64
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-5)
    assert (expected > 0).all() and len(set(expected.round(6).flatten().tolist())) == 12  # no degenerate heads


@pytest.mark.parametrize("bits", [4, 8])
def test_scores_on_a_quantized_base_are_those_of_its_dequantized_weights(tiny_models, tiny_tokenizer, bits):
    """W1 reads the dequantized q/k/v; the gradient scorer takes dL/dW through float32 copies of the dequantized
    head linears swapped into the quantized model, and leaves the model as it was."""
    pytest.importorskip("bitsandbytes")
    from transformers import DataCollatorForSeq2Seq

    quantized, twin = quantized_twin(tiny_models["llama_quant"], bits)
    layout = find_attention_layout(twin)
    proxy = perturbed(twin, scale=1e-2)
    got = weight_scores(quantized, proxy, layout, "w1", 1.0, progress=False)
    torch.testing.assert_close(got, weight_scores(twin, proxy, layout, "w1", 1.0, progress=False), rtol=0, atol=0)
    assert float(got.min()) > 0

    collate = DataCollatorForSeq2Seq(tiny_tokenizer, label_pad_token_id=-100, padding=True, return_tensors="pt")
    examples = tokenized_examples(tiny_tokenizer, 6)
    micro = [collate(examples[:4]), collate(examples[4:])]
    n_tokens = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
    modules = {name: id(module) for name, module in quantized.named_modules()}
    flags = [p.requires_grad for p in quantized.parameters()]
    quantized.train()
    got = gradient_scores(quantized, layout, micro, n_tokens, progress=False)
    assert {name: id(module) for name, module in quantized.named_modules()} == modules  # the copies are gone
    assert [p.requires_grad for p in quantized.parameters()] == flags and quantized.training
    expected = gradient_scores(twin.requires_grad_(False), layout, micro, n_tokens, progress=False)
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4)
