"""p2d-eval: scoring LLaMA-Factory generated_predictions.jsonl (offline, tmp dirs only)."""

import json

import pytest

from p2d_llamafactory.experiments.evaluate import (
    EvaluationError,
    evaluate_predictions,
    load_predictions,
    main,
    score_example,
    write_report,
)
from p2d_llamafactory.files import EVAL_FILE, PREDICTIONS_FILE


def _write_predictions(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"prompt": "p", **row}) + "\n" for row in rows), encoding="utf-8")
    return path


def _pairs(pairs):
    return [{"predict": predict, "label": label} for predict, label in pairs]


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- metric edge cases


@pytest.mark.parametrize(
    ("predict", "label", "expected"),
    [
        ("so #### 1,000", "... #### 1000", 1.0),  # thousands commas
        ("#### 1000", "#### 1,000", 1.0),
        ("#### -5", "#### -5", 1.0),  # negatives
        ("#### 5", "#### -5", 0.0),
        ("#### 2.50", "#### 2.5", 1.0),  # decimals
        ("#### 3.0", "#### 3", 1.0),
        ("#### $1,200.", "#### 1200", 1.0),
        ("The answer is 42", "#### 42", 0.0),  # missing #### in the prediction
        ("#### 42", "42", 0.0),  # missing #### in the label
        ("", "#### 42", 0.0),
        ("#### 7 ... later #### 8", "#### 8", 1.0),  # the last #### counts
    ],
)
def test_exact_match_edge_cases(predict, label, expected):
    assert score_example(predict, [label], "em") == expected


def test_multiple_references_take_the_max():
    assert score_example("#### 3", ["#### 1", "#### 3", "#### 5"], "em") == 1.0
    assert score_example("#### 4", ["#### 1", "#### 3"], "em") == 0.0
    refs = ["a cat sat on the mat", "the dog barked loudly at night"]
    assert score_example("the dog barked at night", refs, "rougeL") == pytest.approx(
        max(score_example("the dog barked at night", [ref], "rougeL") for ref in refs)
    )
    assert score_example("the dog barked loudly at night", refs, "rougeL") == pytest.approx(1.0)
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        score_example("x", ["x"], "auto")


def test_rouge_uses_stemming():
    assert score_example("the cats were running", ["the cat was run"], "rougeL") > score_example(
        "the dogs were sleeping", ["the cat was run"], "rougeL"
    )
    assert score_example("running cats", ["run cat"], "rougeL") == pytest.approx(1.0)


# ---------------------------------------------------------------- auto metric, percent scale, report


def test_auto_picks_em_for_gsm8k_labels_and_reports_percent(tmp_path):
    path = _write_predictions(
        tmp_path / PREDICTIONS_FILE,
        _pairs([("#### 4", "2+2\n#### 4"), ("#### 10", "#### 9"), ("#### 1,000", "#### 1000"), ("no", "#### 3")]),
    )
    report = evaluate_predictions(path)
    assert report["metric"] == "em"
    assert report["score"] == pytest.approx(50.0)
    assert report["per_example"] == [1.0, 0.0, 1.0, 0.0]
    assert report["num_predictions"] == 4
    assert report["references"] == "label"
    assert report["predictions_file"] == str(path)
    assert report["format_adoption"] == pytest.approx(
        75.0
    )  # "no" has no final "#### N"; "#### 10" is wrong but adopted
    assert report["per_example_format"] == [1.0, 1.0, 1.0, 0.0]
    keys = {"metric", "score", "num_predictions", "predictions_file", "references", "per_example"}
    keys |= {"format_adoption", "per_example_format"}
    assert set(report) == keys


def test_auto_picks_rouge_for_text_labels(tmp_path):
    path = _write_predictions(
        tmp_path / PREDICTIONS_FILE,
        _pairs([("the cat sat on the mat", "the cat sat on the mat"), ("hello there", "general kenobi")]),
    )
    report = evaluate_predictions(path)
    assert report["metric"] == "rougeL"
    assert report["per_example"] == [pytest.approx(1.0), 0.0]
    assert report["score"] == pytest.approx(50.0)
    # forcing a metric overrides auto
    assert evaluate_predictions(path, metric="em")["score"] == 0.0


