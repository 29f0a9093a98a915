"""Stage II: prompts and spans, planning, determinism, resume, cache hygiene and bad input."""

import dataclasses
import json
import logging
import math
import random

import pytest
import torch

from p2d_llamafactory.data import probe as probe_module
from p2d_llamafactory.data.probe import ProbeSettings, plan_prompts
from p2d_llamafactory.data.prompts import BUILTIN_STYLES, Example, build_prompt
from p2d_llamafactory.data.select import check_selection, select_examples
from p2d_llamafactory.files import PROGRESS_FILE, SCORES_FILE
from p2d_llamafactory.hparams import P2DArguments
from tests.helpers.examples import chatml_frame, probe_examples
from tests.helpers.tiny import build_model


def test_prompt_spans_against_a_hand_checked_prompt(tiny_tokenizer):
    tok = tiny_tokenizer
    demos = [Example(0, "What is 2 + 3?", "2 + 3 = 5.\n#### 5"), Example(1, "What is 7 - 4?", "7 - 4 = 3.\n#### 3")]
    queries = [Example(2, "What is 6 * 2?", "6 * 2 = 12.\n#### 12")]
    style = BUILTIN_STYLES["general"]
    prompt = build_prompt(tok, chatml_frame(tok), style, demos, queries, teacher_forced=True)
    expected = (
        "<|im_start|>user\n"
        f"{style.instruction}\n\nBelow are some demonstrations of how to format your answers:\n\n"
        "Question: What is 2 + 3?\nAnswer: 2 + 3 = 5.\n#### 5\n\n"
        "Question: What is 7 - 4?\nAnswer: 7 - 4 = 3.\n#### 3\n\n"
        "**Strictly use the format specified below:**\nAnswer 1: <your answer to Question 1>\n\n"
        "Now respond to the following:\n"
        "Question 1: What is 6 * 2?\n"
        "<|im_end|>\n<|im_start|>assistant\n"
        "Answer 1: 6 * 2 = 12.\n#### 12\n"
        "<|im_end|>\n"
    )
    ids = prompt.input_ids
    assert tok.decode(ids) == expected
    span = lambda s: tok.decode(ids[s[0] : s[1]])
    assert [span(s) for s in prompt.demo_spans] == [
        "Question: What is 2 + 3?\nAnswer: 2 + 3 = 5.\n#### 5\n\n",
        "Question: What is 7 - 4?\nAnswer: 7 - 4 = 3.\n#### 3\n\n",
    ]
    assert [span(s) for s in prompt.query_spans] == ["Question 1: What is 6 * 2?\n"]
    assert [span(s) for s in prompt.answer_spans] == ["6 * 2 = 12.\n#### 12\n"]
    assert prompt.query_rows == list(range(*prompt.query_spans[0]))
    assert (prompt.demos, prompt.queries, prompt.references) == ([0, 1], [2], ["6 * 2 = 12.\n#### 12"])
    generate = build_prompt(tok, chatml_frame(tok), style, demos, queries, teacher_forced=False)
    assert generate.input_ids == ids[: len(generate.input_ids)] and not generate.answer_spans
    assert tok.decode(generate.input_ids).endswith("<|im_start|>assistant\nAnswer 1: ")
    assert generate.answer_prefix == "Answer 1: "  # generation continues the answer format


@pytest.mark.parametrize("name", ["chatml", "smollm2"])
def test_chat_frame_reproduces_the_llamafactory_template(tiny_tokenizer, name):
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    from p2d_llamafactory.integration.template import chat_frame

    template = get_template_and_fix_tokenizer(tiny_tokenizer, DataArguments(template=name))
    frame = chat_frame(template, tiny_tokenizer)
    messages = [{"role": "user", "content": "How many apples?"}, {"role": "assistant", "content": "Five apples."}]
    prompt_ids, answer_ids = template.encode_oneturn(tiny_tokenizer, messages)
    enc = lambda text: tiny_tokenizer.encode(text, add_special_tokens=False)
    assert frame.prefix + enc("How many apples?") + frame.suffix == prompt_ids
    assert enc("Five apples.") + frame.answer_end == answer_ids
    if name == "smollm2":  # the template's default system prompt is part of the frame
        assert "You are a helpful AI assistant named SmolLM" in tiny_tokenizer.decode(frame.prefix)


