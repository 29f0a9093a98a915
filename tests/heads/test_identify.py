"""Stage I: the proxy, the head-set file, reuse of finished work, and each scoring method."""

import logging
import math
import random

import numpy as np
import pytest
import torch
from transformers import DataCollatorForSeq2Seq

from p2d_llamafactory.files import HEADS_FILE, HEATMAP_FILE
from p2d_llamafactory.heads import identify as identify_module
from p2d_llamafactory.heads.headset import HeadSet
from p2d_llamafactory.heads.identify import FHIInputs, check_scores, identify_heads
from p2d_llamafactory.heads.layout import find_attention_layout
from p2d_llamafactory.heads.proxy import make_batches, train_proxy
from p2d_llamafactory.heads.scoring import select_top, weight_scores
from p2d_llamafactory.hparams import P2DArguments
from tests.helpers.examples import tokenized_examples
from tests.helpers.references import cosine_distance_np, head_distribution_np, snip_head_scores, top_heads
from tests.helpers.tiny import TINY_SHAPE, build_model, write_heads_file


@pytest.fixture
def fhi(tiny_tokenizer, tmp_path):
    def make(model=None, n=12, output_dir=tmp_path):
        return FHIInputs(
            model=model if model is not None else build_model("llama", tiny_tokenizer),
            model_name="tiny-llama",
            examples=tokenized_examples(tiny_tokenizer, n),
            collate=DataCollatorForSeq2Seq(tiny_tokenizer, label_pad_token_id=-100, padding=True, return_tensors="pt"),
            micro_batch_size=4,
            output_dir=str(output_dir) if output_dir else None,
            progress=False,
        )

    return make


def test_full_batch_step_does_not_depend_on_micro_batch_size(fhi):
    inputs = fhi()
    results = []
    for micro in (1, 12):
        batches = make_batches(inputs.examples, inputs.collate, micro, "cpu")
        proxy, losses = train_proxy(inputs.model, batches, steps=2, lr=1e-3, progress=False)
        results.append((proxy, losses))
    (a, la), (b, lb) = results
    assert la == pytest.approx(lb, rel=1e-5)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=0, atol=2e-6, msg=name)
    assert la[1] < la[0]  # the proxy learns
    base_q = inputs.model.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(a.model.layers[0].self_attn.q_proj.weight, base_q)  # the base model is left alone
    assert a.model.layers[0].self_attn.q_proj.weight.dtype == torch.float32


