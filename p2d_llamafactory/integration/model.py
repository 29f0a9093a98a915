"""Patches of ``llamafactory.model.adapter``: build the P2D head-slice adapter in ``init_adapter``."""

import logging
from types import ModuleType

import torch

from . import wrap
from .context import CURRENT


logger = logging.getLogger(__name__)


def setup_p2d_heads(model, model_args, finetuning_args):
    """Stage I (or reuse) then stage III set-up: returns a PeftModel training only the selected head slices."""
    from transformers import DataCollatorForSeq2Seq

    from ..adapter import apply_head_slices
    from ..heads.identify import FHIInputs, identify_heads
    from ..heads.layout import find_attention_layout

    training_args = CURRENT.training_args
    if training_args is None:
        raise RuntimeError("P2D: `init_adapter` ran before `get_train_args`; launch with `llamafactory-cli train`.")
    layout = find_attention_layout(model)
    dataset = CURRENT.train_dataset
    inputs = FHIInputs(
        model=model,
        model_name=model_args.model_name_or_path,
        examples=dataset if dataset is not None else [],
        collate=DataCollatorForSeq2Seq(CURRENT.tokenizer, label_pad_token_id=-100, padding=True, return_tensors="pt"),
        micro_batch_size=training_args.per_device_train_batch_size,
        output_dir=training_args.output_dir,
        progress=not training_args.disable_tqdm,
    )
    head_set = CURRENT.head_set  # already resolved by data selection in this run
    if head_set is None:
        with training_args.main_process_first(desc="P2D head identification", local=False):
            head_set = identify_heads(inputs, finetuning_args, layout)
    logger.info(
        "P2D: training %d of %d heads (%s slices), selected by %s",
        len(head_set.selected),
        layout.total_heads,
        ",".join(finetuning_args.head_modules),
        head_set.method,
    )
    if training_args.should_save and head_set.timings:
        from ..report.aer import record_timings

        record_timings(training_args.output_dir, {"head_identification_seconds": head_set.timings["total_seconds"]})
    model = apply_head_slices(model, layout, head_set.selected, finetuning_args.head_modules)
    if not finetuning_args.pure_bf16:
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.float32)
    return model


def init_adapter(original, config, model, model_args, finetuning_args, is_trainable):
    """Handle ``finetuning_type: p2d_heads``: head slices when training, a LoRA adapter load otherwise."""
    if getattr(finetuning_args, "finetuning_type", None) != "p2d_heads":
        return original(config, model, model_args, finetuning_args, is_trainable)
    if not is_trainable:
        from .hparams import as_lora  # not at import time: this module may load before llamafactory.hparams

        return original(config, model, model_args, as_lora(finetuning_args), is_trainable)
    return setup_p2d_heads(model, model_args, finetuning_args)


def patch_adapter(module: ModuleType) -> None:
    wrap(module, "init_adapter", init_adapter)
