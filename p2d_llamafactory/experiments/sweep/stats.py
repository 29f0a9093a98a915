"""Small pieces the report modules share: a run's score, mean ± std over seeds, and Markdown formatting."""

import math
import statistics
from collections.abc import Sequence

import numpy as np

from ... import methods
from .runs import EVAL_FILE, Run, is_finished, missing_outputs, read_record


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


def run_per_example(run: Run) -> list[float] | None:
    """The run's per-row scores in points (``per_example`` of p2d_eval.json, 0-1, times 100); None without them."""
    record = read_record(run.out / EVAL_FILE)
    rows = record.get("per_example") if record is not None else None
    if not isinstance(rows, list) or not rows:
        return None
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in rows):
        return None
    return [100.0 * float(x) for x in rows]


def run_score(run: Run) -> tuple[float | None, str | None, int | None]:
    """(score, metric, number of predictions) of the run's p2d_eval.json; Nones when it has none."""
    record = read_record(run.out / EVAL_FILE)
    score = record.get("score") if record is not None else None
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        return None, None, None
    rows = record.get("num_predictions")
    return float(score), record.get("metric"), rows if isinstance(rows, int) and not isinstance(rows, bool) else None


def run_format_adoption(run: Run) -> float | None:
    """The share (%) of the run's answers that end in ``#### N`` (p2d-eval's ``format_adoption``, exact-match
    runs only); None when its p2d_eval.json has none."""
    record = read_record(run.out / EVAL_FILE)
    value = record.get("format_adoption") if record is not None else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


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
