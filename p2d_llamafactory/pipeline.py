"""The P2D pipeline, written once: stage I (the run's head set), stage II (the selected examples) and the set-up of
stage III (head slices, or LoFiT's biases), each with the files and timings it writes.

The Python API (``api``) and the LLaMA-Factory integration (``integration``) are thin adapters over these
functions: the API turns plain keys and a model into their inputs, the integration LLaMA-Factory's arguments and
hooks. Nothing here imports LLaMA-Factory.
"""

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import nn

from .adapter import apply_head_slices, count_slice_params, save_head_set_with_adapter
from .adapter.config import slice_targets
from .data.report import write_selection_report
from .data.select import Selection, SelectionInputs, select_examples
from .distributed import from_rank0, rank
from .files import HEADS_FILE, LOFIT_HEADS_FILE
from .heads.headset import HeadSet
from .heads.identify import FHIInputs, identify_heads
from .heads.layout import AttentionLayout
from .hparams import P2DArguments
from .models import parameter_count
from .report.aer import record_timings, write_run_record
from .tokens import IGNORE_INDEX


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Output:
    """Where a stage writes, whether this process writes (rank 0; LLaMA-Factory's ``should_save``), and whether it
    shows progress bars. Every rank reads ``output_dir`` (a finished identical stage is reused)."""

    output_dir: Path | None
    writes: bool = True
    progress: bool = True

    @property
    def written_dir(self) -> Path | None:
        """The folder this process writes into, or None."""
        return self.output_dir if self.writes else None


def collator(tokenizer: Any) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """Padding of tokenized examples into batches, the prompt and padding carrying no loss."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True, return_tensors="pt")


def total_params(model: nn.Module) -> int:
    """The model's parameter count: a ZeRO-3 partitioned parameter and a 4-bit quantized one count their whole size."""
    return sum(parameter_count(param) for param in model.parameters())


def train_in_float32(model: nn.Module, pure_bf16: bool) -> None:
    """The one dtype rule of stage III: the trainable parameters in float32 (mixed precision's master weights, as
    LLaMA-Factory keeps LoRA's), unless the run trains in pure bf16."""
    if pure_bf16:
        return
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.to(torch.float32)


# --- stage I --------------------------------------------------------------------------------------------------------


def find_heads(
    model: nn.Module | Callable[[], nn.Module],
    examples: Sequence[dict[str, Any]],
    layout: AttentionLayout,
    args: P2DArguments,
    tokenizer: Any,
    model_name: str,
    micro_batch_size: int,
    out: Output,
    found_in_this_run: bool = False,
) -> HeadSet:
    """Stage I: the run's head set (a heads file, this run's own earlier stage I, a finished identical one, or heads
    scored now), identified by every rank together; its time in p2d_timings.json (a heads file's as inherited: the
    run that made it paid for it)."""
    inputs = FHIInputs(
        model=model,
        model_name=model_name,
        examples=examples,
        collate=collator(tokenizer),
        micro_batch_size=micro_batch_size,
        output_dir=str(out.output_dir) if out.output_dir is not None else None,
        progress=out.progress,
    )
    head_set = identify_heads(inputs, args, layout, found_in_this_run)
    if out.written_dir is not None and head_set.timings:
        seconds = {"head_identification_seconds": head_set.timings["total_seconds"]}
        record_timings(out.written_dir, seconds, inherited=bool(args.p2d_heads_file))
    return head_set


# --- stage II -------------------------------------------------------------------------------------------------------


def select_data(
    inputs: SelectionInputs, args: P2DArguments, writes: bool, records: Callable[[list[int]], list[dict[str, Any]]]
) -> Selection:
    """Stage II: score the examples with ``p2d_data_selection`` and keep the top ``p2d_data_ratio`` (probing resumes
    from its checkpoint; an identical finished selection is reused). Where this process ``writes``: the scores,
    the report (``records``: the selected examples as sharegpt records) and the time."""
    logger.info(
        "P2D: stage II, data selection (%s): scoring %d candidates, keeping %.0f%%",
        args.p2d_data_selection,
        len(inputs.examples),
        100 * args.p2d_data_ratio,
    )
    start = time.perf_counter()
    selection = select_examples(inputs, args)
    if writes and inputs.output_dir is not None:
        subset = records(selection.selected)
        write_selection_report(
            inputs, selection, subset, args.p2d_data_ppl_samples, args.p2d_icl_batch_size, args.p2d_seed
        )
        record_timings(inputs.output_dir, selection.timings, inherited=selection.inherited_from is not None)
    logger.info(
        "P2D: stage II done in %.1f s: data selection (%s) keeps %d of %d training examples",
        time.perf_counter() - start,
        selection.method,
        len(selection.selected),
        len(inputs.examples),
    )
    return selection


# --- stage III ------------------------------------------------------------------------------------------------------


