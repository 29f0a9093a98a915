"""Paired differences across seeds: the questions the seeded results answer, as one cell minus another.

Two cells of one model and data set are compared seed by seed (the same seed: the same FHI sample, the same random
draws, the same test rows), so the spread of the differences, not of the cells, says whether a gap is real. The
full-data ceiling, run for its first seed only (that run is also the AER's t_FFT), is subtracted from every seed of
the other cell when it has one finished seed, and the row says so. Seeds that only one of the two cells has are
listed, never paired with zero. Written as a section of ``results.md``.

Each row also gives a 95% interval of the mean difference over test rows: per row, the difference of the two cells
averaged over the paired seeds, and the percentile bootstrap of its mean (rows resampled). It says how far the gap
could move on another test sample of the same size; the spread over seeds is the std beside it. Rows are paired by
position, so the interval is left out when a cell's runs were scored on test sets of different sizes.

For exact match (GSM8K) a second table gives the same differences on format adoption, the share of answers that end
in ``#### <number>`` at all: at small model sizes exact match sits near the floor and adoption is what moves.
"""

from dataclasses import dataclass, field
from typing import Literal

from ... import methods
from .runs import percent
from .stats import DASH, bootstrap_interval, fmt, md_table, mean_std


@dataclass(frozen=True)
class Comparison:
    question: str
    left: tuple[str, str]  # (p2d_data_selection, adaptation name of methods.ADAPTATIONS)
    right: tuple[str, str]


COMPARISONS = (
    Comparison("W1 heads − random heads (P2D data)", ("p2d", "p2d_heads"), ("p2d", "random_heads")),
    Comparison("P2D data − random data (P2D heads)", ("p2d", "p2d_heads"), ("random", "p2d_heads")),
    Comparison("P2D data − random data (full fine-tuning)", ("p2d", "full"), ("random", "full")),
    Comparison("P2D data − Data Whisperer data (P2D heads)", ("p2d", "p2d_heads"), ("data_whisperer", "p2d_heads")),
    Comparison("P2D + P2D heads − random + full fine-tuning", ("p2d", "p2d_heads"), ("random", "full")),
    Comparison("P2D + P2D heads − random + LoRA", ("p2d", "p2d_heads"), ("random", "lora")),
    Comparison("P2D + P2D heads − full data + full fine-tuning", ("p2d", "p2d_heads"), ("none", "full")),
    Comparison("P2D data − random data (LoFiT)", ("p2d", "lofit"), ("random", "lofit")),
    Comparison("P2D heads − LoFiT (random data)", ("random", "p2d_heads"), ("random", "lofit")),
)
Measure = Literal["score", "format"]  # the metric, or exact match's format adoption
MEASURES: tuple[Measure, ...] = ("score", "format")
HEADER = [
    "Model",
    "Dataset",
    "Question",
    "Per seed",
    "Mean ± std",
    "95% interval (test rows)",
    "Seeds in favour",
    "AER (left / right)",
]


@dataclass
class Side:
    """One cell's finished seeds: seed -> (perf, aer), and seed -> per-row scores where the runs kept them."""

    values: dict[int, tuple[float, float | None]]
    rows: dict[int, list[float]] = field(default_factory=dict)


def _side(
    cells: dict,
    model: str,
    dataset: str,
    selection: str,
    adaptation: str,
    rho_d: float,
    rho_p: float,
    measure: Measure = "score",
) -> Side | None:
    """The cell of (selection, adaptation) at the main budget; LoRA at its one rank (None if the runs hold several).
    ``measure``: "score" (the metric) or "format" (exact match's format adoption)."""
    target_d = round(1.0 if selection == "none" else rho_d, 6)
    if adaptation == "full":
        labels = ["100%"]
    elif adaptation == "lora":
        labels = [key[5] for key in cells if key[:5] == (model, dataset, selection, adaptation, target_d)]
        if len(labels) != 1:
            return None
    else:
        labels = [percent(rho_p)]
    cell = cells.get((model, dataset, selection, adaptation, target_d, labels[0]))
    if cell is None:
        return None
    if measure == "format":
        aers = {seed: aer for seed, _, aer in cell.per_seed}
        values = {seed: (adoption, aers.get(seed)) for seed, adoption in cell.format_per_seed.items()}
        return Side(values, cell.format_per_example) if values else None
    values = {seed: (perf, aer) for seed, perf, aer in cell.per_seed if perf is not None}
    return Side(values, cell.per_example) if values else None


def _signed(value: float) -> str:
    return ("+" if value >= 0 else "−") + fmt(abs(value))


def _mean(values: list[float]) -> float | None:
    return mean_std(values)[0]


