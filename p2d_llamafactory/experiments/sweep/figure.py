"""Fig. 1 of the report: AER against performance, a colour per selection method, a marker per adaptation, with
error bars (std over seeds of Perf. and of AER) where a cell has two or more seeds."""

from pathlib import Path
from typing import Any

from ... import methods
from ...io import pyplot, save_figure


def _marker(adaptation: str) -> str:
    method = methods.ADAPTATIONS.get(adaptation)
    return method.marker if method is not None else "o"


def _plot_panel(ax: Any, points: list[tuple]) -> None:
    """One (model, dataset) panel: the finished cells, dashed lines through each selection's variants.

    A point is (selection, adaptation, aer, perf, aer_std, perf_std); the stds are None below two seeds."""
    for selection, method in methods.SELECTION_BY_VALUE.items():
        mine = [p for p in points if p[0] == selection]
        if not mine:
            continue
        color = method.color
        if len(mine) > 1:  # the adaptation variants of one selection method, left to right
            line = sorted(mine, key=lambda p: p[2])
            ax.plot([p[2] for p in line], [p[3] for p in line], "--", color=color, linewidth=1, alpha=0.7)
        for _, adaptation, aer, perf, *stds in mine:
            aer_std, perf_std = (list(stds) + [None, None])[:2]
            if aer_std is not None or perf_std is not None:
                ax.errorbar(
                    aer,
                    perf,
                    xerr=aer_std,
                    yerr=perf_std,
                    fmt="none",
                    ecolor=color,
                    elinewidth=1,
                    capsize=3,
                    alpha=0.8,
                    zorder=2,
                )
            pipeline = selection == "p2d" and adaptation == "p2d_heads"
            ax.scatter(
                aer,
                perf,
                marker=_marker(adaptation),
                s=260 if pipeline else 60 if adaptation == "p2d_heads" else 36,
                color="gold" if pipeline else color,
                edgecolors=color if pipeline else "none",
                linewidths=1.5,
                zorder=3,
            )
            if pipeline:
                ax.annotate("P2D", (aer, perf), textcoords="offset points", xytext=(8, 6), fontsize=9)
    if not points:
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes, color="gray")


def _legend_handles() -> list[Any]:
    from matplotlib.lines import Line2D

    return [
        Line2D([], [], color=m.color, linestyle="--", label=m.short_label) for m in methods.SELECTION_BY_VALUE.values()
    ] + [
        Line2D([], [], color="black", marker=m.marker, linestyle="none", label=m.short_label)
        for m in (methods.ADAPTATIONS[a] for a in methods.TABLE1_ADAPTATIONS)
    ]


def plot_aer_vs_perf(figure: dict[str, Any], path: Path) -> None:
    """Fig. 1: AER (x) against Perf. (y), one marker per cell, dashed lines through each selection's variants."""
    plt = pyplot()
    models = figure["models"] or ["(no runs)"]
    ncols = max([len(figure["datasets"].get(m, [])) for m in models] + [1])
    fig, axes = plt.subplots(len(models), ncols, figsize=(4.2 * ncols, 3.6 * len(models)), squeeze=False)
    for i, model in enumerate(models):
        datasets = figure["datasets"].get(model, [])
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(datasets):
                ax.axis("off")
                continue
            dataset = datasets[j]
            points = [p for p in figure["points"].get((model, dataset), []) if p[2] is not None and p[3] is not None]
            _plot_panel(ax, points)
            ax.set_title(f"{model} · {methods.DATASET_LABELS.get(dataset, dataset)}", fontsize=10)
            ax.set_xlabel("AER (lower is better)")
            ax.set_ylabel("Perf. (%)")
            ax.grid(alpha=0.3)
        if not datasets:
            axes[i][0].axis("off")
            axes[i][0].text(0.5, 0.5, "no runs", ha="center", va="center", transform=axes[i][0].transAxes)
    handles = _legend_handles()
    fig.legend(handles=handles, loc="lower center", ncol=(len(handles) + 1) // 2, fontsize=8, frameon=False)
    fig.suptitle("AER vs. performance: selection methods (colour), adaptation variants (marker)", fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 0.96))
    save_figure(fig, path, bbox_inches="tight")
