"""The tuning report: learning-rate sweeps scored on a validation split, never in the paper's tables.

For the tuning runs of a sweep (:mod:`.runs` says which runs are), ``tuning.md`` holds one table per (model,
dataset): a row per method, a column per learning rate, the validation score in each cell, the best rate of each
method in bold, and the number of validation rows; ``tuning.csv`` one row per run (model, dataset, adaptation,
lr, score, metric, val_rows); ``tuning.png`` score against learning rate, log-x, one panel per (model, dataset),
a colour and marker per method from :mod:`p2d_llamafactory.methods`.

The rate of a head adaptation is the slices' own rate, ``learning_rate x p2d_head_lr_scale`` (p2d-grid's tuning
cells set the scale to 1, so it is ``learning_rate``).
"""

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import methods
from ...io import atomic_write_text, pyplot, save_figure
from .runs import Run, is_finished, percent, validation_rows
from .stats import DASH, fmt, fmt_stat, md_table, mean_std, metric_label, missing_runs_lines, run_score


CSV_HEADER = ("model", "dataset", "adaptation", "lr", "score", "metric", "val_rows")


@dataclass
class TuningRow:
    """One method of one (model, dataset) sweep: learning rate -> the scores of its runs."""

    selection: str
    rho_d: float
    adaptation: str
    scores: dict[float, list[float]] = field(default_factory=dict)
    listed: dict[float, int] = field(default_factory=dict)

    def mean(self, lr: float) -> tuple[float | None, float | None]:
        return mean_std(self.scores.get(lr, []))

    @property
    def best(self) -> float | None:
        """The rate with the highest mean score (the lowest rate on a tie); None when none has a score."""
        scored = [(mean, -lr, lr) for lr in self.scores if (mean := self.mean(lr)[0]) is not None]
        return max(scored)[2] if scored else None

    def label(self, with_data: bool) -> str:
        method = methods.ADAPTATIONS.get(self.adaptation)
        label = method.short_label if method is not None else self.adaptation
        if not with_data:
            return label
        selection = methods.SELECTION_BY_VALUE.get(self.selection)
        return f"{selection.short_label if selection else self.selection} {percent(self.rho_d)} · {label}"


@dataclass
class TuningGroup:
    model: str
    dataset: str
    rows: dict[tuple, TuningRow] = field(default_factory=dict)
    rates: set[float] = field(default_factory=set)
    metrics: set[str] = field(default_factory=set)
    val_rows: set[int] = field(default_factory=set)
    eval_datasets: set[str] = field(default_factory=set)


def _lr(run: Run) -> float:
    return float(f"{run.lr:.6g}") if run.lr is not None else math.nan


def _val_rows(run: Run, predictions: int | None) -> int | None:
    """The rows the score was taken over: p2d-eval's prediction count, else the rows of the split's file."""
    return predictions if predictions is not None else validation_rows(run)


def collect_tuning(runs: list[Run]) -> list[TuningGroup]:
    """The tuning runs grouped by (model, dataset), rows in the methods table's order."""
    groups: dict[tuple[str, str], TuningGroup] = {}
    order = list(methods.ADAPTATIONS)
    for run in runs:
        group = groups.setdefault((run.model, run.dataset), TuningGroup(run.model, run.dataset))
        key = (run.selection, round(run.rho_d, 6), run.adaptation)
        row = group.rows.setdefault(key, TuningRow(run.selection, run.rho_d, run.adaptation))
        lr = _lr(run)
        group.rates.add(lr)
        group.eval_datasets.update(run.eval_datasets)
        row.listed[lr] = row.listed.get(lr, 0) + 1
        row.scores.setdefault(lr, [])
        score, metric, predictions = run_score(run)
        if score is not None:
            row.scores[lr].append(score)
            if metric:
                group.metrics.add(metric)
        rows = _val_rows(run, predictions)
        if rows is not None:
            group.val_rows.add(rows)
    for group in groups.values():
        group.rows = dict(
            sorted(
                group.rows.items(),
                key=lambda item: (
                    list(methods.SELECTION_BY_VALUE).index(item[0][0])
                    if item[0][0] in methods.SELECTION_BY_VALUE
                    else 99,
                    item[0][1],
                    order.index(item[0][2]) if item[0][2] in order else 99,
                ),
            )
        )
    return sorted(
        groups.values(),
        key=lambda g: (
            g.model,
            list(methods.DATASET_LABELS).index(g.dataset) if g.dataset in methods.DATASET_LABELS else 99,
        ),
    )


def _rows_text(values: set[int]) -> str:
    if not values:
        return "rows unknown"
    low, high = min(values), max(values)
    return f"{low} rows" if low == high else f"{low}–{high} rows"


def _group_table(group: TuningGroup) -> str:
    rates = sorted(group.rates)
    with_data = len({(row.selection, round(row.rho_d, 6)) for row in group.rows.values()}) > 1
    table = []
    for row in group.rows.values():
        best = row.best
        cells = []
        for lr in rates:
            if lr not in row.listed:
                cells.append("")
                continue
            mean, std = row.mean(lr)
            text = fmt_stat(mean, std, len(row.scores.get(lr, [])), row.listed[lr])
            cells.append(f"**{text}**" if best is not None and lr == best else text)
        table.append([row.label(with_data)] + cells + [f"{best:g}" if best is not None else DASH])
    return md_table(["Method"] + [f"lr {lr:g}" for lr in rates] + ["Best lr"], table)


