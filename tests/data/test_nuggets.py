"""Nuggets selection: log-likelihoods against a labels-loss reference, the prefix cache against full sequences (every
family), golden scores against a brute-force count, k-means anchors, resume, cache hygiene and bad input."""

import json
import logging

import numpy as np
import pytest
import torch

from p2d_llamafactory.data import nuggets as nuggets_module
from p2d_llamafactory.data.nuggets import (
    NuggetsSettings,
    frame_turn,
    kmeans_anchors,
    nuggets_scores,
    one_shot,
    zero_shot,
)
from p2d_llamafactory.data.select import select_examples
from p2d_llamafactory.files import PROGRESS_FILE, SCORES_FILE
from p2d_llamafactory.hparams import P2DArguments
from tests.helpers.examples import chatml_frame, probe_examples
from tests.helpers.tiny import FAMILIES, build_model


PAD = 1


def _turns(tokenizer, n=6):
    frame = chatml_frame(tokenizer)
    return [frame_turn(tokenizer, frame, example) for example in probe_examples(n)]


def _reference_logprob(model, context: list[int], answer: list[int]) -> float:
    """Sum of the answer tokens' log-probabilities from the model's own labels loss (mean NLL x count)."""
    ids = torch.tensor([context + answer])
    labels = torch.full_like(ids, -100)
    labels[0, len(context) :] = ids[0, len(context) :]
    with torch.no_grad():
        return -float(model(input_ids=ids, labels=labels).loss) * len(answer)


def test_zero_and_one_shot_equal_the_models_labels_loss(tiny_tokenizer):
    model = build_model("llama", tiny_tokenizer)
    turns = _turns(tiny_tokenizer)
    demo = turns[0].ids
    zero = zero_shot(model, turns[1:], PAD, batch_size=2)  # right padding inside each batch of 2
    shot = one_shot(model, demo, turns[1:], PAD, batch_size=2)
    for t, z, s in zip(turns[1:], zero, shot):
        assert z == pytest.approx(_reference_logprob(model, t.context, t.answer), rel=1e-4)
        assert s == pytest.approx(_reference_logprob(model, demo + t.context, t.answer), rel=1e-4)


@pytest.mark.parametrize("kind", FAMILIES)
def test_prefix_cache_reuse_gives_the_full_sequence_scores(tiny_tokenizer, kind):
    model = build_model(kind, tiny_tokenizer)
    turns = _turns(tiny_tokenizer, 5)
    demo = turns[0].ids  # longer than the windowed families' window of 8: the cache must respect it
    cached = one_shot(model, demo, turns[1:], PAD, batch_size=3, reuse_prefix=True)
    full = one_shot(model, demo, turns[1:], PAD, batch_size=3, reuse_prefix=False)
    np.testing.assert_allclose(cached, full, rtol=1e-4, atol=1e-4)


def test_golden_score_is_the_share_of_anchors_the_demo_helps(tiny_tokenizer):
    model = build_model("llama", tiny_tokenizer)
    turns = dict(enumerate(_turns(tiny_tokenizer, 8)))
    anchors = [1, 4, 6]
    results = nuggets_scores(model, turns, anchors, NuggetsSettings(3, "random", 2), PAD, {}, lambda r: None, False)
    assert sorted(results) == list(range(8))
    for index, result in results.items():
        wins = 0
        for a in anchors:
            zero = _reference_logprob(model, turns[a].context, turns[a].answer)
            shot = _reference_logprob(model, turns[index].ids + turns[a].context, turns[a].answer)
            wins += shot > zero
        assert (result.wins, result.anchors) == (wins, 3)
    assert len({r.wins for r in results.values()}) > 1  # the candidates are told apart