def test_run_directory_default_output_and_cli(tmp_path, capsys):
    run = tmp_path / "run"
    _write_predictions(run / PREDICTIONS_FILE, _pairs([("#### 5", "#### 5"), ("#### 6", "#### 7")]))
    assert main([str(run)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "em = 50.00 on 2 predictions" in out and "100.0% adopt the '#### N' format" in out
    report = json.loads((run / EVAL_FILE).read_text())
    assert report["metric"] == "em" and report["score"] == 50.0 and report["per_example"] == [1.0, 0.0]
    first = (run / EVAL_FILE).read_bytes()
    assert main([str(run / PREDICTIONS_FILE), "--metric", "auto"]) == 0
    assert (run / EVAL_FILE).read_bytes() == first  # rerun is byte-identical

    custom = tmp_path / "reports" / "eval.json"
    assert main([str(run), "--metric", "rougeL", "--output", str(custom)]) == 0
    assert json.loads(custom.read_text())["metric"] == "rougeL"
    # an existing directory as --output gets p2d_eval.json inside it
    assert write_report(evaluate_predictions(run), tmp_path / "reports") == tmp_path / "reports" / EVAL_FILE


def test_blank_lines_are_skipped_and_line_numbers_stay_true(tmp_path):
    path = tmp_path / PREDICTIONS_FILE
    path.write_text('{"predict": "#### 1", "label": "#### 1"}\n\n{"predict": "#### 2", "label": "#### 2"}\n\n')
    assert len(load_predictions(path)) == 2
    path.write_text('{"predict": "#### 1", "label": "#### 1"}\n\n{"predict": \n')
    with pytest.raises(EvaluationError, match=r"line 3: malformed JSON"):
        load_predictions(path)


# ---------------------------------------------------------------- multi-reference


def _reference_file(path, refs_per_row):
    rows = [
        {"instruction": "Summarize the following dialogue.", "input": "d", "output": refs[0], "references": refs}
        for refs in refs_per_row
    ]
    path.write_text(json.dumps(rows), encoding="utf-8")
    return path


def test_references_file_scores_max_over_each_row(tmp_path, capsys):
    preds = _write_predictions(
        tmp_path / "run" / PREDICTIONS_FILE,
        _pairs([("the dog barked loudly", "a cat slept"), ("blue sky today", "blue sky today")]),
    )
    refs = _reference_file(
        tmp_path / "test.json",
        [["a cat slept", "the dog barked loudly", "birds sang"], ["blue sky today", "grey clouds"]],
    )
    single = evaluate_predictions(preds)
    multi = evaluate_predictions(preds, references=refs)
    assert single["per_example"] == [0.0, pytest.approx(1.0)]
    assert multi["per_example"] == [pytest.approx(1.0), pytest.approx(1.0)]
    assert multi["score"] == pytest.approx(100.0)
    assert multi["references"] == str(refs)
    assert multi["metric"] == "rougeL"
    # inline lists work the same way
    assert evaluate_predictions(preds, references=[["the dog barked loudly"], ["x"]])["references"] == "inline"

    assert main([str(preds), "--references", str(refs)]) == 0
    assert f"references from {refs}" in capsys.readouterr().out
    assert json.loads((tmp_path / "run" / EVAL_FILE).read_text())["references"] == str(refs)


# ---------------------------------------------------------------- bad input: clear error, nothing written


def _expect_failure(capsys, folder, argv, message):
    before = _files(folder)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("p2d-eval: error: ") and message in err, err
    assert _files(folder) == before  # no report (and no temp file) written


def test_missing_file(tmp_path, capsys):
    _expect_failure(capsys, tmp_path, [str(tmp_path / "nope.jsonl")], f"predictions file not found: {tmp_path}")
    # a run directory without predictions names the file it looked for
    _expect_failure(capsys, tmp_path, [str(tmp_path)], str(tmp_path / PREDICTIONS_FILE))


def test_empty_file(tmp_path, capsys):
    path = tmp_path / PREDICTIONS_FILE
    path.write_text("")
    _expect_failure(capsys, tmp_path, [str(path)], f"{path}: no predictions (the file is empty)")
    path.write_text("\n  \n")
    _expect_failure(capsys, tmp_path, [str(tmp_path)], "the file is empty")


def test_malformed_line_reports_line_number(tmp_path, capsys):
    path = tmp_path / PREDICTIONS_FILE
    path.write_text('{"predict": "a", "label": "a"}\n{"predict": "b", "label": "b"}\nnot json\n')
    _expect_failure(capsys, tmp_path, [str(path)], f"{path}, line 3: malformed JSON")
    path.write_text('{"predict": "a", "label": "a"}\n["predict", "label"]\n')
    _expect_failure(capsys, tmp_path, [str(path)], f"{path}, line 2: expected a JSON object, got list")


@pytest.mark.parametrize("missing", ["predict", "label"])
def test_line_missing_key(tmp_path, capsys, missing):
    path = tmp_path / PREDICTIONS_FILE
    bad = {"prompt": "p", "predict": "x", "label": "y"}
    del bad[missing]
    path.write_text('{"predict": "a", "label": "a"}\n' + json.dumps(bad) + "\n")
    _expect_failure(capsys, tmp_path, [str(path)], f"{path}, line 2: missing key '{missing}'")


def test_non_string_value(tmp_path, capsys):
    path = tmp_path / PREDICTIONS_FILE
    path.write_text('{"predict": null, "label": "a"}\n')
    _expect_failure(capsys, tmp_path, [str(path)], f"{path}, line 1: 'predict' must be a string, got NoneType")


def test_reference_count_mismatch(tmp_path, capsys):
    preds = _write_predictions(tmp_path / PREDICTIONS_FILE, _pairs([("a", "a"), ("b", "b"), ("c", "c")]))
    refs = _reference_file(tmp_path / "test.json", [["a"], ["b"]])
    _expect_failure(
        capsys,
        tmp_path,
        [str(preds), "--references", str(refs)],
        f"{refs} has 2 reference rows but {preds} has 3 predictions",
    )


def test_bad_references_file(tmp_path, capsys):
    preds = _write_predictions(tmp_path / PREDICTIONS_FILE, _pairs([("a", "a")]))
    missing = tmp_path / "missing.json"
    _expect_failure(
        capsys, tmp_path, [str(preds), "--references", str(missing)], f"references file not found: {missing}"
    )
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps([{"instruction": "i", "output": "a"}]))
    _expect_failure(
        capsys, tmp_path, [str(preds), "--references", str(refs)], f"{refs}, row 0: needs a non-empty list"
    )
    refs.write_text("{oops")
    _expect_failure(capsys, tmp_path, [str(preds), "--references", str(refs)], f"{refs}: not valid JSON")
    refs.write_text("[]")
    _expect_failure(capsys, tmp_path, [str(preds), "--references", str(refs)], f"{refs}: no rows")


def test_library_errors_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="metric must be one of"):
        evaluate_predictions(tmp_path, metric="bleu")
    with pytest.raises(EvaluationError, match="not found"):
        evaluate_predictions(tmp_path)


