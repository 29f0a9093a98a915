"""Stage II outputs: the selected subset, selected-vs-all statistics (Table 10, Fig. 4), timings."""

import math
import random
import statistics
from pathlib import Path
from typing import Any

from ..files import HISTOGRAM_FILE, SELECTED_FILE, STATS_FILE
from ..io import atomic_write_json, pyplot, save_figure
from .baselines import response_losses
from .select import Selection, SelectionInputs


SHAREGPT_ROLES = {"user": "human", "assistant": "gpt", "observation": "observation", "function": "function_call"}


def sharegpt_record(
    messages: list[dict[str, Any]], system: str | None = None, tools: str | None = None
) -> dict[str, Any]:
    """Chat ``messages`` (``role``/``content``) as a record of LLaMA-Factory's sharegpt format, as
    p2d_data_selected.json lists the selected examples."""
    turns = [{"from": SHAREGPT_ROLES.get(m["role"], m["role"]), "value": m["content"]} for m in messages]
    return {"conversations": turns, **({"system": system} if system else {}), **({"tools": tools} if tools else {})}


def _summary(values: list[float]) -> dict[str, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return {"count": 0}
    return {"count": len(values), "mean": statistics.fmean(values), "median": statistics.median(values)}


def perplexities(inputs: SelectionInputs, indices: list[int], batch_size: int) -> list[float]:
    """Perplexity of each example's response given its prompt, under the base model (Fig. 4)."""
    examples = [inputs.examples[i] for i in indices]
    losses = response_losses(
        inputs.load_model(),
        inputs.tokenizer,
        inputs.frame,
        examples,
        True,
        batch_size,
        inputs.progress,
        "P2D perplexity",
    )
    return [math.exp(loss) for loss in losses]


def selection_stats(inputs: SelectionInputs, selection: Selection, ppl_samples: int, batch_size: int, seed: int):
    lengths = [float(n) for n in inputs.token_lengths]
    stats: dict[str, Any] = {
        "method": selection.method,
        "num_examples": len(inputs.examples),
        "num_selected": len(selection.selected),
        "num_skipped_too_long": len(selection.skipped),
        "tokens_all": _summary(lengths),
        "tokens_selected": _summary([lengths[i] for i in selection.selected]),
    }
    ppl: dict[str, list[float]] = {}
    if ppl_samples > 0:
        rng = random.Random(seed)
        usable = [i for i in range(len(lengths)) if i not in set(selection.skipped)]
        for name, pool in (("all", usable), ("selected", selection.selected)):
            sample = sorted(rng.sample(pool, min(ppl_samples, len(pool))))
            ppl[name] = perplexities(inputs, sample, batch_size)
            stats[f"perplexity_{name}"] = {**_summary(ppl[name]), "sampled": len(sample)}
    return stats, ppl


def plot_selection(inputs: SelectionInputs, selection: Selection, ppl: dict[str, list[float]], path: Path) -> None:
    plt = pyplot()
    panels = 2 if ppl else 1
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.5), squeeze=False)
    lengths = inputs.token_lengths
    axes[0][0].hist(lengths, bins=30, alpha=0.5, density=True, label="all")
    axes[0][0].hist([lengths[i] for i in selection.selected], bins=30, alpha=0.6, density=True, label="selected")
    axes[0][0].set_xlabel("tokens (prompt + response)")
    if ppl:
        axes[0][1].hist(ppl["all"], bins=30, alpha=0.5, density=True, label="all (sample)")
        axes[0][1].hist(ppl["selected"], bins=30, alpha=0.6, density=True, label="selected (sample)")
        axes[0][1].set_xlabel("perplexity under the base model")
    for ax in axes[0]:
        ax.set_ylabel("density")
        ax.legend()
    fig.suptitle(f"{selection.method}: {len(selection.selected)} of {len(lengths)} examples selected", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def write_selection_report(
    inputs: SelectionInputs,
    selection: Selection,
    subset: list[dict[str, Any]],
    ppl_samples: int = 100,
    batch_size: int = 8,
    seed: int = 42,
) -> None:
    out = inputs.output_dir
    atomic_write_json(out / SELECTED_FILE, subset)
    stats, ppl = selection_stats(inputs, selection, ppl_samples, batch_size, seed)
    stats["dataset_info"] = {"p2d_selected": {"file_name": str(out / SELECTED_FILE), "formatting": "sharegpt"}}
    atomic_write_json(out / STATS_FILE, stats)
    plot_selection(inputs, selection, ppl, out / HISTOGRAM_FILE)