def check_resumed_heads(
    checkpoint: str | Path | None,
    head_set: HeadSet,
    file_name: str,
    layout: AttentionLayout | None = None,
    modules: tuple[str, ...] = (),
) -> None:
    """A resumed run must train what its checkpoint trained: the same heads (and slices), else the optimizer state
    and the adapter would mix two head sets. Refused naming both."""
    if checkpoint is None:
        return
    path = Path(checkpoint) / file_name
    if not path.is_file():
        raise ValueError(
            f"`resume_from_checkpoint` {str(checkpoint)!r} has no {file_name}: it was not saved by a run of this "
            "method, so what it trained cannot be checked against this run's heads. Start from the base model."
        )
    saved = HeadSet.load(path, source="resume_from_checkpoint")
    if sorted(saved.selected) != sorted(head_set.selected):
        only_saved = sorted(set(saved.selected) - set(head_set.selected))
        only_now = sorted(set(head_set.selected) - set(saved.selected))
        raise ValueError(
            f"`resume_from_checkpoint` {str(checkpoint)!r} trained other heads than this run selects (only there: "
            f"{[list(h) for h in only_saved][:5]}; only now: {[list(h) for h in only_now][:5]}): a setting that "
            "picks the heads changed since. Resume with the settings of the checkpoint's run, or start afresh with "
            "`overwrite_output_dir: true`."
        )
    if layout is not None and modules:
        from peft import LoraConfig

        targets = LoraConfig.from_pretrained(str(checkpoint)).target_modules
        wanted = {target.module for target in slice_targets(layout, head_set.selected, modules)}
        if targets is not None and set(targets) != wanted:
            raise ValueError(
                f"`resume_from_checkpoint` {str(checkpoint)!r} trained other slices than `p2d_head_modules` "
                f"{','.join(modules)} asks for; resume with the checkpoint's slices or start afresh."
            )


def adapt_heads(
    model: nn.Module,
    layout: AttentionLayout,
    head_set: HeadSet,
    args: P2DArguments,
    out: Output,
    learning_rate: float | None,
    pure_bf16: bool = False,
) -> PeftModel:
    """Stage III set-up: a PeftModel of ``model`` training only the slices of ``head_set``'s heads
    (``p2d_head_modules``); every save of it writes the head set beside the weights. With ``learning_rate`` (the
    slices' rate), ``p2d_run.json`` records what trains at which rate."""
    modules = args.head_modules
    logger.info(
        "P2D: training %d of %d heads (%s slices), selected by %s",
        len(head_set.selected),
        layout.total_heads,
        ",".join(modules),
        head_set.method,
    )
    total = total_params(model)
    peft_model = apply_head_slices(model, layout, head_set.selected, modules)
    save_head_set_with_adapter(peft_model, head_set, HEADS_FILE)
    if out.written_dir is not None and learning_rate is not None:
        trainable = count_slice_params(layout, head_set.selected, modules)
        scale = args.p2d_head_lr_scale
        write_run_record(
            out.written_dir, "p2d_heads", head_set, layout.total_heads, modules, trainable, total, learning_rate, scale
        )
    train_in_float32(peft_model, pure_bf16)
    return peft_model


def adapt_lofit(
    model: nn.Module,
    examples: Sequence[dict[str, Any]],
    layout: AttentionLayout,
    args: P2DArguments,
    tokenizer: Any,
    model_name: str,
    batch_size: int,
    out: Output,
    learning_rate: float,
    pure_bf16: bool = False,
    resume_from_checkpoint: str | None = None,
) -> PeftModel:
    """LoFiT: step 1 ranks the heads on ``examples`` (once, on rank 0; an identical earlier step 1 of this run is
    reused), step 2's set-up returns a PeftModel training only the biases of the top ``p2d_head_ratio`` heads."""
    from .adapter.lofit import apply_lofit_biases, count_bias_params
    from .heads.lofit import select_lofit_heads

    head_set = None
    if rank() == 0:  # the other ranks wait for its heads instead of recomputing them
        output_dir = str(out.written_dir) if out.written_dir is not None else None
        collate = collator(tokenizer)
        head_set = select_lofit_heads(
            model, examples, collate, layout, args, batch_size, model_name, output_dir, out.progress
        )
    head_set = from_rank0(head_set)
    check_resumed_heads(resume_from_checkpoint, head_set, LOFIT_HEADS_FILE)
    trainable = count_bias_params(layout, head_set.selected)
    logger.info(
        "LoFiT: training the biases v of %d of %d heads: %d weights (the trainable count that follows includes the "
        "other heads' columns of each lora_A row, which get no gradient)",
        len(head_set.selected),
        layout.total_heads,
        trainable,
    )
    total = total_params(model)
    peft_model = apply_lofit_biases(model, layout, head_set.selected, args.p2d_seed)
    save_head_set_with_adapter(peft_model, head_set, LOFIT_HEADS_FILE)
    if out.written_dir is not None:
        record_timings(out.written_dir, {"head_identification_seconds": head_set.timings["total_seconds"]})
        write_run_record(
            out.written_dir, "lofit", head_set, layout.total_heads, (), trainable, total, learning_rate, 1.0
        )
    train_in_float32(peft_model, pure_bf16)
    return peft_model
