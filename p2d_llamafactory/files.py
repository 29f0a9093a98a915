"""The names of the files a run writes into its output dir, and the one reader of a result record.

Torch-free, so the offline tools (sweep, grid, evaluation) read runs back with the same names the stages write.
"""

from pathlib import Path
from typing import Any

from .io import read_json


# stage I
HEADS_FILE = "p2d_heads.json"  # the head set (also in every P2D adapter and checkpoint)
HEATMAP_FILE = "p2d_heads.png"
LOFIT_HEADS_FILE = "p2d_lofit_heads.json"  # LoFiT's step 1 (finetuning_type: lofit), same format
# stage II
SCORES_FILE = "p2d_data_scores.json"
PROGRESS_FILE = "p2d_data_probe.partial.jsonl"
SELECTED_FILE = "p2d_data_selected.json"
STATS_FILE = "p2d_data_stats.json"
HISTOGRAM_FILE = "p2d_data_hist.png"
# stage III and the cost
RUN_FILE = "p2d_run.json"  # what stage III trained: heads, slices, share of the weights, learning rate
TIMINGS_FILE = "p2d_timings.json"
AER_FILE = "p2d_aer.json"
TRAINING_STATE_FILE = "p2d_training_time.json"  # in each checkpoint: training seconds up to its step
# evaluation
PREDICTIONS_FILE = "generated_predictions.jsonl"  # LLaMA-Factory's do_predict output
EVAL_FILE = "p2d_eval.json"


def read_record(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing, unreadable or not an object."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
