"""``p2d-sweep``: run a grid of LLaMA-Factory YAMLs where they are not finished, then write the paper's tables.

For every run YAML (files, folders searched recursively, or globs), in an order where a run that another one
reads (its ``p2d_heads_file`` or ``p2d_aer_reference``) comes first:

* finished (``p2d_eval.json`` and ``p2d_aer.json`` in its ``output_dir``; a tuning run needs only
  ``p2d_eval.json``): skipped;
* trained, with predictions (``generated_predictions.jsonl``) but no ``p2d_eval.json``: ``p2d-eval <output_dir>``;
* otherwise: ``llamafactory-cli train <yaml>``, then ``p2d-eval <output_dir>``.

The children run in the current environment (``FORCE_TORCHRUN=1`` is added for DeepSpeed runs that do not set
it) and their output streams through. A failing run stops the sweep, named, unless ``--keep-going``; runs that
need a failed run are then skipped. The full fine-tuning run on the full data is its own t_FFT: when it has no
``p2d_aer.json`` (the plugin's timing callback only joins runs that use a P2D feature), its AER is 1 by
definition, once its ``train_results.json`` exists.

The results go to ``--report-dir``, each value the mean ± sample std over the seeds of a cell that have it:
``results.md`` (Tables 1-2 per model, Tables 3, 4 and 21 where the grid has them, the stability across seeds and
the missing runs), ``results.csv`` (the Table 1-2 rows, with per-seed values), ``aer_vs_perf.png`` (Fig. 1, with
error bars) and ``stability.md`` (overlap of the selected heads and examples across seeds). Tuning runs (an
``output_dir`` named ``tune__...``, or an ``eval_dataset`` of ``*_val`` splits) never enter these: they get
``tuning.md``, ``tuning.csv`` and ``tuning.png``; a tuning run on a ``*_test`` split, or on a validation split
of fewer than 32 rows, is refused before anything runs. Every row's method comes from the YAML's keys (``p2d_data_selection``,
``finetuning_type``, ``p2d_head_selection``); unknown names fail before anything runs. The commands can be
replaced (tests, wrappers) with ``--llamafactory-cli`` / ``--p2d-eval`` or the environment variables
``P2D_SWEEP_LLAMAFACTORY_CLI`` / ``P2D_SWEEP_P2D_EVAL``.

``runs`` reads the YAMLs into runs, ``runner`` trains and evaluates them, ``tables``, ``figure``, ``stability``
and ``tuning`` write the report (``stats`` holds their shared pieces), ``cli`` is the command line. Torch-free: AER and training times are read with
:mod:`p2d_llamafactory.report.aer`.
"""

from ...files import EVAL_FILE, PREDICTIONS_FILE
from .cli import DEFAULT_REPORT_DIR, main
from .figure import plot_aer_vs_perf
from .runner import CLI_ENV, EVAL_ENV, SweepOutcome, preflight, run_sweep
from .runs import (
    MIN_VAL_ROWS,
    TUNING_PREFIX,
    Run,
    SweepError,
    aer_of,
    check_validation_splits,
    classify,
    count_rows,
    is_finished,
    is_trained,
    load_runs,
    order_runs,
)
from .stability import mean_pairwise_jaccard, stability_report, stability_rows
from .tables import LOCK_AND_KEY_ROWS, ResultCell, Row, build_report, collect, main_rows, write_report
from .tuning import build_tuning, collect_tuning, plot_tuning, write_tuning_report


__all__ = [
    "CLI_ENV",
    "DEFAULT_REPORT_DIR",
    "EVAL_ENV",
    "EVAL_FILE",
    "LOCK_AND_KEY_ROWS",
    "MIN_VAL_ROWS",
    "PREDICTIONS_FILE",
    "TUNING_PREFIX",
    "ResultCell",
    "Row",
    "Run",
    "SweepError",
    "SweepOutcome",
    "aer_of",
    "build_report",
    "build_tuning",
    "check_validation_splits",
    "classify",
    "collect",
    "collect_tuning",
    "count_rows",
    "is_finished",
    "is_trained",
    "load_runs",
    "main",
    "main_rows",
    "mean_pairwise_jaccard",
    "order_runs",
    "plot_aer_vs_perf",
    "plot_tuning",
    "preflight",
    "run_sweep",
    "stability_report",
    "stability_rows",
    "write_report",
    "write_tuning_report",
]
