"""Stage I: the one entry point that returns a run's head set.

:func:`identify_heads` answers, in this order: the ``p2d_heads_file``; the head set this run's data selection
already identified on the full training data (``found_in_this_run``); a finished identical stage I in the output
dir; or freshly scored heads (task model, proxy, gradient or random). Both integration points (data selection and
``init_adapter``) call it.
"""

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

from ..distributed import from_rank0, rank, shard, sum_over_ranks, world_size
from ..files import HEADS_FILE, HEATMAP_FILE, model_fingerprint
from ..hparams import P2DArguments, count_for_ratio, identity, same_identity
from ..methods import DATA_SCORERS, PROXY_SCORERS
from ..models import load_causal_lm
from ..tokens import count_label_tokens
from .headset import HeadSet, reusable_head_set
from .heatmap import plot_head_heatmap
from .layout import AttentionLayout, find_attention_layout
from .proxy import make_batches, micro_batch_tokens, sample_indices, train_proxy
from .proxy_memory import check_proxy_fits
from .scoring import gradient_scores, random_scores, select_top, trainable_layers, weight_scores


logger = logging.getLogger(__name__)


@dataclass
class FHIInputs:
    """What stage I needs from the run: the base model (or a loader, called only if heads are scored), its
    tokenized training examples and where to write."""

    model: nn.Module | Callable[[], nn.Module]
    model_name: str
    examples: Sequence[dict[str, Any]]  # tokenized: input_ids, attention_mask, labels
    collate: Callable[[list[dict]], dict[str, torch.Tensor]]
    micro_batch_size: int
    output_dir: str | None
    progress: bool = True

    def base_model(self) -> nn.Module:
        if not isinstance(self.model, nn.Module):
            self.model = self.model()
        return self.model


