"""``p2d-eval``: score LLaMA-Factory's ``generated_predictions.jsonl`` with the paper's metrics (Appendix A).

LLaMA-Factory writes ``<output_dir>/generated_predictions.jsonl`` for ``do_predict: true`` with
``predict_with_generate: true``: one JSON object per line with the keys ``prompt``, ``predict`` (the generated
text) and ``label`` (the decoded target). Each prediction is scored against its label, or against several
references:

* ``em``: exact match of the final ``#### <number>`` (GSM8K), with the number canonicalised by
  :func:`p2d_llamafactory.data.metrics.final_number` (commas, signs, "$", decimals);
* ``rougeL``: ROUGE-L F1 with Porter stemming (DialogSum, BioInstruct);
* ``auto``: ``em`` when at least 90% of the labels end with ``#### <number>``, else ``rougeL``.

With ``--references FILE`` (an LLaMA-Factory-format test JSON, a list of records, such as the
``p2d_dialogsum_test.json`` written by ``p2d-data``) every row's ``references`` list replaces the label of the
prediction in the same position, and the example scores the maximum over its references (DialogSum test
dialogues have three human summaries).

The report ``p2d_eval.json`` (next to the predictions unless ``--output`` says otherwise) holds::

    {"metric": "em" | "rougeL", "score": <mean in percent, 0-100>, "num_predictions": N,
     "predictions_file": "...", "references": "label" | "<references file>", "per_example": [...]}

and, for ``em``, ``"format_adoption"``: the percentage of predictions that end with a ``#### <number>`` answer at
all, right or wrong (the paper's GSM8K format adoption), with ``"per_example_format"`` (1.0/0.0 per example).

``per_example`` keeps each example's score on the metric's own 0-1 scale (1.0/0.0 for ``em``, the F1 for
``rougeL``); only ``score`` is in percent. Usage::

    p2d-eval saves/run1                       # saves/run1/generated_predictions.jsonl, metric auto
    p2d-eval saves/run1/generated_predictions.jsonl --metric rougeL \\
        --references data_info/p2d_dialogsum_test.json --output saves/run1/eval_multiref.json
    p2d-eval saves/run1 --baseline saves/untrained   # side by side with the untrained model's predictions

With ``--baseline DIR`` the predictions of another run on the same examples (the untrained model, say) are
scored the same way; the report gains a ``baseline`` entry and the output shows both scores side by side,
with what the run trained (``p2d_run.json``) and its stage timings (``p2d_timings.json``).
"""

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..data.metrics import exact_match, final_number, resolve_metric, rouge_l
from ..files import EVAL_FILE, PREDICTIONS_FILE, RUN_FILE, read_record
from ..io import atomic_write_json
from ..methods import METRIC_CHOICES, METRICS
from ..report.aer import read_timings


__all__ = [
    "EvaluationError",
    "compare_with_baseline",
    "comparison_lines",
    "PREDICTIONS_FILE",
    "EVAL_FILE",
    "default_output_path",
    "evaluate_predictions",
    "load_predictions",
    "load_references",
    "main",
    "resolve_predictions_path",
    "score_example",
    "summary_line",
    "write_report",
]


class EvaluationError(ValueError):
    """Bad or missing input; the message names the file (and the line or row where it applies)."""


