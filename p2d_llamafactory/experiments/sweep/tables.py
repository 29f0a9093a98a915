"""The sweep's report: the runs' results per cell, mean ± std over its seeds, in the paper's tables.

``results.md`` holds Tables 1-2 per model, Tables 3, 4 and 21 where the grid has them, the paired differences of
the questions the results answer (:mod:`.paired`), the stability across seeds (:mod:`.stability`, also
``stability.md``) and the runs that did not finish; ``results.csv`` the Table 1-2 rows,
``aer_vs_perf.png`` Fig. 1 (:mod:`.figure`). Tuning runs never enter them: they get ``tuning.md``, ``tuning.csv``
and ``tuning.png`` (:mod:`.tuning`). Blocks, rows and their labels come from :mod:`p2d_llamafactory.methods`.

Each value is the mean over the seeds (runs of a cell) that have it, ``± std`` (sample, n - 1) when there are
two or more, and ``(n=k)`` when fewer than the cell's listed seeds have it. A seed whose run has not finished is
listed under "Missing runs", never averaged in.
"""

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import methods
from ...io import atomic_write_text
from .figure import plot_aer_vs_perf
from .paired import paired_section
from .runs import Run, aer_of, is_finished, percent
from .stability import stability_report, stability_section
from .stats import (
    DASH,
    eval_record,
    fmt,
    fmt_stat,
    md_table,
    mean_std,
    metric_label,
    missing_runs_lines,
)
from .tuning import write_tuning_report


# Table 21: (data subset, head subset)
LOCK_AND_KEY_ROWS = (
    ("p2d", "random_heads"),
    ("random", "p2d_heads"),
    ("ifd", "p2d_heads"),
    ("nuggets", "p2d_heads"),
    ("data_whisperer", "p2d_heads"),
    ("p2d", "p2d_heads"),
)


@dataclass
class ResultCell:
    """One (model, dataset, selection, adaptation, rho_D, rho_P) over its runs (seeds): mean, sample std, counts."""

    perf: float | None = None  # mean over the seeds with a score
    aer: float | None = None  # mean over the seeds with an AER
    metric: str | None = None
    runs: int = 0  # seeds with a score (n of the Perf. column)
    perf_std: float | None = None  # sample std (n - 1); None below two seeds
    aer_std: float | None = None
    aer_runs: int = 0  # seeds with an AER
    listed: int = 0  # seeds (runs) the sweep lists for the cell
    per_seed: list[tuple[int, float | None, float | None]] = field(default_factory=list)  # (seed, perf, aer)
    per_example: dict[int, list[float]] = field(default_factory=dict)  # seed -> per-row scores (points)
    format_per_seed: dict[int, float] = field(default_factory=dict)  # exact match: seed -> format adoption (%)
    format_per_example: dict[int, list[float]] = field(default_factory=dict)  # seed -> per-row adoption (100/0)

    @property
    def n(self) -> int:
        return self.runs

    @property
    def format_adoption(self) -> float | None:
        """Exact match: the mean % of answers ending in "#### N" over the seeds that record it."""
        return mean_std(list(self.format_per_seed.values()))[0]


def collect(runs: list[Run]) -> dict[tuple, ResultCell]:
    """Cell key -> its seeds' values (finished values only; a missing one is never counted as zero)."""
    seeds: dict[tuple, list[tuple[int, float | None, float | None, str | None]]] = {}
    adoptions: dict[tuple, dict[int, float]] = {}
    rows: dict[tuple, dict[int, list[float]]] = {}
    format_rows: dict[tuple, dict[int, list[float]]] = {}
    for run in runs:
        record = eval_record(run)
        aer, _ = aer_of(run)
        seeds.setdefault(run.key, []).append((run.seed, record.score, aer, record.metric))
        if record.per_example:
            rows.setdefault(run.key, {})[run.seed] = record.per_example
        if record.format_adoption is not None:
            adoptions.setdefault(run.key, {})[run.seed] = record.format_adoption
        if record.per_example_format:
            format_rows.setdefault(run.key, {})[run.seed] = record.per_example_format
    cells = {}
    for key, entries in seeds.items():
        perfs = [perf for _, perf, _, _ in entries if perf is not None]
        aers = [aer for _, _, aer, _ in entries if aer is not None]
        perf, perf_std = mean_std(perfs)
        aer, aer_std = mean_std(aers)
        metrics = [metric for _, perf, _, metric in entries if perf is not None and metric]
        cells[key] = ResultCell(
            perf=perf,
            aer=aer,
            metric=metrics[0] if metrics else None,
            runs=len(perfs),
            perf_std=perf_std,
            aer_std=aer_std,
            aer_runs=len(aers),
            listed=len(entries),
            per_seed=sorted((seed, perf, aer) for seed, perf, aer, _ in entries),
            per_example=rows.get(key, {}),
            format_per_seed=adoptions.get(key, {}),
            format_per_example=format_rows.get(key, {}),
        )
    return cells


