"""The P2D timing callback: training time, AER, and the P2D figures in LLaMA-Factory's trainer_log.jsonl."""

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import TrainerCallback

from ..files import AER_FILE, TRAINING_STATE_FILE, read_record
from ..io import atomic_write_json
from .aer import INHERITED_PREFIX, aer_record, read_timings, record_timings, reference_training_seconds


logger = logging.getLogger(__name__)
TRAINER_LOG = "trainer_log.jsonl"
SELECTION_KEYS = ("head_identification_seconds", "data_scoring_seconds")


@dataclass
class AERRequest:
    """How t_FFT is obtained: a reference run or an estimate from k timed full steps (neither: no AER)."""

    reference_dir: str | None = None
    estimate_steps: int | None = None
    load_full_model: Callable[[], Any] | None = None  # for the estimate
    full_data_tokens: Callable[[], int] | None = None  # real tokens of the full training data
    epochs: float = 1.0
    learning_rate: float = 2e-5


class P2DTimingCallback(TrainerCallback):
    """Times training (process 0), then writes p2d_timings.json, p2d_aer.json and a trainer_log.jsonl line."""

    def __init__(self, request: AERRequest) -> None:
        self.request = request
        self.start: float | None = None
        self.before: float = 0.0  # training seconds of earlier sessions of this run (resumed from a checkpoint)
        # a failure of the bookkeeping at the end of training: held until the trainer has saved the adapter and
        # train_results.json, then raised by whoever launched the training (``raise_late_error``)
        self.late_error: Exception | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()
        self.before = 0.0
        if state.global_step > 0:  # resumed: the checkpoint holds the training time up to its step
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}" / TRAINING_STATE_FILE
            self.before = float((read_record(path) or {}).get("training_seconds", 0.0))

    def elapsed(self) -> float:
        return self.before + (time.perf_counter() - self.start if self.start is not None else 0.0)

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and checkpoint.is_dir():
            atomic_write_json(checkpoint / TRAINING_STATE_FILE, {"training_seconds": self.elapsed()})

    def on_train_end(self, args, state, control, train_dataloader=None, **kwargs):
        if self.start is None or not state.is_world_process_zero:
            return
        try:
            self._record(args, state, train_dataloader)
        except Exception as err:  # no error after the last step may cost the trained adapter
            self.late_error = err
            logger.error(
                "P2D: recording the training time or the AER failed after training (%s: %s); the trainer saves the "
                "model first, then the run fails with this error.",
                type(err).__name__,
                err,
            )

    def raise_late_error(self) -> None:
        """Raise what failed at the end of training, once the trained model is saved."""
        if self.late_error is not None:
            raise RuntimeError(
                f"P2D: the model is saved, but recording the training time or the AER failed: {self.late_error}"
            ) from self.late_error

    def _record(self, args, state, train_dataloader) -> None:
        training = self.elapsed()
        record_timings(args.output_dir, {"training_seconds": training})
        selection, inherited = split_timings(read_timings(args.output_dir))
        line: dict[str, Any] = {
            f"p2d_{key}": value for key, value in {**selection, "training_seconds": training}.items()
        }
        t_fft = self._t_fft(args, train_dataloader)
        if t_fft is not None:
            record = aer_record(selection, training, *t_fft, inherited_seconds=inherited)
            atomic_write_json(Path(args.output_dir) / AER_FILE, record)
            line["p2d_aer"] = record["aer"]
            logger.info("P2D: AER = %.4f (%s t_FFT = %.1f s)", record["aer"], record["mode"], record["t_fft_seconds"])
        _append_log(args.output_dir, state, line, training)

    def _t_fft(self, args, dataloader) -> tuple[float, str, dict[str, Any]] | None:
        request = self.request
        if request.reference_dir is not None:
            seconds, source = reference_training_seconds(request.reference_dir)
            return seconds, "measured", {"reference": source}
        if request.estimate_steps:
            return self._estimate(args, dataloader)
        return None

    def _estimate(self, args, dataloader) -> tuple[float, str, dict[str, Any]]:
        request = self.request
        micro = args.gradient_accumulation_steps
        wanted = (request.estimate_steps + 1) * micro
        batches = []
        for batch in dataloader:
            batches.append(
                {k: v.to(args.device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "labels")}
            )
            if len(batches) == wanted:
                break
        steps = [batches[i : i + micro] for i in range(0, len(batches), micro)][-request.estimate_steps :]
        model = request.load_full_model()
        try:
            return estimate_t_fft(model, steps, request.learning_rate, request.full_data_tokens(), request.epochs)
        finally:
            del model


def estimate_t_fft(
    model: nn.Module, steps: Sequence[Sequence[dict[str, torch.Tensor]]], lr: float, full_tokens: int, epochs: float
) -> tuple[float, str, dict[str, Any]]:
    """t_FFT from timed full-parameter steps (:func:`time_full_steps`), extrapolated per token to the full data:
    (seconds, "estimated", the inputs of the formula)."""
    seconds, tokens = time_full_steps(model, steps, lr)
    per_token = seconds / tokens
    inputs = {
        "estimate_steps": len(steps),
        "timed_tokens": tokens,
        "timed_seconds": seconds,
        "seconds_per_token": per_token,
        "full_data_tokens": full_tokens,
        "epochs": epochs,
        "formula": "t_fft_seconds = seconds_per_token * full_data_tokens * epochs",
    }
    return per_token * full_tokens * epochs, "estimated", inputs


def split_timings(timings: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """The selection stages this run paid for, and the inherited ones (a heads file's stage I), from p2d_timings."""
    selection = {key: float(timings[key]) for key in SELECTION_KEYS if key in timings}
    inherited = {key: float(v) for key, v in timings.items() if key.startswith(INHERITED_PREFIX)}
    return selection, inherited


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


def _append_log(output_dir: str, state, values: dict[str, Any], elapsed: float) -> None:
    """Add the P2D figures as a final trainer_log.jsonl line, with the progress keys LLaMA-Board reads."""
    line = {
        "current_steps": state.global_step,
        "total_steps": state.max_steps,
        "percentage": 100.0,
        "elapsed_time": str(timedelta(seconds=int(elapsed))),
        "remaining_time": str(timedelta(seconds=0)),
        **{k: _finite(v) for k, v in values.items()},
    }
    with open(Path(output_dir) / TRAINER_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps(line, allow_nan=False) + "\n")


def _finite(value: Any) -> Any:
    """Rounded floats; a non-finite one becomes null (standard JSON)."""
    if isinstance(value, float):
        return round(value, 4) if math.isfinite(value) else None
    return value


class FiniteLossGuard(TrainerCallback):
    """Stops a run of per-head parameters whose loss stops being finite, naming the rate it trains at: a diverged
    adapter is refused rather than saved."""

    def __init__(self, rate_note: str) -> None:
        self.rate_note = rate_note  # e.g. "learning_rate 1e-4 x p2d_head_lr_scale 10 = 1e-3"

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            raise FloatingPointError(
                f"P2D: the training loss is {loss} at step {state.global_step}: the head parameters diverged at "
                f"{self.rate_note}. Lower `learning_rate` or `p2d_head_lr_scale`; the checkpoints saved before "
                "this step are kept, nothing of this step is saved."
            )