def test_kmeans_anchors_take_one_example_per_cluster():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = np.concatenate([c + rng.normal(0, 0.3, size=(5, 2)) for c in centres])
    chosen = kmeans_anchors(points, 3, seed=1)
    assert sorted(i // 5 for i in chosen) == [0, 1, 2] and chosen == sorted(chosen)
    assert kmeans_anchors(points, 3, seed=1) == chosen
    assert len(set(kmeans_anchors(points, 15, seed=2))) == 15  # every row, no repeats
    with pytest.raises(ValueError, match="at least 16 rows"):
        kmeans_anchors(points, 16, seed=0)


def _args(**kw):
    defaults = dict(p2d_data_selection="nuggets", p2d_data_ratio=0.25, p2d_nuggets_anchors=4, p2d_nuggets_batch_size=3)
    return P2DArguments(**{**defaults, **kw})


def test_selection_keeps_the_top_golden_scores_and_records_the_anchors(selection_inputs, tmp_path):
    selection = select_examples(selection_inputs(output_dir=tmp_path), _args())
    record = json.loads((tmp_path / SCORES_FILE).read_text())
    assert len(selection.selected) == 6 and len(record["anchors"]) == 4 == len(selection.anchors)
    assert all(s * 4 == int(s * 4) and 0 <= s <= 1 for s in selection.scores)  # wins out of 4 anchors
    threshold = sorted(selection.scores, reverse=True)[5]
    assert all(selection.scores[i] >= threshold for i in selection.selected)
    assert record["timings"]["data_scoring_seconds"] > 0 and not (tmp_path / PROGRESS_FILE).exists()
    random = select_examples(selection_inputs(output_dir=tmp_path / "r"), _args(p2d_nuggets_anchor_sampling="random"))
    assert random.anchors != selection.anchors or random.scores != selection.scores


def test_resume_scores_only_the_unfinished_candidates(selection_inputs, tmp_path, monkeypatch):
    full = select_examples(selection_inputs(output_dir=tmp_path / "full"), _args())
    out = tmp_path / "killed"
    calls = []
    real = nuggets_module.one_shot

    def dies_after_ten(*args, **kwargs):
        if len(calls) == 10:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(nuggets_module, "one_shot", dies_after_ten)
    with pytest.raises(KeyboardInterrupt):
        select_examples(selection_inputs(output_dir=out), _args())
    assert len((out / PROGRESS_FILE).read_text().splitlines()) == 1 + 10  # header + 10 candidates
    calls.clear()
    monkeypatch.setattr(nuggets_module, "one_shot", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    resumed = select_examples(selection_inputs(output_dir=out), _args())
    assert len(calls) == 24 - 10 and resumed.scores == full.scores and resumed.selected == full.selected


def test_a_checkpoint_of_other_settings_or_anchors_is_ignored(selection_inputs, tmp_path, caplog):
    out = tmp_path / "out"
    out.mkdir()
    first = select_examples(selection_inputs(output_dir=out), _args())
    settings = json.loads((out / SCORES_FILE).read_text())["settings"]
    (out / SCORES_FILE).unlink()
    fake = {"candidate": 0, "wins": 4, "anchors": 4, "elapsed": 1.0}  # a perfect score, from other anchors
    header = {"settings": {**settings, "anchors": [0, 1, 2, 3]}}
    if header["settings"]["anchors"] == first.anchors:
        header["settings"]["anchors"] = [4, 5, 6, 7]
    (out / PROGRESS_FILE).write_text(json.dumps(header) + "\n" + json.dumps(fake) + "\n")
    with caplog.at_level(logging.WARNING):
        again = select_examples(selection_inputs(output_dir=out), _args())
    assert again.scores == first.scores and "ignoring" in caplog.text


def test_an_anchor_set_larger_than_the_pool_is_refused_before_any_model_work(selection_inputs):
    inputs = selection_inputs()
    inputs.load_model = lambda: pytest.fail("the model was loaded")
    with pytest.raises(ValueError, match=r"`p2d_nuggets_anchors: 30` is larger than .* 24 usable examples"):
        select_examples(inputs, _args(p2d_nuggets_anchors=30))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"p2d_nuggets_anchors": 0}, "`p2d_nuggets_anchors` must be a positive integer"),
        ({"p2d_nuggets_anchor_sampling": "herding"}, "must be one of kmeans, random"),
        ({"p2d_nuggets_batch_size": 1.5}, "`p2d_nuggets_batch_size` must be a whole number"),
    ],
)
def test_bad_nuggets_keys(kw, message):
    with pytest.raises(ValueError, match=message):
        _args(**kw)


def test_nuggets_keys_are_ineffective_with_other_selections():
    assert (
        "nuggets"
        in P2DArguments(p2d_data_selection="random", p2d_nuggets_anchors=5).ineffective_keys()["p2d_nuggets_anchors"]
    )
    assert not _args(p2d_nuggets_anchors=5).ineffective_keys()