def tokenized_fingerprint(examples: Sequence[dict[str, Any]]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(repr((list(example["input_ids"]), list(example["labels"]))).encode())
    return digest.hexdigest()[:16]


def _needs_data(args: P2DArguments) -> bool:
    return args.p2d_head_selection in DATA_SCORERS and not (
        args.p2d_head_selection in PROXY_SCORERS and args.p2d_task_model is not None
    )


def head_identity(args: P2DArguments, model_name: str, fingerprint: str | None) -> dict[str, Any]:
    """What identifies a stage I result: every ``heads`` identity field, the model and the FHI data."""
    files = {"model_files": model_fingerprint(model_name), "task_model_files": model_fingerprint(args.p2d_task_model)}
    return {**identity(args, "heads"), "model": model_name, **files, "fhi_data": fingerprint}


def plan_identification(
    examples: Sequence[dict[str, Any]], args: P2DArguments, model_name: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The FHI examples stage I would use and the identity of its result (no model needed)."""
    sample: list[dict[str, Any]] = []
    if _needs_data(args):
        if len(examples) < args.p2d_fhi_samples:
            logger.warning(
                "P2D: only %d training examples for p2d_fhi_samples=%d; the proxy uses all of them.",
                len(examples),
                args.p2d_fhi_samples,
            )
        sample = [examples[i] for i in sample_indices(len(examples), args.p2d_fhi_samples, args.p2d_seed)]
    return sample, head_identity(args, model_name, tokenized_fingerprint(sample) if sample else None)


def reusable_identification(
    output_dir: str | None, settings: dict[str, Any], layout: AttentionLayout
) -> HeadSet | None:
    """The head set an identical earlier run left in ``output_dir``, if any."""
    if output_dir is None:
        return None
    path = Path(output_dir) / HEADS_FILE
    previous = reusable_head_set(path, settings, layout, "heads")
    if previous is not None:
        logger.info("P2D: reusing the identical head identification in %s", path)
    return previous


def _found_in_this_run(inputs: FHIInputs, args: P2DArguments, layout: AttentionLayout) -> HeadSet:
    """The head set that this run's data selection identified on the full training data (its output dir)."""
    path = Path(inputs.output_dir or ".") / HEADS_FILE
    head_set = from_rank0(HeadSet.load(path, source="output_dir") if rank() == 0 and path.is_file() else None)
    expected = head_identity(args, inputs.model_name, None)
    found = head_set.settings if head_set else None
    if (
        head_set is None
        or not same_identity(found, expected, "heads", ("fhi_data",))
        or head_set.shape != layout.shape()
    ):
        raise RuntimeError(
            f"P2D: data selection should have identified this run's heads in {path}, but that file is missing or "
            "was made with other settings; rerun the training."
        )
    logger.info("P2D: using the %d heads that data selection identified (%s)", len(head_set.selected), path)
    return head_set


def identify_heads(
    inputs: FHIInputs,
    args: P2DArguments,
    layout: AttentionLayout | None = None,
    found_in_this_run: bool = False,
) -> HeadSet:
    """Return the head set of this run: from ``p2d_heads_file``, from this run's data selection
    (``found_in_this_run``), from a finished identical run, or freshly scored."""
    layout = layout or find_attention_layout(inputs.base_model())
    if args.p2d_heads_file:
        head_set = HeadSet.load(args.p2d_heads_file)
        head_set.check_shape(layout)
        logger.info("P2D: using %d heads from %s", len(head_set.selected), args.p2d_heads_file)
        own = Path(inputs.output_dir) / HEADS_FILE if inputs.output_dir and rank() == 0 else None
        if own is not None and own.resolve() != Path(args.p2d_heads_file).resolve():
            head_set.save(own)  # the run's output dir holds the head set it trained with
        return head_set
    if found_in_this_run:
        return _found_in_this_run(inputs, args, layout)

    num_selected = count_for_ratio(args.p2d_head_ratio, layout.total_heads)
    layers = trainable_layers(layout.num_layers, args.p2d_head_trainable_layers)
    examples, settings = plan_identification(inputs.examples, args, inputs.model_name)
    out_path = Path(inputs.output_dir) / HEADS_FILE if inputs.output_dir and rank() == 0 else None
    previous = reusable_identification(inputs.output_dir, settings, layout) if rank() == 0 else None
    if (previous := from_rank0(previous)) is not None:  # every rank follows rank 0's decision
        return previous

    logger.info(
        "P2D: stage I, head identification (%s): %d examples, %d proxy steps, keeping %d of %d heads%s%s",
        args.p2d_head_selection,
        len(examples),
        args.p2d_fhi_steps,
        num_selected,
        layout.total_heads,
        f" from layers {layers.start}-{layers.stop - 1}" if len(layers) < layout.num_layers else "",
        f", the micro-batches shared by {world_size()} ranks" if world_size() > 1 else "",
    )
    timings: dict[str, float] = {}
    proxy_loss: list[float] = []
    start = time.perf_counter()
    method = args.p2d_head_selection
    model = inputs.base_model() if method != "random" else None
    device = next(model.parameters()).device if model is not None else None
    if method == "random":
        scores = random_scores(layout, args.p2d_seed)
    elif method == "gradient":
        batches = shard(make_batches(examples, inputs.collate, inputs.micro_batch_size, device))
        num_tokens = int(sum_over_ranks(count_label_tokens(batches)))
        scores = gradient_scores(model, layout, batches, num_tokens, inputs.progress)
    else:
        if args.p2d_task_model is not None:
            other = load_causal_lm(args.p2d_task_model, torch.float32, device)  # compared with float32 weights
        else:
            other, proxy_loss = _train_proxy(model, device, examples, inputs, args, layout)
        timings["proxy_seconds"] = time.perf_counter() - start
        score_start = time.perf_counter()
        scores = weight_scores(model, other, layout, method, args.p2d_temperature, inputs.progress)
        timings["scoring_seconds"] = time.perf_counter() - score_start
        del other
        _free_memory()
    timings["total_seconds"] = time.perf_counter() - start
    check_scores(scores[layers.start : layers.stop], args, num_selected)  # the cut among the selectable heads

    head_set = HeadSet(
        model=inputs.model_name,
        shape=layout.shape(),
        method=method,
        seed=args.p2d_seed,
        ratio=args.p2d_head_ratio,
        scores=scores.tolist(),
        selected=select_top(scores, num_selected, layers),
        settings=settings,
        timings=timings,
        proxy_loss=proxy_loss,
    )
    head_set = from_rank0(head_set)  # every rank computed the same scores; rank 0's are the ones written
    if out_path is not None:
        head_set.save(out_path)
        title = f"P2D head scores ({method}), {len(head_set.selected)} of {layout.total_heads} heads selected"
        plot_head_heatmap(head_set.scores, head_set.selected, out_path.parent / HEATMAP_FILE, title)
        logger.info("P2D: wrote %s and %s", out_path, HEATMAP_FILE)
    logger.info("P2D: stage I done in %.1f s", timings["total_seconds"])
    return head_set


def _train_proxy(
    model: nn.Module,
    device: torch.device,
    examples: list[dict[str, Any]],
    inputs: FHIInputs,
    args: P2DArguments,
    layout: AttentionLayout,
) -> tuple[nn.Module, list[float]]:
    """The FHI proxy of ``model``, once its memory estimate fits beside the model (else refused, before any
    allocation)."""
    check_proxy_fits(model, layout, args.p2d_fhi_trainable, micro_batch_tokens(examples, inputs.micro_batch_size))
    batches = shard(make_batches(examples, inputs.collate, inputs.micro_batch_size, device))
    steps, lr = args.p2d_fhi_steps, args.p2d_fhi_lr
    return train_proxy(model, batches, steps, lr, inputs.progress, args.p2d_fhi_trainable, layout)


def check_scores(scores: torch.Tensor, args: P2DArguments, num_selected: int | None = None) -> None:
    """Refuse head scores that cannot rank heads (all equal, not finite, or tied across the cut of the
    ``num_selected`` kept, so that head order would pick), naming the likely cause."""
    method = args.p2d_head_selection
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(
            f"P2D: {method} head scores are not finite (the proxy diverged?); lower `p2d_fhi_lr` "
            f"({args.p2d_fhi_lr:g}) or check the model's weights."
        )
    if method == "random":
        return
    if float(scores.max() - scores.min()) > 0.0:
        _check_cut(scores, args, num_selected)
        return
    if args.p2d_task_model is not None and method in PROXY_SCORERS:
        cause = f"`p2d_task_model` {args.p2d_task_model!r} has the same attention weights as the base model"
    elif method in PROXY_SCORERS:
        cause = (
            f"the proxy did not move from the base model in {args.p2d_fhi_steps} steps at `p2d_fhi_lr` "
            f"{args.p2d_fhi_lr:g} (raise it, or `p2d_fhi_steps`)"
        )
    else:
        cause = "the attention weights got no gradient on the FHI examples (do they have response tokens?)"
    raise ValueError(
        f"P2D: every head scored the same ({float(scores.max()):g}) with `p2d_head_selection: {method}`, so no head "
        f"can be preferred: {cause}. Nothing was trained."
    )


def _check_cut(scores: torch.Tensor, args: P2DArguments, num_selected: int | None) -> None:
    """The k-th and (k+1)-th highest scores must differ: a tie across the cut would be settled by head order."""
    flat = scores.flatten().sort(descending=True).values
    if num_selected is None or not 0 < num_selected < flat.numel() or flat[num_selected - 1] != flat[num_selected]:
        return
    value = float(flat[num_selected])
    tied = int((flat == value).sum())
    above = int((flat > value).sum())
    method = args.p2d_head_selection
    if method in PROXY_SCORERS and args.p2d_task_model is not None:
        cause = f"`p2d_task_model` moves only {above} heads away from the base model's distributions"
    elif method in PROXY_SCORERS:
        cause = (
            f"only {above} heads moved measurably: `p2d_temperature` {args.p2d_temperature:g} may make the scoring "
            "distributions degenerate on this model, or the proxy trained too little"
        )
    else:
        cause = "the FHI examples give these heads the same gradient magnitude"
    raise ValueError(
        f"P2D: {tied} heads tie at the {method} score {value:g} across the cut of the {num_selected} to keep, so "
        f"head order, not the scores, would pick among them: {cause}. Change it, or `p2d_head_ratio`, so that the "
        "scores decide. Nothing was trained."
    )


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
