"""Stage I orchestration: reuse or load a head set, or score heads (proxy / task model / gradient / random)."""

import gc
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..hparams import P2DArguments, heads_to_select
from ..report.plots import plot_head_heatmap
from .headset import HEADS_FILE, HEATMAP_FILE, HeadSet
from .layout import AttentionLayout, find_attention_layout
from .proxy import count_label_tokens, make_batches, sample_indices, train_proxy
from .scoring import gradient_scores, random_scores, select_top, weight_scores


logger = logging.getLogger(__name__)


@dataclass
class FHIInputs:
    """What stage I needs from the run: the base model, its training examples and where to write."""

    model: nn.Module
    model_name: str
    examples: Sequence[dict[str, Any]]  # tokenized: input_ids, attention_mask, labels
    collate: Callable[[list[dict]], dict[str, torch.Tensor]]
    micro_batch_size: int
    output_dir: str | None
    progress: bool = True


def _fingerprint(examples: Sequence[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(repr((list(example["input_ids"]), list(example["labels"]))).encode())
    return digest.hexdigest()[:16]


def _settings(args: P2DArguments, model_name: str, fingerprint: str | None) -> dict[str, Any]:
    keys = ["p2d_head_ratio", "p2d_head_selection", "p2d_seed", "p2d_temperature", "p2d_task_model"]
    if args.p2d_head_selection in ("w1", "cosine") and args.p2d_task_model is None:
        keys += ["p2d_fhi_samples", "p2d_fhi_steps", "p2d_fhi_lr"]
    if args.p2d_head_selection == "gradient":
        keys += ["p2d_fhi_samples"]
    settings = {key: getattr(args, key) for key in keys}
    return {**settings, "model": model_name, "fhi_data": fingerprint}


def _load_task_model(path: str, device: torch.device) -> nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device).eval()


def _reusable(path: Path, settings: dict[str, Any], layout: AttentionLayout) -> HeadSet | None:
    if not path.is_file():
        return None
    try:
        previous = HeadSet.load(path)
    except ValueError:
        return None
    if previous.settings != settings or previous.shape != layout.shape():
        return None
    return previous


def plan_identification(
    examples: Sequence[dict[str, Any]], args: P2DArguments, model_name: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The FHI examples stage I would use and the settings that identify its result (no model needed)."""
    needs_data = args.p2d_head_selection == "gradient" or (
        args.p2d_head_selection in ("w1", "cosine") and args.p2d_task_model is None
    )
    sample: list[dict[str, Any]] = []
    if needs_data:
        if len(examples) < args.p2d_fhi_samples:
            logger.warning(
                "P2D: only %d training examples for p2d_fhi_samples=%d; the proxy uses all of them.",
                len(examples),
                args.p2d_fhi_samples,
            )
        sample = [examples[i] for i in sample_indices(len(examples), args.p2d_fhi_samples, args.p2d_seed)]
    return sample, _settings(args, model_name, _fingerprint(sample) if sample else None)


def reusable_head_set(output_dir: str | None, settings: dict[str, Any], layout: AttentionLayout) -> HeadSet | None:
    """The head set an identical earlier run left in ``output_dir``, if any."""
    if output_dir is None:
        return None
    path = Path(output_dir) / HEADS_FILE
    previous = _reusable(path, settings, layout)
    if previous is not None:
        logger.info("P2D: reusing the identical head identification in %s", path)
    return previous


def identify_heads(inputs: FHIInputs, args: P2DArguments, layout: AttentionLayout | None = None) -> HeadSet:
    """Return the head set of this run: from ``p2d_heads_file``, a finished identical run, or freshly scored."""
    model = inputs.model
    layout = layout or find_attention_layout(model)
    if args.p2d_heads_file:
        head_set = HeadSet.load(args.p2d_heads_file)
        head_set.check_shape(layout)
        logger.info("P2D: using %d heads from %s", len(head_set.selected), args.p2d_heads_file)
        return head_set

    num_selected = heads_to_select(args.p2d_head_ratio, layout.total_heads)
    examples, settings = plan_identification(inputs.examples, args, inputs.model_name)
    out_path = Path(inputs.output_dir) / HEADS_FILE if inputs.output_dir else None
    if (previous := reusable_head_set(inputs.output_dir, settings, layout)) is not None:
        return previous

    logger.info(
        "P2D: stage I, head identification (%s): %d examples, %d proxy steps, keeping %d of %d heads",
        args.p2d_head_selection,
        len(examples),
        args.p2d_fhi_steps,
        num_selected,
        layout.total_heads,
    )
    device = next(model.parameters()).device
    timings: dict[str, float] = {}
    proxy_loss: list[float] = []
    start = time.perf_counter()
    method = args.p2d_head_selection
    if method == "random":
        scores = random_scores(layout, args.p2d_seed)
    elif method == "gradient":
        batches = make_batches(examples, inputs.collate, inputs.micro_batch_size, device)
        scores = gradient_scores(model, layout, batches, count_label_tokens(batches), inputs.progress)
    else:
        if args.p2d_task_model is not None:
            other = _load_task_model(args.p2d_task_model, device)
        else:
            batches = make_batches(examples, inputs.collate, inputs.micro_batch_size, device)
            other, proxy_loss = train_proxy(model, batches, args.p2d_fhi_steps, args.p2d_fhi_lr, inputs.progress)
            del batches
        timings["proxy_seconds"] = time.perf_counter() - start
        score_start = time.perf_counter()
        scores = weight_scores(model, other, layout, method, args.p2d_temperature, inputs.progress)
        timings["scoring_seconds"] = time.perf_counter() - score_start
        del other
        _free_memory()
    timings["total_seconds"] = time.perf_counter() - start

    head_set = HeadSet(
        model=inputs.model_name,
        shape=layout.shape(),
        method=method,
        seed=args.p2d_seed,
        ratio=args.p2d_head_ratio,
        scores=scores.tolist(),
        selected=select_top(scores, num_selected),
        settings=settings,
        timings=timings,
        proxy_loss=proxy_loss,
    )
    if out_path is not None:
        head_set.save(out_path)
        title = f"P2D head scores ({method}), {len(head_set.selected)} of {layout.total_heads} heads selected"
        plot_head_heatmap(head_set.scores, head_set.selected, out_path.parent / HEATMAP_FILE, title)
        logger.info("P2D: wrote %s and %s", out_path, HEATMAP_FILE)
    logger.info("P2D: stage I done in %.1f s", timings["total_seconds"])
    return head_set


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