def test_w1_identification_writes_head_set_and_heatmap(fhi, tmp_path):
    inputs = fhi()
    args = P2DArguments(p2d_head_ratio=0.25, p2d_fhi_samples=8, p2d_fhi_steps=2, p2d_fhi_lr=1e-3, p2d_seed=1)
    head_set = identify_heads(inputs, args)
    saved = HeadSet.load(tmp_path / HEADS_FILE)
    assert saved.selected == head_set.selected and len(saved.selected) == 3  # 25% of 3 x 4 heads
    assert saved.shape == {"num_layers": 3, "num_heads": 4, "num_kv_heads": 2, "head_dim": 16, "hidden_size": 64}
    assert (saved.method, saved.seed, saved.ratio, saved.model) == ("w1", 1, 0.25, "tiny-llama")
    assert len(saved.scores) == 3 and all(len(row) == 4 for row in saved.scores)
    assert saved.selected == select_top(torch.tensor(saved.scores), 3)
    assert set(saved.timings) == {"proxy_seconds", "scoring_seconds", "total_seconds"}
    assert len(saved.proxy_loss) == 2
    assert (tmp_path / HEATMAP_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [HEADS_FILE, HEATMAP_FILE]  # no temporary leftovers


def test_identical_rerun_reuses_the_head_set_and_changed_settings_do_not(fhi, monkeypatch):
    inputs = fhi()
    args = P2DArguments(p2d_head_ratio=0.25, p2d_fhi_samples=8, p2d_fhi_steps=1, p2d_fhi_lr=1e-3)
    first = identify_heads(inputs, args)
    calls = []
    real = identify_module.train_proxy
    monkeypatch.setattr(identify_module, "train_proxy", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = identify_heads(inputs, args)
    assert calls == [] and again.timings == first.timings
    identify_heads(
        inputs, P2DArguments(p2d_head_ratio=0.25, p2d_fhi_samples=8, p2d_fhi_steps=1, p2d_fhi_lr=1e-3, p2d_seed=9)
    )
    assert calls == [1]


def test_fewer_examples_than_fhi_samples_uses_all_and_warns(fhi, caplog):
    inputs = fhi(n=5)
    with caplog.at_level(logging.WARNING, logger="p2d_llamafactory"):
        head_set = identify_heads(inputs, P2DArguments(p2d_fhi_samples=100, p2d_fhi_steps=1, p2d_fhi_lr=1e-3))
    assert "only 5 training examples for p2d_fhi_samples=100" in caplog.text
    assert head_set.settings["fhi_data"] == identify_module.tokenized_fingerprint(inputs.examples)


def test_heads_file_is_reused_as_is(fhi, tmp_path):
    inputs = fhi(output_dir=None)
    layout = find_attention_layout(inputs.model)
    HeadSet("x", layout.shape(), "w1", 0, 0.1, [], [(2, 3), (0, 1)]).save(tmp_path / "h.json")
    head_set = identify_heads(inputs, P2DArguments(p2d_heads_file=str(tmp_path / "h.json")))
    assert head_set.selected == [(0, 1), (2, 3)]


def test_task_model_scores_against_its_weights(fhi, tiny_tokenizer, tmp_path):
    inputs = fhi(output_dir=None)
    task = build_model("llama", tiny_tokenizer, seed=0)
    with torch.no_grad():
        task.model.layers[1].self_attn.q_proj.weight[16:32] += 0.05  # only head 1 of layer 1 changes
    task.save_pretrained(tmp_path / "task")
    head_set = identify_heads(inputs, P2DArguments(p2d_head_ratio=0.1, p2d_task_model=str(tmp_path / "task")))
    assert head_set.selected == [(1, 1)]
    expected = weight_scores(inputs.model, task, find_attention_layout(task), "w1", 0.1, progress=False)
    torch.testing.assert_close(torch.tensor(head_set.scores, dtype=torch.float64), expected)
    assert sum(s > 0 for row in head_set.scores for s in row) == 1


@pytest.mark.parametrize("method", ["random", "cosine", "gradient"])
def test_other_selection_methods_are_deterministic(fhi, method):
    args = P2DArguments(
        p2d_head_ratio=0.5, p2d_head_selection=method, p2d_fhi_samples=6, p2d_fhi_steps=1, p2d_fhi_lr=1e-3
    )
    first = identify_heads(fhi(output_dir=None), args)
    second = identify_heads(fhi(output_dir=None), args)
    assert len(first.selected) == 6 and first.selected == second.selected
    assert first.method == method
    if method == "random":
        other = identify_heads(
            fhi(output_dir=None), P2DArguments(p2d_head_ratio=0.5, p2d_head_selection="random", p2d_seed=3)
        )
        assert other.selected != first.selected


def test_random_heads_are_the_top_of_seeded_uniform_scores(fhi, monkeypatch):
    monkeypatch.setattr(identify_module, "train_proxy", lambda *a, **k: pytest.fail("random needs no proxy"))
    args = P2DArguments(p2d_head_ratio=0.5, p2d_head_selection="random", p2d_seed=3)
    head_set = identify_heads(fhi(output_dir=None), args)
    expected = torch.rand(3, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert head_set.scores == expected.tolist()
    assert head_set.selected == top_heads(expected.numpy(), 6) and len(set(head_set.selected)) == 6
    assert head_set.proxy_loss == [] and head_set.seed == 3
    other = identify_heads(
        fhi(output_dir=None), P2DArguments(p2d_head_ratio=0.5, p2d_head_selection="random", p2d_seed=4)
    )
    assert other.scores != head_set.scores and other.selected != head_set.selected


@pytest.mark.parametrize("method", ["random", "w1"])
def test_trainable_layers_confine_the_selection_and_keep_every_score(fhi, method):
    keys = {"p2d_head_ratio": 0.25, "p2d_head_selection": method, "p2d_fhi_samples": 6, "p2d_fhi_steps": 1}
    everywhere = identify_heads(fhi(output_dir=None), P2DArguments(**keys, p2d_fhi_lr=1e-2))
    last = identify_heads(fhi(output_dir=None), P2DArguments(**keys, p2d_fhi_lr=1e-2, p2d_head_trainable_layers=1))
    first = identify_heads(fhi(output_dir=None), P2DArguments(**keys, p2d_fhi_lr=1e-2, p2d_head_trainable_layers=-2))
    assert last.scores == everywhere.scores == first.scores  # the ranking is the model's; only the choice narrows
    scores = torch.tensor(everywhere.scores, dtype=torch.float64)
    assert last.selected == [(layer + 2, head) for layer, head in top_heads(scores[2:].numpy(), 3)]
    assert first.selected == top_heads(scores[:2].numpy(), 3) and {l for l, _ in first.selected} <= {0, 1}
    assert last.settings["p2d_head_trainable_layers"] == 1 and everywhere.settings["p2d_head_trainable_layers"] is None


def test_cosine_scores_the_base_against_its_proxy(fhi, monkeypatch):
    proxies = []
    real = identify_module.train_proxy

    def keep(*args, **kwargs):
        proxy, losses = real(*args, **kwargs)
        proxies.append(proxy)
        return proxy, losses

    monkeypatch.setattr(identify_module, "train_proxy", keep)
    inputs = fhi(output_dir=None)
    args = P2DArguments(
        p2d_head_ratio=0.25, p2d_head_selection="cosine", p2d_fhi_samples=6, p2d_fhi_steps=2, p2d_fhi_lr=1e-2
    )
    head_set = identify_heads(inputs, args)
    assert len(proxies) == 1 and len(head_set.proxy_loss) == 2
    tau = args.p2d_temperature
    expected = np.array(
        [
            [
                cosine_distance_np(
                    head_distribution_np(inputs.model, layer, head, tau),
                    head_distribution_np(proxies[0], layer, head, tau),
                )
                for head in range(4)
            ]
            for layer in range(3)
        ]
    )
    assert (expected > 0).all()
    np.testing.assert_allclose(np.array(head_set.scores), expected, rtol=1e-8, atol=1e-14)
    assert head_set.selected == top_heads(expected, 3)


def test_gradient_scores_the_fhi_sample_without_a_proxy(fhi, monkeypatch):
    monkeypatch.setattr(identify_module, "train_proxy", lambda *a, **k: pytest.fail("gradient needs no proxy"))
    inputs = fhi(output_dir=None)  # 12 examples, micro-batches of 4
    args = P2DArguments(p2d_head_ratio=0.25, p2d_head_selection="gradient", p2d_fhi_samples=6, p2d_seed=7)
    head_set = identify_heads(inputs, args)
    # reference: the same seeded sample of 6, one batch, |W * dL/dW| per head from torch.autograd
    sample = [inputs.examples[i] for i in sorted(random.Random(7).sample(range(12), 6))]
    expected = snip_head_scores(inputs.model, inputs.collate(sample))
    np.testing.assert_allclose(np.array(head_set.scores), expected, rtol=1e-5)
    assert head_set.selected == top_heads(expected, 3) and head_set.proxy_loss == []
    first_six = snip_head_scores(inputs.model, inputs.collate(inputs.examples[:6]))
    assert not np.allclose(first_six, expected)  # the seeded sample, not just any 6 examples


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


def test_ties_across_the_cut_are_refused_rather_than_settled_by_head_order():
    scores = torch.zeros(4, 6, dtype=torch.float64)
    scores[2, 3] = 0.5  # one head above 23 exact zeros, as a temperature of 1e-300 leaves them
    with pytest.raises(
        ValueError,
        match=r"23 heads tie at the w1 score 0 across the cut of the 6 to keep.*only 1 heads moved.*p2d_temperature",
    ):
        check_scores(scores, P2DArguments(), 6)
    check_scores(scores, P2DArguments(), 1)  # the one head above the rest: the scores decide
    tied = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    tied[3, 0] = tied[2, 5] = 17.5  # the 6th and 7th highest (18 and 17)
    with pytest.raises(ValueError, match=r"2 heads tie at the gradient score 17.5 .*same gradient magnitude"):
        check_scores(tied, P2DArguments(p2d_head_selection="gradient"), 6)


def test_a_task_model_that_is_the_base_model_stops_stage_one(tiny_models, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    inputs = FHIInputs(model, "tiny", [], None, 4, str(tmp_path), progress=False)
    with pytest.raises(ValueError, match="has the same attention weights as the base model"):
        identify_heads(inputs, P2DArguments(p2d_task_model=str(tiny_models["llama"])))
    assert not (tmp_path / HEADS_FILE).exists()


def test_a_run_given_a_heads_file_keeps_it_in_its_output_dir(tiny_tokenizer, tmp_path):
    model = build_model("llama", tiny_tokenizer)
    source = write_heads_file(tmp_path / "src" / HEADS_FILE, TINY_SHAPE, [[2, 3], [0, 1]])
    inputs = FHIInputs(model, "tiny", [], None, 4, str(tmp_path / "run"), progress=False)
    head_set = identify_heads(inputs, P2DArguments(p2d_heads_file=str(source)), find_attention_layout(model))
    assert HeadSet.load(tmp_path / "run" / HEADS_FILE).selected == head_set.selected == [(0, 1), (2, 3)]