def _perf(cell: "ResultCell") -> str:
    text = fmt_stat(cell.perf, cell.perf_std, cell.runs, cell.listed)
    return text if cell.format_adoption is None else f"{text} [fmt {cell.format_adoption:.0f}%]"


def _aer(cell: "ResultCell") -> str:
    return fmt_stat(cell.aer, cell.aer_std, cell.aer_runs, cell.listed)


def _ordered(values, preferred) -> list:
    values = list(dict.fromkeys(values))
    return [v for v in preferred if v in values] + [v for v in values if v not in preferred]


@dataclass
class Row:
    block: str  # selection
    adaptation: str
    rho_d: str
    rho_p: str
    values: dict[str, ResultCell]  # dataset -> cell

    @property
    def label(self) -> str:
        method = methods.ADAPTATIONS.get(self.adaptation)
        return method.label if method is not None else f"+ {self.adaptation}"


def _rank(label: str) -> int:
    return int(label[2:]) if label.startswith("r=") and label[2:].isdigit() else 0


def _variants(matching: list[Run], rho_p: float) -> list[tuple[str, str]]:
    """(adaptation, rho_P label) of a block's rows: Table 1's always, the head-scorer ablations where runs exist."""
    variants: list[tuple[str, str]] = []
    for adaptation in methods.ADAPTATIONS:
        if adaptation == "full":
            variants.append((adaptation, "100%"))
        elif adaptation == "lora":  # one row per rank found (r=128 in the paper)
            ranks = sorted({run.rho_p_label for run in matching if run.adaptation == "lora"}, key=_rank)
            variants += [(adaptation, label) for label in ranks or [DASH]]
        elif adaptation in methods.TABLE1_ADAPTATIONS or any(
            run.adaptation == adaptation and math.isclose(run.rho_p, rho_p) for run in matching
        ):
            variants.append((adaptation, percent(rho_p)))
    return variants


def main_rows(
    runs: list[Run], cells: dict[tuple, ResultCell], model: str, datasets: list[str], rho_d: float, rho_p: float
) -> list[tuple[str, list[Row]]]:
    """Table 1-2 rows of one model: for each selection block, its adaptation rows at the main budget."""
    blocks: list[tuple[str, list[Row]]] = []
    for selection in methods.SELECTION_BY_VALUE:
        target_d = 1.0 if selection == "none" else rho_d
        matching = [
            run
            for run in runs
            if run.model == model and run.selection == selection and math.isclose(run.rho_d, target_d)
        ]
        rows = [
            Row(
                selection,
                adaptation,
                percent(target_d),
                label,
                {
                    ds: cells.get((model, ds, selection, adaptation, round(target_d, 6), label), ResultCell())
                    for ds in datasets
                },
            )
            for adaptation, label in _variants(matching, rho_p)
        ]
        blocks.append((selection, rows))
    return blocks