# ---------------------------------------------------------------- --baseline (the quickstart's side by side)


def _rows(predicts, labels):
    return [{"prompt": f"q{i}", "predict": p, "label": y} for i, (p, y) in enumerate(zip(predicts, labels))]


def test_baseline_is_scored_the_same_way_and_shown_side_by_side(tmp_path, capsys):
    labels = ["#### 1", "#### 2", "#### 3", "#### 4"]
    run, base = tmp_path / "run", tmp_path / "base"
    _write_predictions(run / PREDICTIONS_FILE, _rows(["#### 1", "#### 2", "#### 3", "#### 9"], labels))
    _write_predictions(base / PREDICTIONS_FILE, _rows(["#### 1", "no", "no", "no"], labels))
    (run / "p2d_run.json").write_text(
        json.dumps(
            {
                "heads": 27,
                "total_heads": 270,
                "head_modules": ["q", "o"],
                "trainable_params": 1000,
                "total_params": 100000,
                "trainable_share": 0.01,
                "learning_rate": 1e-3,
            }
        )
    )
    (run / "p2d_timings.json").write_text(json.dumps({"head_identification_seconds": 95.25, "training_seconds": 4.5}))
    assert main([str(run), "--baseline", str(base), "--baseline-label", "untrained"]) == 0
    out = capsys.readouterr().out
    assert "EM on 4 held-out examples:" in out
    assert f"  untrained        25.00   {base}" in out
    assert f"  trained          75.00   {run}" in out
    assert "trained 27 of 270 heads (q,o slices): 1,000 of 100,000 weights (1.00%), at learning rate 0.001" in out
    assert "time: head identification 95 s, training 4.5 s" in out
    report = json.loads((run / EVAL_FILE).read_text())
    assert report["score"] == 75.0 and report["baseline"]["score"] == 25.0


def test_a_baseline_on_other_examples_is_refused(tmp_path, capsys):
    run, base = tmp_path / "run", tmp_path / "base"
    _write_predictions(run / PREDICTIONS_FILE, _rows(["#### 1", "#### 2"], ["#### 1", "#### 2"]))
    _write_predictions(base / PREDICTIONS_FILE, _rows(["#### 1"], ["#### 1"]))
    assert main([str(run), "--baseline", str(base)]) == 1
    assert "its predictions are for other examples" in capsys.readouterr().err
    assert not (run / EVAL_FILE).exists()  # nothing half-written


def test_a_baseline_summary_survives_records_with_missing_or_mistyped_fields(tmp_path, capsys):
    labels = ["#### 1", "#### 2"]
    run, base = tmp_path / "run", tmp_path / "base"
    _write_predictions(run / PREDICTIONS_FILE, _rows(["#### 1", "#### 2"], labels))
    _write_predictions(base / PREDICTIONS_FILE, _rows(["#### 1", "no"], labels))
    (run / "p2d_run.json").write_text(json.dumps({"heads": 27, "learning_rate": "fast"}))
    (run / "p2d_timings.json").write_text(json.dumps({"training_seconds": "long", "head_identification_seconds": 3.0}))
    assert main([str(run), "--baseline", str(base)]) == 0
    captured = capsys.readouterr()
    assert "lacks or mistypes total_heads, head_modules" in captured.err and "learning_rate" in captured.err
    assert "trained 27" not in captured.out and "time: head identification 3.0 s" in captured.out