def test_plans_use_every_candidate_as_demo_and_keep_queries_disjoint():
    settings = ProbeSettings(num_demos=5, num_queries=3, rounds=2, seed=7)
    candidates = list(range(3, 26))
    plans = plan_prompts(candidates, settings)
    uses = dict.fromkeys(candidates, 0)
    for demos, queries in plans:
        assert len(demos) == len(set(demos)) == 5 and len(queries) == len(set(queries)) == 3
        assert not set(demos) & set(queries) and set(demos + queries) <= set(candidates)
        for d in demos:
            uses[d] += 1
    assert min(uses.values()) >= 2
    assert plan_prompts(candidates, settings) == plans
    assert plan_prompts(candidates, ProbeSettings(5, 3, 2, seed=8)) != plans
    with pytest.raises(ValueError, match=r"needs at least 8 usable examples .* got 7"):
        plan_prompts(list(range(7)), settings)


def _args(**kw):
    defaults = dict(
        p2d_data_selection="p2d", p2d_data_ratio=0.25, p2d_icl_scoring="teacher_forced", p2d_icl_batch_size=2
    )
    return P2DArguments(**{**defaults, **kw})


@pytest.mark.parametrize("scoring", ["teacher_forced", "generate"])
def test_selection_is_deterministic_for_a_seed(selection_inputs, tmp_path, scoring):
    args = _args(p2d_icl_scoring=scoring, p2d_icl_max_new_tokens=8)
    first = select_examples(selection_inputs(output_dir=tmp_path / "a"), args)
    second = select_examples(selection_inputs(output_dir=tmp_path / "b"), args)
    assert len(first.selected) == 6 and first.selected == second.selected
    assert first.scores == second.scores and all(u >= 1 for u in first.uses)
    saved = json.loads((tmp_path / "a" / SCORES_FILE).read_text())
    assert saved["selected"] == first.selected and saved["settings"]["p2d_icl_scoring"] == scoring
    assert not (tmp_path / "a" / PROGRESS_FILE).exists()
    other = select_examples(
        selection_inputs(output_dir=tmp_path / "c"),
        _args(p2d_icl_scoring=scoring, p2d_seed=5, p2d_icl_max_new_tokens=8),
    )
    assert other.attention != first.attention  # other plans (scores may all be 0 for a random model)


def test_resume_after_interruption_gives_identical_scores(selection_inputs, tmp_path, monkeypatch):
    args = _args()
    reference = select_examples(selection_inputs(output_dir=tmp_path / "ref"), args)
    real, calls = probe_module.Prober.run_batch, []

    def dying(self, plans, examples):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed mid-run
        calls.append(len(plans))
        return real(self, plans, examples)

    monkeypatch.setattr(probe_module.Prober, "run_batch", dying)
    with pytest.raises(KeyboardInterrupt):
        select_examples(selection_inputs(output_dir=tmp_path / "run"), args)
    progress = (tmp_path / "run" / PROGRESS_FILE).read_text().splitlines()
    assert len(progress) == 1 + 4  # settings header + the 4 prompts of the 2 finished batches
    assert not (tmp_path / "run" / SCORES_FILE).exists()
    monkeypatch.setattr(
        probe_module.Prober,
        "run_batch",
        lambda self, plans, examples: calls.append(len(plans)) or real(self, plans, examples),
    )
    resumed = select_examples(selection_inputs(output_dir=tmp_path / "run"), args)
    assert sum(calls) == 4 + 1  # the 5 plans minus the 4 already scored
    assert resumed.scores == reference.scores and resumed.selected == reference.selected


def test_caches_from_other_settings_are_ignored_never_mixed(selection_inputs, tmp_path, caplog):
    args = _args()
    out = tmp_path / "out"
    out.mkdir()
    (out / PROGRESS_FILE).write_text(
        json.dumps({"settings": {"p2d_seed": 1}})
        + "\n"
        + json.dumps({"plan": 0, "demos": [0, 1, 2, 3, 4], "weights": [9.0] * 5, "query_scores": [1.0, 1.0, 1.0]})
        + "\n"
    )
    with caplog.at_level(logging.INFO, logger="p2d_llamafactory"):
        fresh = select_examples(selection_inputs(output_dir=out), args)
    assert "ignoring" in caplog.text and "other settings" in caplog.text
    clean = select_examples(selection_inputs(output_dir=tmp_path / "clean"), args)
    assert fresh.scores == clean.scores  # the foreign partial results were not mixed in
    saved = json.loads((out / SCORES_FILE).read_text())
    saved["settings"]["p2d_icl_demos"] = 4
    (out / SCORES_FILE).write_text(json.dumps(saved))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="p2d_llamafactory"):
        again = select_examples(selection_inputs(output_dir=out), args)
    assert "reusing" not in caplog.text and again.scores == clean.scores
    with caplog.at_level(logging.INFO, logger="p2d_llamafactory"):
        select_examples(selection_inputs(output_dir=out), args)
    assert "reusing the identical data scores" in caplog.text


