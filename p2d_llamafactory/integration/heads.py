"""Stage I inside LLaMA-Factory, shared by both integration points (data selection and ``init_adapter``)."""

from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from ..distributed import whole_models
from ..heads.headset import HeadSet
from ..heads.identify import FHIInputs, identify_heads
from ..heads.layout import AttentionLayout
from ..report.aer import record_timings


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
        seconds = {"head_identification_seconds": head_set.timings["total_seconds"]}
        record_timings(training_args.output_dir, seconds, inherited=bool(finetuning_args.p2d_heads_file))
    return head_set


def whole_model_loader(model_args, device) -> Callable[[], nn.Module]:
    """Loads the base model once, on first call, whole on every rank (also under DeepSpeed ZeRO-3, where
    LLaMA-Factory's own model is partitioned over the ranks), for stages I and II."""
    cache: dict[str, nn.Module] = {}

    def load() -> nn.Module:
        if "model" not in cache:
            from transformers import AutoModelForCausalLM

            dtype = model_args.compute_dtype or "auto"
            with whole_models():  # every rank scores with whole weights, also under ZeRO-3
                model = AutoModelForCausalLM.from_pretrained(
                    model_args.model_name_or_path, dtype=dtype, trust_remote_code=model_args.trust_remote_code
                )
            cache["model"] = model.to(device).eval()
        return cache["model"]

    return load
