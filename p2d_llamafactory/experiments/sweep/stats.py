"""Small pieces the report modules share: a run's score, mean ± std over seeds, and Markdown formatting."""

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ... import methods
from ...files import EVAL_FILE, read_record
from .runs import Run, is_finished, missing_outputs


DASH = "–"


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """(mean, sample std with n - 1) of the values; std None below two values."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same report regenerates the same intervals


def bootstrap_interval(
    values: Sequence[float], level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (one value per test row, rows resampled with
    replacement). The resamples depend only on ``seed`` and the number of rows, so two calls on rows of the same
    test set resample the same rows: their intervals are paired."""
    data = np.asarray(values, dtype=float)
    if data.ndim != 1 or data.size == 0:
        raise ValueError(f"bootstrap_interval needs a non-empty list of numbers, got shape {data.shape}")
    rng = np.random.default_rng(seed)
    means = np.concatenate(  # in chunks, so that a test set of thousands of rows stays small in memory
        [data[rng.integers(0, data.size, size=(n, data.size))].mean(axis=1) for n in _chunks(resamples, 1_000)]
    )
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def _chunks(total: int, size: int) -> list[int]:
    return [min(size, total - start) for start in range(0, total, size)]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class EvalRecord:
    """What the report reads of a run's p2d_eval.json, read once; Nones (an empty list) where the file lacks it."""

    score: float | None = None  # percent
    metric: str | None = None
    predictions: int | None = None
    format_adoption: float | None = None  # exact match only: % of answers ending in "#### N"
    per_example: list[float] = field(default_factory=list)  # per-row scores in points (0-1 in the file, times 100)
    per_example_format: list[float] = field(default_factory=list)  # exact match only: 100/0 per row, "#### N" or not


def eval_record(run: Run) -> EvalRecord:
    """The run's p2d_eval.json as an :class:`EvalRecord`; an empty one when it is missing or has no score."""
    record = read_record(run.out / EVAL_FILE)
    score = _number(record.get("score")) if record is not None else None
    if record is None or score is None:
        return EvalRecord()
    rows = record.get("num_predictions")
    return EvalRecord(
        score=score,
        metric=record.get("metric"),
        predictions=rows if isinstance(rows, int) and not isinstance(rows, bool) else None,
        format_adoption=_number(record.get("format_adoption")),
        per_example=_points(record.get("per_example")),
        per_example_format=_points(record.get("per_example_format")),
    )


def _points(values: Any) -> list[float]:
    """A per-row list of the file (0-1 scale) in points; empty when it is missing or holds a non-number."""
    per_row = [_number(x) for x in values] if isinstance(values, list) else []
    return [100.0 * x for x in per_row] if per_row and None not in per_row else []


def run_score(run: Run) -> tuple[float | None, str | None, int | None]:
    """(score, metric, number of predictions) of the run's p2d_eval.json; Nones when it has none."""
    record = eval_record(run)
    return record.score, record.metric, record.predictions


def fmt(value: float | None, digits: int = 2) -> str:
    return DASH if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def fmt_stat(mean: float | None, std: float | None, n: int, listed: int, digits: int = 2) -> str:
    """``mean ± std`` (std from two seeds on), ``(n=k)`` when fewer than the listed seeds have the value."""
    if mean is None or not math.isfinite(mean):
        return DASH
    text = fmt(mean, digits) + (f" ± {fmt(std, digits)}" if std is not None and n > 1 else "")
    return text + (f" (n={n})" if n < listed else "")


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def metric_label(metric: str) -> str:
    return methods.METRICS[metric].label if metric in methods.METRICS else metric


def missing_runs_lines(runs: list[Run]) -> list[str]:
    """Markdown list of the runs (seeds) that have not finished, with their YAML and what they lack."""
    return [
        f"- `{run.yaml_path}` (seed {run.seed}): no {', '.join(missing_outputs(run))} in `{run.output_dir}`"
        for run in runs
        if not is_finished(run)
    ]
