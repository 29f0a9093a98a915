"""Stage I inside LLaMA-Factory, shared by both integration points (data selection and ``init_adapter``)."""

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from ..heads.headset import HeadSet
from ..heads.identify import FHIInputs, identify_heads
from ..heads.layout import AttentionLayout
from ..report.aer import INHERITED_PREFIX, record_timings


def run_head_identification(
    model: nn.Module | Callable[[], nn.Module],
    examples: Sequence[dict[str, Any]],
    layout: AttentionLayout,
    finetuning_args: Any,
    training_args: Any,
    tokenizer: Any,
    model_name: str,
    found_in_this_run: bool = False,
) -> HeadSet:
    """The run's head set, identified by every rank together (under ``torchrun`` the FHI micro-batches are shared;
    rank 0 writes the file), with its time in p2d_timings.json (earlier sessions of the same run count as this
    run's; a heads file's time as inherited)."""
    from transformers import DataCollatorForSeq2Seq

    inputs = FHIInputs(
        model=model,
        model_name=model_name,
        examples=examples,
        collate=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True, return_tensors="pt"),
        micro_batch_size=training_args.per_device_train_batch_size,
        output_dir=training_args.output_dir,
        progress=not training_args.disable_tqdm,
    )
    head_set = identify_heads(inputs, finetuning_args, layout, found_in_this_run)
    if training_args.should_save and head_set.timings:
        # a heads file's identification was paid by the run that made it: booked as inherited, not as this run's
        key = "head_identification_seconds"
        record_timings(
            training_args.output_dir,
            {(INHERITED_PREFIX + key if finetuning_args.p2d_heads_file else key): head_set.timings["total_seconds"]},
        )
    return head_set