def _row_interval(left: Side, right: Side, seeds: list[int], reference_seed: int | None) -> str:
    """The bootstrap interval of the mean over rows of the per-row differences averaged over ``seeds``; a dash
    when a seed has no per-row scores or the runs' test sets differ in size."""
    pairs = [(left.rows.get(s), right.rows.get(s if reference_seed is None else reference_seed)) for s in seeds]
    if not pairs or any(a is None or b is None for a, b in pairs) or len({len(x) for p in pairs for x in p}) != 1:
        return DASH
    per_row = [sum(a[i] - b[i] for a, b in pairs) / len(pairs) for i in range(len(pairs[0][0]))]
    low, high = bootstrap_interval(per_row)
    return f"[{_signed(low)}, {_signed(high)}]"


def _row(model: str, dataset: str, comparison: Comparison, left: Side, right: Side) -> list[str]:
    constant = comparison.right[0] == "none" and len(right.values) == 1  # the ceiling, run for one seed
    seeds = sorted(left.values) if constant else sorted(set(left.values) & set(right.values))
    reference = next(iter(right.values.values())) if constant else None
    diffs = [left.values[s][0] - (reference or right.values[s])[0] for s in seeds]
    per_seed = ", ".join(f"{_signed(d)} ({s})" for s, d in zip(seeds, diffs)) or DASH
    unpaired = sorted(set(left.values) ^ set(right.values)) if not constant else []
    if unpaired:
        per_seed += f"; unpaired: {', '.join(map(str, unpaired))}"
    if constant:
        per_seed += f"; against its one run (seed {next(iter(right.values))})"
    mean, std = mean_std(diffs)
    summary = DASH if mean is None else _signed(mean) + (f" ± {fmt(std)}" if std is not None else "")
    left_aer = _mean([left.values[s][1] for s in seeds if left.values[s][1] is not None])
    right_aer = (
        reference[1] if constant else _mean([right.values[s][1] for s in seeds if right.values[s][1] is not None])
    )
    label = methods.DATASET_LABELS.get(dataset, dataset)
    favour = f"{sum(d > 0 for d in diffs)} of {len(diffs)}" if diffs else DASH
    interval = _row_interval(left, right, seeds, next(iter(right.values)) if constant else None)
    aers = f"{fmt(left_aer)} / {fmt(right_aer)}"
    return [model, label, comparison.question, per_seed, summary, interval, favour, aers]


def paired_rows(
    cells: dict, models: list[str], datasets: list[str], rho_d: float, rho_p: float, measure: Measure = "score"
) -> list[list[str]]:
    """One row per (model, data set, comparison) where both cells have a finished seed with the ``measure``."""
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(MEASURES)}; got {measure!r}")
    rows = []
    for model in models:
        for dataset in datasets:
            for comparison in COMPARISONS:
                left = _side(cells, model, dataset, *comparison.left, rho_d, rho_p, measure)
                right = _side(cells, model, dataset, *comparison.right, rho_d, rho_p, measure)
                if left is not None and right is not None:
                    rows.append(_row(model, dataset, comparison, left, right))
    return rows


def paired_section(
    cells: dict, models: list[str], datasets: list[str], rho_d: float, rho_p: float, level: str = "##"
) -> str:
    """The paired-differences table under a heading of ``level``; a sentence when no pair has a finished seed."""
    lines = [
        f"{level} Paired differences across seeds",
        "",
        f"Left cell minus right cell, seed by seed (points of the metric), at ρ_D = {percent(rho_d)}, ρ_P = "
        f"{percent(rho_p)}; mean ± sample std of the differences; seeds in favour: those where the left cell "
        "scores higher. A cell run for one seed only (the full-data ceiling) is subtracted from every seed. 95% "
        "interval: percentile bootstrap of the mean difference over the test rows (each row's difference averaged "
        "over the paired seeds; 10,000 resamples of the rows): how far the gap could move on another test sample of "
        "this size, not over other seeds (that is the std). AER: mean over the paired seeds.",
        "",
    ]
    rows = paired_rows(cells, models, datasets, rho_d, rho_p)
    lines.append(md_table(HEADER, rows) if rows else "No pair of cells has a finished seed yet.")
    format_rows = paired_rows(cells, models, datasets, rho_d, rho_p, measure="format")
    if format_rows:
        lines += [
            "",
            f"{level}# Format adoption (exact match)",
            "",
            "The same differences on the share of answers that end in `#### <number>` at all, right or wrong "
            "(GSM8K's format adoption, points of %): where exact match sits near the floor, adoption is what "
            "training measurably changes. The interval needs each run's per-row adoption (`per_example_format` in "
            "`p2d_eval.json`); a dash where a run's record predates it.",
            "",
            md_table(HEADER, format_rows),
        ]
    return "\n".join(lines)