def _average(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def _dataset_header(dataset: str, runs: list[Run], cells: dict[tuple, ResultCell]) -> str:
    metrics = {cell.metric for key, cell in cells.items() if key[1] == dataset and cell.metric}
    label = methods.DATASET_LABELS.get(dataset, dataset)
    return f"{label} ({', '.join(metric_label(m) for m in sorted(metrics))})" if metrics else label


def _ratio_rows(runs, cells, model, datasets, axis: str, rho_d: float, rho_p: float):
    """Table 3 (axis rho_d: P2D selection + P2D heads at rho_P) or Table 4 (axis rho_p: P2D selection at rho_D)."""
    points: dict[float, tuple] = {}
    if axis == "rho_d":
        points[1.0] = ("none", "p2d_heads", 1.0, percent(rho_p))
        for run in runs:
            if (run.model, run.selection, run.adaptation) == (model, "p2d", "p2d_heads") and math.isclose(
                run.rho_p, rho_p
            ):
                points.setdefault(run.rho_d, ("p2d", "p2d_heads", run.rho_d, percent(rho_p)))
        for value in (0.7, 0.5, 0.3, rho_d):
            points.setdefault(value, ("p2d", "p2d_heads", value, percent(rho_p)))
    else:
        points[1.0] = ("p2d", "full", rho_d, "100%")
        for run in runs:
            if (run.model, run.selection, run.adaptation) == (model, "p2d", "p2d_heads") and math.isclose(
                run.rho_d, rho_d
            ):
                points.setdefault(run.rho_p, ("p2d", "p2d_heads", rho_d, run.rho_p_label))
        for value in (0.7, 0.5, 0.3, rho_p):
            points.setdefault(value, ("p2d", "p2d_heads", rho_d, percent(value)))
    rows = []
    for value in sorted(points, reverse=True):
        selection, adaptation, d, p = points[value]
        label = percent(value) + (" (full parameters)" if axis == "rho_p" and adaptation == "full" else "")
        label += " (full dataset)" if axis == "rho_d" and selection == "none" else ""
        values = [cells.get((model, ds, selection, adaptation, round(d, 6), p), ResultCell()) for ds in datasets]
        rows.append([label] + [x for cell in values for x in (_perf(cell), _aer(cell))])
    return rows


def _lock_and_key_rows(cells, model, datasets, rho_d: float, rho_p: float):
    rows = []
    for selection, adaptation in LOCK_AND_KEY_ROWS:
        values = [
            cells.get((model, ds, selection, adaptation, round(rho_d, 6), percent(rho_p)), ResultCell())
            for ds in datasets
        ]
        data = methods.SELECTION_BY_VALUE[selection].short_label
        heads = "P2D" if adaptation == "p2d_heads" else "Random"
        rows.append([data, heads] + [_perf(cell) for cell in values])
    return rows


def _main_table(
    runs: list[Run],
    cells: dict[tuple, ResultCell],
    model: str,
    datasets: list[str],
    all_datasets: list[str],
    rho_d: float,
    rho_p: float,
    figure: dict[str, Any],
) -> tuple[list[list[str]], list[list[str]]]:
    """(Markdown rows, CSV rows) of one model's Tables 1-2; the figure gains the model's points."""
    table: list[list[str]] = []
    csv_rows: list[list[str]] = []
    for selection, rows in main_rows(runs, cells, model, datasets, rho_d, rho_p):
        table.append([f"**{methods.SELECTION_BY_VALUE[selection].label}**", "", ""] + [""] * (2 * len(datasets) + 1))
        for row in rows:
            perfs = [row.values[ds].perf for ds in datasets]
            table.append(
                [row.label, row.rho_d, row.rho_p]
                + [x for ds in datasets for x in (_perf(row.values[ds]), _aer(row.values[ds]))]
                + [fmt(_average(perfs))]
            )
            csv_rows.append(
                [model, methods.SELECTION_BY_VALUE[row.block].label, row.label, row.rho_d, row.rho_p]
                + [x for ds in all_datasets for x in _csv_values(row.values.get(ds))]
                + [fmt(_average(perfs), 4)]
            )
            for ds in datasets:
                cell = row.values[ds]
                figure["points"].setdefault((model, ds), []).append(
                    (row.block, row.adaptation, cell.aer, cell.perf, cell.aer_std, cell.perf_std)
                )
    return table, csv_rows


CSV_VALUES = ("perf_mean", "perf_std", "aer_mean", "aer_std", "n_seeds", "per_seed")


def _csv_values(cell: ResultCell | None) -> list[str]:
    """One dataset's results.csv columns (CSV_VALUES); per_seed: ``seed:perf`` pairs, ``;``-separated."""
    if cell is None:
        return [DASH] * 4 + ["0", ""]
    per_seed = ";".join(f"{seed}:{perf:.4f}" for seed, perf, _ in cell.per_seed if perf is not None)
    return [
        fmt(cell.perf, 4),
        fmt(cell.perf_std, 4),
        fmt(cell.aer, 4),
        fmt(cell.aer_std, 4),
        str(cell.runs),
        per_seed,
    ]


def build_report(runs: list[Run], rho_d: float, rho_p: float) -> tuple[str, str, dict]:
    """(results.md, results.csv, data for the figure) of the paper's runs; tuning runs are left out."""
    tuning = [run for run in runs if run.tuning]
    runs = [run for run in runs if not run.tuning]
    cells = collect(runs)
    models = list(dict.fromkeys(run.model for run in runs))
    all_datasets = _ordered((run.dataset for run in runs), list(methods.DATASET_LABELS))
    finished = sum(1 for run in runs if is_finished(run))
    md = [
        "# P2D results",
        "",
        f"Written by `p2d-sweep` from {len(runs)} run(s), {finished} finished. Perf.: exact match (GSM8K) or "
        "ROUGE-L (DialogSum, BioInstruct) in %, from `p2d_eval.json`; AER = (selection time + training time) / "
        "t_FFT (Eq. 1; lower is better), from `p2d_aer.json`. Values are mean ± sample std over the seeds of a "
        "cell that have them (just the value for one seed); (n=k): only k of the cell's seeds have the value, "
        f"the others are under Missing runs. {DASH} : no finished run. [fmt N%]: exact match only, the share of "
        "answers that end in `#### <number>` at all (GSM8K's format adoption), mean over the seeds.",
    ]
    if tuning:
        md += ["", f"{len(tuning)} tuning run(s) (validation split) are left out of these tables: see `tuning.md`."]
    csv_rows: list[list[str]] = []
    figure: dict[str, Any] = {"models": models, "datasets": {}, "points": {}}
    for model in models:
        datasets = _ordered((run.dataset for run in runs if run.model == model), list(methods.DATASET_LABELS))
        figure["datasets"][model] = datasets
        headers = [_dataset_header(ds, runs, cells) for ds in datasets]
        table, model_csv = _main_table(runs, cells, model, datasets, all_datasets, rho_d, rho_p, figure)
        csv_rows += model_csv
        header = ["Method", "ρ_D", "ρ_P"] + [f"{h} {k}" for h in headers for k in ("Perf.", "AER")] + ["Avg. Perf."]
        md += [
            "",
            f"## {model}",
            "",
            f"### Selection x adaptation (Tables 1-2): ρ_D = {percent(rho_d)}, ρ_P = {percent(rho_p)}",
            "",
            md_table(header, table),
        ]
        ratio_header = [f"{h} {k}" for h in headers for k in ("Perf.", "AER")]
        md += [
            "",
            f"### Data ratio ρ_D (Table 3): P2D selection + P2D heads, ρ_P = {percent(rho_p)}",
            "",
            md_table(["ρ_D"] + ratio_header, _ratio_rows(runs, cells, model, datasets, "rho_d", rho_d, rho_p)),
            "",
            f"### Head ratio ρ_P (Table 4): P2D selection, ρ_D = {percent(rho_d)}",
            "",
            md_table(["ρ_P"] + ratio_header, _ratio_rows(runs, cells, model, datasets, "rho_p", rho_d, rho_p)),
            "",
            f"### Lock-and-key (Table 21): (data subset, head subset) at ρ_D = {percent(rho_d)}, "
            f"ρ_P = {percent(rho_p)}; Perf.",
            "",
            md_table(["Data", "Heads"] + headers, _lock_and_key_rows(cells, model, datasets, rho_d, rho_p)),
        ]
    if not models:
        md += ["", "No runs."]
    else:
        md += ["", paired_section(cells, models, all_datasets, rho_d, rho_p), "", stability_section(runs, level="##")]
    missing = missing_runs_lines(runs)
    if missing:
        md += ["", "## Missing runs", "", "Seeds whose run has not finished; their cells average the others.", ""]
        md += missing
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["model", "block", "method", "rho_D", "rho_P"]
        + [f"{ds}_{k}" for ds in all_datasets for k in CSV_VALUES]
        + ["avg_perf"]
    )
    writer.writerows(csv_rows)
    return "\n".join(md) + "\n", buffer.getvalue(), figure


def write_report(runs: list[Run], report_dir: Path, rho_d: float, rho_p: float) -> list[Path]:
    """Write the report into ``report_dir``: results.md, results.csv, Fig. 1 (aer_vs_perf.png) and stability.md
    for the paper's runs; tuning.md, tuning.csv and tuning.png when tuning runs are among them. A sweep of tuning
    runs only writes the tuning files."""
    paper = [run for run in runs if not run.tuning]
    tuning = [run for run in runs if run.tuning]
    paths: list[Path] = []
    if paper or not tuning:
        markdown, table, figure = build_report(runs, rho_d, rho_p)
        paths += [
            atomic_write_text(report_dir / "results.md", markdown),
            atomic_write_text(report_dir / "results.csv", table),
        ]
        plot_aer_vs_perf(figure, report_dir / "aer_vs_perf.png")
        paths.append(report_dir / "aer_vs_perf.png")
        paths.append(atomic_write_text(report_dir / "stability.md", stability_report(paper)))
    if tuning:
        paths += write_tuning_report(tuning, report_dir)
    return paths
