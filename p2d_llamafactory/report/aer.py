"""Alignment Efficiency Ratio (paper Eq. 1): AER = (selection time + training time) / t_FFT.

t_FFT is either measured (the training time of a full fine-tuning run on the full data) or estimated
(k timed full-parameter steps of the same model on the same hardware, extrapolated per token to the full
data and epochs). ``p2d_aer.json`` records the inputs so that anyone can recompute the ratio.
"""

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..io import atomic_write_json, read_json


AER_FILE = "p2d_aer.json"
TIMINGS_FILE = "p2d_timings.json"


def read_timings(output_dir: str | Path) -> dict[str, float]:
    path = Path(output_dir) / TIMINGS_FILE
    return read_json(path) if path.is_file() else {}


def record_timings(output_dir: str | Path, timings: dict[str, float]) -> None:
    """Merge stage timings into p2d_timings.json."""
    atomic_write_json(Path(output_dir) / TIMINGS_FILE, {**read_timings(output_dir), **timings})


def reference_training_seconds(reference_dir: str | Path) -> tuple[float, str]:
    """Training time of a finished full fine-tuning run: its p2d_timings.json, else the Trainer's train_runtime."""
    reference_dir = Path(reference_dir)
    timings = read_timings(reference_dir)
    if "training_seconds" in timings:
        return float(timings["training_seconds"]), str(reference_dir / TIMINGS_FILE)
    for name in ("train_results.json", "all_results.json"):
        path = reference_dir / name
        if path.is_file():
            runtime = json.loads(path.read_text()).get("train_runtime")
            if runtime is not None:
                return float(runtime), str(path)
    raise ValueError(
        f"`p2d_aer_reference` {str(reference_dir)!r} has no timing file (p2d_timings.json, train_results.json or "
        "all_results.json with train_runtime); point it to the output_dir of a finished full fine-tuning run."
    )


def time_full_steps(
    model: nn.Module, steps: Sequence[Sequence[dict[str, torch.Tensor]]], lr: float
) -> tuple[float, int]:
    """Seconds and real tokens of full-parameter AdamW steps, one step per group of accumulated micro-batches.

    The first group is run once more beforehand, untimed, to warm up allocators and kernels.
    """
    model.requires_grad_(True)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    seconds, tokens = 0.0, 0
    for i, group in enumerate([steps[0], *steps]):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for batch in group:
            (model(**batch).loss / len(group)).backward()
        optimizer.step()
        if i > 0:
            seconds += time.perf_counter() - start
            tokens += sum(
                int(b.get("attention_mask", b["input_ids"]).sum() if "attention_mask" in b else b["input_ids"].numel())
                for b in group
            )
    return seconds, tokens


def aer_record(
    selection_seconds: dict[str, float],
    training_seconds: float,
    t_fft_seconds: float,
    mode: str,
    inputs: dict[str, Any],
) -> dict[str, Any]:
    selection = sum(selection_seconds.values())
    return {
        "aer": (selection + training_seconds) / t_fft_seconds,
        "mode": mode,
        "selection_seconds": selection,
        **selection_seconds,
        "training_seconds": training_seconds,
        "t_fft_seconds": t_fft_seconds,
        "t_fft_inputs": inputs,
        "formula": "aer = (selection_seconds + training_seconds) / t_fft_seconds",
    }