def build_tuning(runs: list[Run]) -> tuple[str, str, list[TuningGroup]]:
    """(tuning.md, tuning.csv, the groups for tuning.png)."""
    groups = collect_tuning(runs)
    finished = sum(1 for run in runs if is_finished(run))
    md = [
        "# Learning-rate tuning",
        "",
        f"Written by `p2d-sweep` from {len(runs)} tuning run(s), {finished} finished. Each cell is the score "
        "(`p2d_eval.json`, in %) on the validation split that the run evaluates on (`eval_dataset`, carved from "
        "the training pool; never the test split); the best learning rate of each method is in **bold**. For "
        "head adaptations the rate is the slices' own (`learning_rate` × `p2d_head_lr_scale`). These runs are "
        f"not in the paper's tables. {DASH} : not finished.",
    ]
    for group in groups:
        metrics = ", ".join(metric_label(m) for m in sorted(group.metrics)) or "score"
        regimes = sorted({(row.selection, row.rho_d) for row in group.rows.values()})
        data = "; ".join(
            f"{methods.SELECTION_BY_VALUE[s].label if s in methods.SELECTION_BY_VALUE else s}, ρ_D = {percent(d)}"
            for s, d in regimes
        )
        splits = ", ".join(f"`{name}`" for name in sorted(group.eval_datasets))
        md += [
            "",
            f"## {group.model} · {methods.DATASET_LABELS.get(group.dataset, group.dataset)}",
            "",
            f"Validation split {splits}: {_rows_text(group.val_rows)}. Metric: {metrics}. Data: {data}.",
            "",
            _group_table(group),
        ]
    missing = missing_runs_lines(runs)
    if missing:
        md += ["", "## Missing runs", ""] + missing

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for run in runs:
        score, metric, predictions = run_score(run)
        rows = _val_rows(run, predictions)
        writer.writerow(
            [
                run.model,
                run.dataset,
                run.adaptation,
                f"{run.lr:g}" if run.lr is not None else DASH,
                fmt(score, 4),
                metric or DASH,
                str(rows) if rows is not None else DASH,
            ]
        )
    return "\n".join(md) + "\n", buffer.getvalue(), groups


def plot_tuning(groups: list[TuningGroup], path: Path) -> None:
    """Score against learning rate (log-x), one panel per (model, dataset), a line per method."""
    plt = pyplot()
    panels = groups or [None]
    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.8 * nrows), squeeze=False)
    handles: dict[str, Any] = {}
    for index, ax in enumerate(ax for row in axes for ax in row):
        group = panels[index] if index < len(panels) else None
        if group is None:
            ax.axis("off")
            if index == 0:
                ax.text(0.5, 0.5, "no tuning runs", ha="center", va="center", transform=ax.transAxes)
            continue
        with_data = len({(row.selection, round(row.rho_d, 6)) for row in group.rows.values()}) > 1
        for row in group.rows.values():
            method = methods.ADAPTATIONS.get(row.adaptation)
            color = method.color if method is not None else "black"
            marker = method.marker if method is not None else "o"
            points = [(lr, *row.mean(lr)) for lr in sorted(row.scores) if row.mean(lr)[0] is not None]
            if not points:
                continue
            label = row.label(with_data)
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            errors = [p[2] if p[2] is not None else 0.0 for p in points]
            container = ax.errorbar(
                xs,
                ys,
                yerr=errors if any(errors) else None,
                color=color,
                marker=marker,
                markersize=7,
                capsize=3,
                linewidth=1.2,
                label=label,
            )
            handles.setdefault(label, container)
            best = row.best
            if best is not None:
                ax.scatter(
                    [best], [row.mean(best)[0]], s=180, facecolors="none", edgecolors=color, linewidths=1.5, zorder=4
                )
        ax.set_xscale("log")
        metrics = ", ".join(metric_label(m) for m in sorted(group.metrics)) or "score"
        ax.set_title(
            f"{group.model} · {methods.DATASET_LABELS.get(group.dataset, group.dataset)} "
            f"({_rows_text(group.val_rows)})",
            fontsize=10,
        )
        ax.set_xlabel("learning rate (head adaptations: the slices' rate)")
        ax.set_ylabel(f"{metrics} (%) on the validation split")
        ax.grid(alpha=0.3, which="both")
    if handles:
        fig.legend(
            list(handles.values()),
            list(handles),
            loc="lower center",
            ncol=min(len(handles), 4),
            fontsize=8,
            frameon=False,
        )
    fig.suptitle("Learning-rate tuning on the validation split (circled: best rate of each method)", fontsize=11)
    fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 0.95))
    save_figure(fig, path, bbox_inches="tight")


def write_tuning_report(runs: list[Run], report_dir: Path) -> list[Path]:
    """Write tuning.md, tuning.csv and tuning.png into ``report_dir``."""
    markdown, table, groups = build_tuning(runs)
    paths = [
        atomic_write_text(report_dir / "tuning.md", markdown),
        atomic_write_text(report_dir / "tuning.csv", table),
    ]
    plot_tuning(groups, report_dir / "tuning.png")
    paths.append(report_dir / "tuning.png")
    return paths