def resolve_predictions_path(path: str | os.PathLike) -> Path:
    """The predictions file: ``path`` itself, or ``path/generated_predictions.jsonl`` for a run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / PREDICTIONS_FILE
    if not path.is_file():
        raise EvaluationError(f"predictions file not found: {path}")
    return path


def default_output_path(predictions_path: str | os.PathLike) -> Path:
    """``p2d_eval.json`` next to the predictions file."""
    return Path(predictions_path).parent / EVAL_FILE


def load_predictions(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read a ``generated_predictions.jsonl`` (or a run directory holding one).

    Returns one ``{"predict": ..., "label": ...}`` dict per non-blank line (``prompt`` is not needed and not
    kept). Raises :class:`EvaluationError` for a missing or empty file, a line that is not a JSON object
    (with its 1-based line number), or a line without string ``predict`` and ``label`` values.
    """
    path = resolve_predictions_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise EvaluationError(f"{path}: not UTF-8 text ({err})") from err
    rows: list[dict[str, str]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as err:
            raise EvaluationError(f"{path}, line {lineno}: malformed JSON ({err})") from err
        if not isinstance(obj, dict):
            raise EvaluationError(f"{path}, line {lineno}: expected a JSON object, got {type(obj).__name__}")
        for key in ("predict", "label"):
            if key not in obj:
                raise EvaluationError(f"{path}, line {lineno}: missing key '{key}'")
            if not isinstance(obj[key], str):
                raise EvaluationError(
                    f"{path}, line {lineno}: '{key}' must be a string, got {type(obj[key]).__name__}"
                )
        rows.append({"predict": obj["predict"], "label": obj["label"]})
    if not rows:
        raise EvaluationError(f"{path}: no predictions (the file is empty)")
    return rows


def load_references(path: str | os.PathLike) -> list[list[str]]:
    """Each row's ``references`` list from an LLaMA-Factory-format JSON file (a list of records).

    Raises :class:`EvaluationError` for a missing file, invalid JSON, a top level that is not a non-empty
    list, or a row (0-based index) without a non-empty list of strings under ``references``.
    """
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"references file not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise EvaluationError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, list):
        raise EvaluationError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    if not data:
        raise EvaluationError(f"{path}: no rows (the list is empty)")
    references: list[list[str]] = []
    for index, row in enumerate(data):
        refs = row.get("references") if isinstance(row, dict) else None
        if (
            not isinstance(refs, list)
            or not refs
            or not all(isinstance(ref, str) for ref in refs)
            or not any(ref.strip() for ref in refs)
        ):
            raise EvaluationError(f"{path}, row {index}: needs a non-empty list of strings under 'references'")
        references.append(list(refs))
    return references


def score_example(prediction: str, references: Sequence[str], metric: str) -> float:
    """Score of one prediction on the 0-1 scale: the maximum over ``references`` of ``metric`` ("em"/"rougeL")."""
    if metric == "em":
        return max((exact_match(prediction, ref) for ref in references), default=0.0)
    if metric == "rougeL":
        return rouge_l(prediction, list(references))
    raise ValueError(f"metric must be 'em' or 'rougeL' (resolve 'auto' first); got '{metric}'")


def evaluate_predictions(
    path: str | os.PathLike,
    metric: str = "auto",
    references: str | os.PathLike | Sequence[Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Score a predictions file (or run directory) and return the report dict (nothing is written).

    ``metric`` is "auto", "em" or "rougeL" ("auto" is resolved on the labels). ``references`` is None (score
    against each line's ``label``), the path of an LLaMA-Factory-format JSON whose rows carry ``references``
    lists, or the lists themselves; rows align with predictions by position and the counts must match.
    """
    if metric not in METRIC_CHOICES:
        raise EvaluationError(f"metric must be one of {', '.join(METRIC_CHOICES)}; got '{metric}'")
    predictions_path = resolve_predictions_path(path)
    rows = load_predictions(predictions_path)
    labels = [row["label"] for row in rows]
    if references is None:
        per_row_refs = [[label] for label in labels]
        references_name = "label"
    else:
        if isinstance(references, (str, os.PathLike)):
            per_row_refs = load_references(references)
            references_name = str(references)
        else:
            per_row_refs = [list(refs) for refs in references]
            references_name = "inline"
        if len(per_row_refs) != len(rows):
            raise EvaluationError(
                f"{references_name} has {len(per_row_refs)} reference rows but {predictions_path} has "
                f"{len(rows)} predictions; rows align by position, so the counts must match"
            )
    resolved = resolve_metric(metric, labels)
    per_example = [score_example(row["predict"], refs, resolved) for row, refs in zip(rows, per_row_refs)]
    report = {
        "metric": resolved,
        "score": 100.0 * sum(per_example) / len(per_example),
        "num_predictions": len(per_example),
        "predictions_file": str(predictions_path),
        "references": references_name,
        "per_example": per_example,
    }
    if resolved == "em":  # GSM8K: how many answers adopt the "#### <number>" format at all, right or wrong
        adopted = [1.0 if final_number(row["predict"]) is not None else 0.0 for row in rows]
        report["format_adoption"] = 100.0 * sum(adopted) / len(rows)
        report["per_example_format"] = adopted
    return report


def write_report(report: dict[str, Any], output: str | os.PathLike | None = None) -> Path:
    """Write ``report`` atomically to ``output`` (a file, or a directory to hold ``p2d_eval.json``), by default
    ``p2d_eval.json`` next to ``report["predictions_file"]``. Returns the path written."""
    if output is None:
        target = default_output_path(report["predictions_file"])
    else:
        target = Path(output)
        if target.is_dir():
            target = target / EVAL_FILE
    return atomic_write_json(target, report)


def summary_line(report: dict[str, Any], output: str | os.PathLike | None = None) -> str:
    refs = "labels" if report["references"] == "label" else f"references from {report['references']}"
    adoption = f"; {report['format_adoption']:.1f}% adopt the '#### N' format" if "format_adoption" in report else ""
    line = (
        f"{report['metric']} = {report['score']:.2f} on {report['num_predictions']} predictions "
        f"from {report['predictions_file']} ({refs}{adoption})"
    )
    return line + (f" -> {output}" if output is not None else "")


def compare_with_baseline(report: dict[str, Any], baseline: str | os.PathLike, references: str | None) -> None:
    """Score ``baseline``'s predictions like ``report``'s (same metric, same examples) into ``report["baseline"]``."""
    other = evaluate_predictions(baseline, metric=report["metric"], references=references)
    ours = [row["label"] for row in load_predictions(report["predictions_file"])]  # the same gold answers,
    theirs = [row["label"] for row in load_predictions(other["predictions_file"])]  # in the same order
    if ours != theirs:
        raise EvaluationError(
            f"--baseline {baseline}: its predictions are for other examples than {report['predictions_file']} "
            f"({len(theirs)} vs {len(ours)} rows, or another order); predict both on the same eval_dataset."
        )
    report["baseline"] = {"score": other["score"], "predictions_file": other["predictions_file"]}


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value >= 10 else f"{value:.1f} s"


def comparison_lines(report: dict[str, Any], label_of_baseline: str = "baseline") -> list[str]:
    """The side-by-side summary of a run and its baseline, with what the run trained and its stage timings."""
    run_dir = Path(report["predictions_file"]).parent
    label = METRICS[report["metric"]].label
    baseline = report["baseline"]
    lines = [
        f"{label} on {report['num_predictions']} held-out examples:",
        f"  {label_of_baseline:<16}{baseline['score']:6.2f}   {Path(baseline['predictions_file']).parent}",
        f"  {'trained':<16}{report['score']:6.2f}   {run_dir}",
    ]
    record = _run_record(run_dir / RUN_FILE)
    if record:
        lines.append(
            f"  trained {record['heads']} of {record['total_heads']} heads ({','.join(record['head_modules'])} "
            f"slices): {record['trainable_params']:,} of {record['total_params']:,} weights "
            f"({100 * record['trainable_share']:.2f}%), at learning rate {record['learning_rate']:.3g}"
        )
    timings = read_timings(run_dir)
    names = {
        "head_identification_seconds": "head identification",
        "data_scoring_seconds": "data selection",
        "training_seconds": "training",
    }
    parts = [f"{name} {_seconds(timings[key])}" for key, name in names.items() if key in timings]
    if parts:
        lines.append("  time: " + ", ".join(parts))
    return lines


_RUN_FIELDS = {
    "heads": int,
    "total_heads": int,
    "head_modules": list,
    "trainable_params": int,
    "total_params": int,
    "trainable_share": float,
    "learning_rate": float,
}


def _run_record(path: Path) -> dict[str, Any] | None:
    """The run's p2d_run.json for the summary, or None (with a note) where it is missing a field or has a value of
    the wrong type: the summary then leaves that line out instead of failing."""
    record = read_record(path)
    if record is None:
        return None
    wrong = [
        key
        for key, kind in _RUN_FIELDS.items()
        if isinstance(record.get(key), bool)
        or not isinstance(record.get(key), (int, float) if kind is float else kind)
    ]
    if wrong:
        print(
            f"p2d-eval: note: {path} lacks or mistypes {', '.join(wrong)}; what the run trained is not shown.",
            file=sys.stderr,
        )
        return None
    return record


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2d-eval",
        description="Score LLaMA-Factory generated_predictions.jsonl with exact match of the final '#### N' "
        "(GSM8K) or ROUGE-L F1 with stemming; writes p2d_eval.json next to the predictions.",
    )
    parser.add_argument("predictions", help="generated_predictions.jsonl, or the run directory holding it")
    parser.add_argument(
        "--metric",
        choices=METRIC_CHOICES,
        default="auto",
        help="em, rougeL, or auto: em when >= 90%% of the labels end with '#### <number>' (default: auto)",
    )
    parser.add_argument(
        "--references",
        default=None,
        metavar="FILE",
        help="LLaMA-Factory-format test JSON whose rows carry a 'references' list (aligned with the predictions "
        "by order); each example scores the max over its references",
    )
    parser.add_argument(
        "--output", default=None, metavar="FILE", help="report path (default: p2d_eval.json next to predictions)"
    )
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="DIR",
        help="another run's predictions on the same examples (e.g. the untrained model), scored the same way and "
        "shown side by side",
    )
    parser.add_argument(
        "--baseline-label", default="baseline", help="what the baseline is, in the output (default: %(default)s)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = evaluate_predictions(args.predictions, metric=args.metric, references=args.references)
        if args.baseline is not None:
            compare_with_baseline(report, args.baseline, args.references)
        written = write_report(report, args.output)
    except (EvaluationError, OSError, ValueError) as err:
        print(f"p2d-eval: error: {err}", file=sys.stderr)
        return 1
    print(f"p2d-eval: {summary_line(report, written)}")
    if args.baseline is not None:
        print("\n".join(comparison_lines(report, args.baseline_label)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
