"""Stability across seeds (the paper's Table 8 view): how much the selected heads and examples overlap.

For every cell with two or more finished seeds: the mean pairwise Jaccard index of the selected ``[layer, head]``
pairs (each run's own ``p2d_heads.json``, else the one its ``p2d_heads_file`` points to) and of the selected
example indices (``selected`` of each run's ``p2d_data_scores.json``). Written as ``stability.md`` and as a
section of ``results.md``.
"""

import itertools
from pathlib import Path

from ... import methods
from ...files import HEADS_FILE, SCORES_FILE, read_record
from .runs import Run, is_finished, percent
from .stats import DASH, fmt, md_table


def jaccard(a: frozenset, b: frozenset) -> float:
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def mean_pairwise_jaccard(sets: list[frozenset]) -> float | None:
    """Mean Jaccard index over all pairs; None below two sets."""
    pairs = list(itertools.combinations(sets, 2))
    return sum(jaccard(a, b) for a, b in pairs) / len(pairs) if pairs else None


def selected_heads(run: Run) -> frozenset | None:
    """The run's selected (layer, head) pairs: its own p2d_heads.json, else its p2d_heads_file; None if neither."""
    paths = [run.out / HEADS_FILE]
    if run.config.get("p2d_heads_file"):
        paths.append(Path(str(run.config["p2d_heads_file"])))
    for path in paths:
        record = read_record(path)
        if record is not None and isinstance(record.get("selected"), list):
            try:
                return frozenset((int(layer), int(head)) for layer, head in record["selected"])
            except (TypeError, ValueError):
                return None
    return None


def selected_examples(run: Run) -> frozenset | None:
    """The run's selected training examples (indices of p2d_data_scores.json); None without that file."""
    record = read_record(run.out / SCORES_FILE)
    if record is None or not isinstance(record.get("selected"), list):
        return None
    try:
        return frozenset(int(index) for index in record["selected"])
    except (TypeError, ValueError):
        return None


def _label(run: Run) -> str:
    selection = methods.SELECTION_BY_VALUE.get(run.selection)
    adaptation = methods.ADAPTATIONS.get(run.adaptation)
    return (
        f"{selection.label if selection else run.selection} "
        f"{adaptation.label if adaptation else '+ ' + run.adaptation}"
    )


def _overlap(values: list[frozenset | None]) -> str:
    present = [value for value in values if value is not None]
    overlap = mean_pairwise_jaccard(present)
    if overlap is None:
        return DASH
    return fmt(overlap) + (f" ({len(present)} of {len(values)} seeds)" if len(present) < len(values) else "")


def stability_rows(runs: list[Run]) -> list[list[str]]:
    """One row per cell with two or more finished seeds."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        if not run.tuning and is_finished(run):
            groups.setdefault(run.key, []).append(run)
    rows = []
    for group in groups.values():
        if len(group) < 2:
            continue
        group = sorted(group, key=lambda run: run.seed)
        first = group[0]
        rows.append(
            [
                first.model,
                methods.DATASET_LABELS.get(first.dataset, first.dataset),
                _label(first),
                percent(first.rho_d),
                first.rho_p_label,
                ", ".join(str(run.seed) for run in group),
                _overlap([selected_heads(run) for run in group]),
                _overlap([selected_examples(run) for run in group]),
            ]
        )
    return rows


HEADER = ["Model", "Dataset", "Method", "ρ_D", "ρ_P", "Seeds", "Heads overlap", "Examples overlap"]


def stability_section(runs: list[Run], level: str = "#") -> str:
    """The stability table under a heading of ``level``; a sentence when no cell has two finished seeds."""
    lines = [
        f"{level} Stability across seeds (Table 8)",
        "",
        "Mean pairwise Jaccard index, over a cell's finished seeds, of the selected heads (`selected` of "
        f"`{HEADS_FILE}`, the run's own or its `p2d_heads_file`) and of the selected training examples "
        f"(`selected` of `{SCORES_FILE}`); 1 = the same set on every seed. {DASH} : fewer than two seeds "
        "record one (full / LoRA training without a heads file selects no heads, the full data no examples).",
        "",
    ]
    rows = stability_rows(runs)
    lines.append(md_table(HEADER, rows) if rows else "No cell has two or more finished seeds yet.")
    return "\n".join(lines)


def stability_report(runs: list[Run]) -> str:
    """stability.md."""
    return stability_section(runs, level="#") + "\n"