def test_random_selection_is_the_top_of_the_seeded_generator(selection_inputs, tmp_path):
    inputs = selection_inputs(output_dir=tmp_path / "a")
    inputs.load_model = lambda: pytest.fail("random selection needs no model")
    first = select_examples(inputs, _args(p2d_data_selection="random", p2d_seed=11))
    # the documented generator: Python's random.Random(p2d_seed), one .random() per example in index order
    rng = random.Random(11)
    expected = [rng.random() for _ in range(24)]
    assert first.scores == expected
    assert first.selected == sorted(sorted(range(24), key=lambda i: -expected[i])[:6])
    saved = json.loads((tmp_path / "a" / SCORES_FILE).read_text())
    assert saved["method"] == "random" and saved["scores"] == expected and saved["selected"] == first.selected
    again = select_examples(
        selection_inputs(output_dir=tmp_path / "b"), _args(p2d_data_selection="random", p2d_seed=11)
    )
    assert (again.scores, again.selected) == (first.scores, first.selected)  # deterministic per seed
    other = select_examples(selection_inputs(output_dir=None), _args(p2d_data_selection="random", p2d_seed=12))
    rng = random.Random(12)
    assert other.scores == [rng.random() for _ in range(24)] != first.scores
    assert other.selected != first.selected  # another seed, another subset
    # examples too long for the context are never drawn; the others keep their scores
    short = selection_inputs(output_dir=None)
    winners = first.selected[:2]
    short.token_lengths = [10_000 if i in winners else n for i, n in enumerate(short.token_lengths)]
    without = select_examples(short, _args(p2d_data_selection="random", p2d_seed=11))
    assert without.skipped == winners and all(math.isnan(without.scores[i]) for i in winners)
    kept = [i for i in range(24) if i not in winners]
    assert without.selected == sorted(sorted(kept, key=lambda i: -expected[i])[:6])


@pytest.mark.parametrize(
    ("n", "ratio", "k"),
    [(24, 0.25, 6), (10, 0.25, 3), (24, 0.0625, 2), (24, 0.1875, 5), (9, 0.5, 5), (7, 1.0, 7), (30, 0.1, 3)],
)
def test_random_selection_keeps_ratio_times_n_rounded_half_up(selection_inputs, n, ratio, k):
    assert k == math.floor(ratio * n + 0.5)  # 2.5 -> 3, 1.5 -> 2, 4.5 -> 5 (Python's round() gives 2, 2, 4)
    inputs = selection_inputs(examples=probe_examples(n), output_dir=None)
    selection = select_examples(inputs, _args(p2d_data_selection="random", p2d_data_ratio=ratio))
    assert len(selection.selected) == len(set(selection.selected)) == k
    assert selection.selected == sorted(selection.selected) and set(selection.selected) <= set(range(n))
    assert len(selection.scores) == n


def test_baselines_ifd_and_data_whisperer(selection_inputs):
    ifd = select_examples(selection_inputs(output_dir=None), _args(p2d_data_selection="ifd"))
    assert len(ifd.selected) == 6 and all(s > 0 for s in ifd.scores)
    ranked = sorted(range(24), key=lambda i: (ifd.scores[i] >= 1, -ifd.scores[i], i))[:6]
    assert ifd.selected == sorted(ranked)
    dw = select_examples(selection_inputs(output_dir=None, head_set=None), _args(p2d_data_selection="data_whisperer"))
    assert len(dw.selected) == 6 and not any(math.isnan(s) for s in dw.scores)


def test_bad_input(selection_inputs):
    with pytest.raises(ValueError, match=r"`p2d_data_ratio: 0.01` keeps 0 of the 24 training examples"):
        select_examples(selection_inputs(), _args(p2d_data_ratio=0.01))
    with pytest.raises(ValueError, match=r"needs at least 8 usable examples"):
        select_examples(selection_inputs(examples=probe_examples(7)), _args(p2d_data_ratio=0.5))
    with pytest.raises(ValueError, match=r"needs a head set"):
        select_examples(selection_inputs(head_set=None), _args())


