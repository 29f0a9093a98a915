"""Alignment Efficiency Ratio (paper Eq. 1): AER = (selection time + training time) / t_FFT.

t_FFT is either measured (the training time of a full fine-tuning run on the full data) or estimated
(k timed full-parameter steps of the same model on the same hardware, extrapolated per token to the full
data and epochs). ``p2d_aer.json`` records the inputs so that anyone can recompute the ratio.

Torch-free: the offline tools (``p2d-sweep``) read the same files with the same functions.
"""

import logging
import math
from pathlib import Path
from typing import Any

from ..files import AER_FILE, RUN_FILE, TIMINGS_FILE, read_record
from ..io import atomic_write_json


logger = logging.getLogger(__name__)


INHERITED_PREFIX = "inherited_"  # p2d_timings.json keys of costs paid by another run (a heads file's stage I)
TRAIN_RESULTS_FILES = ("train_results.json", "all_results.json")  # LLaMA-Factory's, with train_runtime


def write_run_record(
    output_dir: str | Path,
    finetuning_type: str,
    head_set: Any,
    total_heads: int,
    head_modules: tuple[str, ...],
    trainable_params: int,
    total_params: int,
    learning_rate: float,
    lr_scale: float,
) -> None:
    """``p2d_run.json``: what stage III trains (heads, slices, weights share, the learning rate it trains at)."""
    record = {
        "finetuning_type": finetuning_type,
        "heads": len(head_set.selected),
        "total_heads": total_heads,
        "head_selection": head_set.method,
        "head_modules": list(head_modules),
        "trainable_params": trainable_params,
        "total_params": total_params,
        "trainable_share": trainable_params / total_params,
        "learning_rate": learning_rate,
        "p2d_head_lr_scale": lr_scale,
    }
    atomic_write_json(Path(output_dir) / RUN_FILE, record)


def read_timings(output_dir: str | Path) -> dict[str, float]:
    record = read_record(Path(output_dir) / TIMINGS_FILE) or {}
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    bad = sorted(key for key, value in record.items() if not number(value))
    if bad:
        logger.warning(
            "P2D: %s/%s holds no finite number for %s; those times are ignored.", output_dir, TIMINGS_FILE, bad
        )
    return {key: float(value) for key, value in record.items() if key not in bad}


def record_timings(output_dir: str | Path, timings: dict[str, float], inherited: bool = False) -> None:
    """Merge stage timings into p2d_timings.json (``inherited``: as costs another run paid, e.g. a heads file's
    stage I or a scores file's data selection)."""
    if inherited:
        timings = {INHERITED_PREFIX + key: value for key, value in timings.items()}
    atomic_write_json(Path(output_dir) / TIMINGS_FILE, {**read_timings(output_dir), **timings})


def training_seconds(output_dir: str | Path) -> tuple[float, str] | None:
    """(training seconds, the file they come from) of a finished run: p2d_timings.json, else the Trainer's
    train_runtime; None when the run has not finished training."""
    output_dir = Path(output_dir)
    timings = read_timings(output_dir)
    if "training_seconds" in timings:
        return float(timings["training_seconds"]), str(output_dir / TIMINGS_FILE)
    for name in TRAIN_RESULTS_FILES:
        runtime = (read_record(output_dir / name) or {}).get("train_runtime")
        if runtime is not None:
            return float(runtime), str(output_dir / name)
    return None


def reference_training_seconds(reference_dir: str | Path) -> tuple[float, str]:
    """Training time of a finished full fine-tuning run (t_FFT); raises naming ``p2d_aer_reference`` if absent."""
    found = training_seconds(reference_dir)
    if found is None:
        raise ValueError(
            f"`p2d_aer_reference` {str(reference_dir)!r} has no timing file (p2d_timings.json, train_results.json or "
            "all_results.json with train_runtime); point it to the output_dir of a finished full fine-tuning run."
        )
    return found


def read_aer(output_dir: str | Path) -> dict[str, Any] | None:
    """The run's p2d_aer.json, if it holds an AER."""
    record = read_record(Path(output_dir) / AER_FILE) or {}
    return record if isinstance(record.get("aer"), (int, float)) else None


def aer_record(
    selection_seconds: dict[str, float],
    training_seconds: float,
    t_fft_seconds: float,
    mode: str,
    inputs: dict[str, Any],
    inherited_seconds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The AER both ways: ``aer`` counts every cost of the pipeline that produced the model, including work
    inherited from another run (a heads file's identification); ``aer_this_run`` only what this run paid
    (across its own resumes)."""
    inherited = dict(inherited_seconds or {})
    times = {**selection_seconds, **inherited, "training_seconds": training_seconds}
    bad = {key: value for key, value in times.items() if not (math.isfinite(value) and value >= 0)}
    if bad or not (math.isfinite(t_fft_seconds) and t_fft_seconds > 0):
        raise ValueError(
            "P2D: the AER needs finite times >= 0 and a t_FFT > 0; got "
            + ", ".join(f"{key} {value!r}" for key, value in {**bad, "t_fft_seconds": t_fft_seconds}.items())
            + "."
        )
    selection = sum(selection_seconds.values())
    own = selection + training_seconds
    return {
        "aer": (own + sum(inherited.values())) / t_fft_seconds,
        "aer_this_run": own / t_fft_seconds,
        "mode": mode,
        "selection_seconds": selection,
        **selection_seconds,
        "training_seconds": training_seconds,
        "paid_by_this_run": {**selection_seconds, "training_seconds": training_seconds},
        "inherited": inherited,
        "t_fft_seconds": t_fft_seconds,
        "t_fft_inputs": inputs,
        "formula": "aer = (selection_seconds + training_seconds + sum(inherited)) / t_fft_seconds; "
        "aer_this_run leaves out the inherited costs",
    }