def test_examples_longer_than_the_context_are_skipped_with_a_count(selection_inputs, caplog):
    inputs = selection_inputs(output_dir=None)
    long_ones = sorted(range(24), key=lambda i: -inputs.token_lengths[i])[:3]
    inputs.max_length = min(inputs.token_lengths[i] for i in long_ones) - 1
    with caplog.at_level(logging.WARNING, logger="p2d_llamafactory"):
        selection = select_examples(inputs, _args())
    assert f"{len(selection.skipped)} examples are longer than {inputs.max_length} tokens" in caplog.text
    assert set(long_ones) <= set(selection.skipped)
    assert not set(selection.skipped) & set(selection.selected)
    assert all(math.isnan(selection.scores[i]) for i in selection.skipped)


def test_examples_missing_the_response_are_refused():
    from datasets import Dataset

    from p2d_llamafactory.integration.selection import aligned_examples

    rows = {
        "_prompt": [[{"role": "user", "content": "a"}]] * 2,
        "_response": [[{"role": "assistant", "content": "b"}], []],
    }
    with pytest.raises(ValueError, match=r"Training example 1 has no response"):
        aligned_examples(Dataset.from_dict(rows))


def test_attention_weights_are_per_demo_token_normalised(selection_inputs, monkeypatch):
    inputs = selection_inputs(output_dir=None)
    seen = []
    real = probe_module.Prober.run_batch

    def spy(self, plans, examples):
        results = real(self, plans, examples)
        seen.extend(results)
        return results

    monkeypatch.setattr(probe_module.Prober, "run_batch", spy)
    select_examples(inputs, _args())
    for result in seen:
        assert len(result.weights) == 5 and all(0 < w < 3 for w in result.weights)  # 3 heads: mass per token <= 3
        assert len(result.query_scores) == 3 and all(0 <= s <= 1 for s in result.query_scores)
    assert torch.tensor([r.score for r in seen]).std() > 0


def test_teacher_forced_likelihoods_equal_a_full_logits_reference(tiny_tokenizer):
    from p2d_llamafactory.data import probe as P

    model = build_model("llama", tiny_tokenizer)
    examples = {e.index: e for e in probe_examples()}
    settings = P.ProbeSettings(scoring="teacher_forced", batch_size=3)
    style = BUILTIN_STYLES["math"]
    prober = P.Prober(model, tiny_tokenizer, chatml_frame(tiny_tokenizer), style, {0: [1], 2: [0, 3]}, settings, None)
    plans = [(0, [0, 1, 2, 3, 4], [5, 6, 7]), (1, [8, 9, 10, 11, 12], [13, 14, 15]), (2, [16, 17, 18, 19, 20], [2, 9])]
    fast = prober.run_batch(plans, examples)  # logits only at the gold-answer positions, left padded
    for (_, demos, queries), result in zip(plans, fast):
        prompt = build_prompt(
            tiny_tokenizer,
            chatml_frame(tiny_tokenizer),
            style,
            [examples[i] for i in demos],
            [examples[i] for i in queries],
            True,
        )
        ids = torch.tensor([prompt.input_ids])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        expected = [
            float(log_probs[s - 1 : e - 1].gather(-1, ids[0, s:e, None]).squeeze(-1).mean().exp())
            for s, e in prompt.answer_spans
        ]
        assert result.query_scores == pytest.approx(expected, abs=1e-5)


def test_a_scores_file_of_the_same_selection_is_reused_and_another_refused(selection_inputs, tmp_path, monkeypatch):
    from p2d_llamafactory.report.aer import read_timings, record_timings

    args = _args()
    first = select_examples(selection_inputs(output_dir=tmp_path / "a"), args)
    source = str(tmp_path / "a" / SCORES_FILE)
    calls = []
    monkeypatch.setattr(probe_module.Prober, "run_batch", lambda *a: calls.append(1))  # must not probe
    reused = select_examples(selection_inputs(output_dir=tmp_path / "b"), _args(p2d_data_scores_file=source))
    assert not calls and reused.selected == first.selected and reused.inherited_from == source
    assert [s for s in reused.scores if not math.isnan(s)] == [s for s in first.scores if not math.isnan(s)]
    copy = json.loads((tmp_path / "b" / SCORES_FILE).read_text())
    assert copy["inherited_from"] == source and copy["selected"] == first.selected
    # a rerun of b finds its copy and still knows another run paid for the scores
    again = select_examples(selection_inputs(output_dir=tmp_path / "b"), _args())
    assert again.inherited_from == source and not calls
    record_timings(tmp_path / "b", reused.timings, inherited=reused.inherited_from is not None)
    assert read_timings(tmp_path / "b") == {"inherited_data_scoring_seconds": first.timings["data_scoring_seconds"]}
    with pytest.raises(ValueError, match=r"`p2d_data_scores_file` .* other selection settings .*p2d_icl_demos"):
        select_examples(
            selection_inputs(output_dir=tmp_path / "c"), _args(p2d_icl_demos=4, p2d_data_scores_file=source)
        )
    inputs = selection_inputs(output_dir=tmp_path / "d")
    inputs.head_set = dataclasses.replace(inputs.head_set, selected=[(0, 0), (1, 1), (2, 2)])  # other heads
    with pytest.raises(ValueError, match=r"`p2d_data_scores_file` .* than this run's \(heads differ\)"):
        select_examples(inputs, _args(p2d_data_scores_file=source))
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists() and not calls


def test_a_dataset_too_small_for_one_probe_prompt_fails_before_any_model_work():
    args = P2DArguments(p2d_data_selection="p2d", p2d_icl_demos=5, p2d_icl_queries=3)
    with pytest.raises(ValueError, match=r"at least 8 usable examples .*got 6.*\(2 of the 8 examples are longer"):
        check_selection(args, [10] * 6 + [999] * 2, max_length=100)
    assert check_selection(P2DArguments(p2d_data_selection="random"), [10] * 6, 100)[0] == 1


def test_a_scores_file_is_validated_and_another_data_set_refused_before_stage_one(tmp_path):
    import json

    from p2d_llamafactory.data.select import check_scores_file, read_scores_file

    settings = {"p2d_data_selection": "p2d", "p2d_data_ratio": 0.5, "model": "tiny", "data": "abc", "heads": None}
    record = {"settings": {**settings, "heads": {"0": [1]}}, "method": "p2d", "num_examples": 4, "selected": [0, 2]}
    record.update(scores=[0.5, None, 0.75, 0.1], uses=[1, 1, 1, 1], skipped_too_long=[1], anchors=[], timings={})
    path = tmp_path / "scores.json"
    for changes, message in [
        ({"selected": [0, 7]}, r"`selected` must list example indices in \[0, 4\)"),
        ({"selected": [-1, 2]}, r"`selected` must list example indices"),
        ({"selected": [2, 2]}, r"`selected` must list distinct example indices"),
        ({"scores": [0.5, 0.1]}, r"`scores` must hold one number \(or null\) per example, 4 in all"),
        ({"selected": [0, 1, 2]}, r"3 selected, more than `p2d_data_ratio` 0.5 of 4 keeps"),
        ({"settings": "p2d"}, r"is not a P2D scores file"),
    ]:
        path.write_text(json.dumps({**record, **changes}))
        with pytest.raises(ValueError, match=message):
            read_scores_file(path)
    path.write_text(json.dumps(record).replace("0.75", "NaN"))
    with pytest.raises(ValueError, match="NaN is not a number JSON allows"):
        read_scores_file(path)
    path.write_text(json.dumps(record))
    check_scores_file(str(path), settings)  # same selection; its heads are compared once stage I has them
    with pytest.raises(ValueError, match=r"other selection settings than this run's \(data differ\)"):
        check_scores_file(str(path), {**settings, "data": "another data set"})


def test_an_instruction_longer_than_a_probe_prompt_is_refused_before_any_model_work(tiny_tokenizer, p2d_log):
    from types import SimpleNamespace

    from p2d_llamafactory.data.select import check_instruction

    args = SimpleNamespace(
        p2d_data_selection="p2d", p2d_icl_instruction="word " * 300, p2d_icl_demos=5, p2d_icl_queries=3
    )
    with pytest.raises(
        ValueError, match=r"`p2d_icl_instruction` is \d+ tokens, more than a probe prompt holds \(cutoff_len 64\)"
    ):
        check_instruction(args, tiny_tokenizer, 64)
    check_instruction(args, tiny_tokenizer, 10_000)  # fits
    tokens = len(tiny_tokenizer.encode(args.p2d_icl_instruction, add_special_tokens=False))
    check_instruction(args, tiny_tokenizer, tokens + 1)  # fits, barely: a warning
    assert f"half or more of cutoff_len {tokens + 1}" in p2d_log.text
    args.p2d_icl_instruction, args.p2d_data_selection = "word " * 300, "ifd"
    check_instruction(args, tiny_tokenizer, 64)  # no probing: the instruction is unused
