"""Patches of ``llamafactory.model.adapter``: build the P2D head-slice adapter in ``init_adapter``."""

import logging
from types import ModuleType

import torch

from ..report.aer import record_timings, write_run_record
from . import wrap
from .context import CURRENT


logger = logging.getLogger(__name__)


def setup_p2d_heads(model, model_args, finetuning_args):
    """Stage I (or its result) then stage III set-up: returns a PeftModel training only the selected head slices."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    from ..adapter import apply_head_slices
    from ..heads.layout import find_attention_layout
    from .heads import run_head_identification, whole_model_loader

    training_args = CURRENT.training_args
    if training_args is None:
        raise RuntimeError("P2D: `init_adapter` ran before `get_train_args`; launch with `llamafactory-cli train`.")
    layout = find_attention_layout(model)
    dataset = CURRENT.train_dataset
    # under ZeRO-3 ``model``'s weights are partitioned over the ranks: stage I reads a whole copy
    fhi_model = whole_model_loader(model_args, training_args.device) if is_deepspeed_zero3_enabled() else model
    head_set = run_head_identification(
        fhi_model,
        dataset if dataset is not None else [],
        layout,
        finetuning_args,
        training_args,
        CURRENT.tokenizer,
        model_args.model_name_or_path,
        found_in_this_run=finetuning_args.p2d_data_selection == "p2d",  # selection identified them on all data
    )
    logger.info(
        "P2D: training %d of %d heads (%s slices), selected by %s",
        len(head_set.selected),
        layout.total_heads,
        ",".join(finetuning_args.head_modules),
        head_set.method,
    )
    total = _total_params(model)
    model = apply_head_slices(model, layout, head_set.selected, finetuning_args.head_modules)
    if training_args.should_save:
        record_p2d_heads_run(training_args, finetuning_args, layout, head_set, total)
    if not finetuning_args.pure_bf16:
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.float32)
    return model


def setup_lofit(model, model_args, finetuning_args):
    """LoFiT: step 1 ranks the heads (or reuses an identical earlier step 1 of this run), step 2 returns a
    PeftModel training only the biases of the top ``p2d_head_ratio`` heads."""
    from transformers import DataCollatorForSeq2Seq

    from ..adapter.lofit import apply_lofit_biases, count_bias_params
    from ..distributed import from_rank0, rank
    from ..heads.layout import find_attention_layout
    from ..heads.lofit import select_lofit_heads

    training_args, tokenizer = CURRENT.training_args, CURRENT.tokenizer
    if training_args is None:
        raise RuntimeError("P2D: `init_adapter` ran before `get_train_args`; launch with `llamafactory-cli train`.")
    layout = find_attention_layout(model)
    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True, return_tensors="pt")
    head_set = None
    if rank() == 0:  # step 1 runs once; the other ranks wait for its heads instead of recomputing them
        head_set = select_lofit_heads(
            model,
            CURRENT.train_dataset if CURRENT.train_dataset is not None else [],
            collate,
            layout,
            finetuning_args,
            training_args.per_device_train_batch_size,
            model_args.model_name_or_path,
            training_args.output_dir if training_args.should_save else None,
            progress=not training_args.disable_tqdm,
        )
    head_set = from_rank0(head_set)
    trainable = count_bias_params(layout, head_set.selected)
    logger.info(
        "LoFiT: training the biases v of %d of %d heads: %d weights (the trainable count that follows includes the "
        "other heads' columns of each lora_A row, which get no gradient)",
        len(head_set.selected),
        layout.total_heads,
        trainable,
    )
    total = _total_params(model)
    model = apply_lofit_biases(model, layout, head_set.selected, finetuning_args.p2d_seed)
    if training_args.should_save:
        record_timings(training_args.output_dir, {"head_identification_seconds": head_set.timings["total_seconds"]})
        args = (trainable, total, training_args.learning_rate, 1.0)
        write_run_record(training_args.output_dir, "lofit", head_set, layout.total_heads, (), *args)
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.to(torch.float32)
    return model


def _total_params(model) -> int:
    """The model's parameter count; under ZeRO-3 a partitioned parameter counts its whole size (``ds_numel``)."""
    return sum(getattr(param, "ds_numel", param.numel()) for param in model.parameters())


def record_p2d_heads_run(training_args, finetuning_args, layout, head_set, total_params: int) -> None:
    """``p2d_run.json`` of a p2d_heads run, in its output dir."""
    from ..adapter import count_slice_params

    modules = finetuning_args.head_modules
    trainable = count_slice_params(layout, head_set.selected, modules)
    args = (trainable, total_params, training_args.learning_rate, finetuning_args.p2d_head_lr_scale)
    write_run_record(training_args.output_dir, "p2d_heads", head_set, layout.total_heads, modules, *args)


def load_lofit(model, model_args):
    """A trained LoFiT adapter for chat or export: merged into a plain model where the family allows it (see
    ``merge_lofit``); for chat on the other families, kept as an unmerged PeftModel; export of those is refused."""
    from peft import PeftModel

    from ..adapter.lofit import merge_lofit

    adapters = model_args.adapter_name_or_path or []
    if len(adapters) != 1:
        raise ValueError(f"`finetuning_type: lofit` loads exactly one adapter; got `adapter_name_or_path` {adapters}.")
    peft_model = PeftModel.from_pretrained(model, adapters[0])
    try:
        return merge_lofit(peft_model)
    except ValueError as err:
        if getattr(model_args, "export_dir", None):
            raise
        logger.info("LoFiT: %s", err)
        return peft_model


def init_adapter(original, config, model, model_args, finetuning_args, is_trainable):
    """Handle ``finetuning_type: p2d_heads`` (head slices when training, a LoRA adapter load otherwise) and
    ``lofit`` (LoFiT's two steps when training, its adapter merged where possible otherwise)."""
    finetuning_type = getattr(finetuning_args, "finetuning_type", None)
    if finetuning_type == "lofit":
        if is_trainable:
            return setup_lofit(model, model_args, finetuning_args)
        return load_lofit(model, model_args)
    if finetuning_type != "p2d_heads":
        return original(config, model, model_args, finetuning_args, is_trainable)
    if not is_trainable:
        from .hparams import as_lora  # not at import time: this module may load before llamafactory.hparams

        return original(config, model, model_args, as_lora(finetuning_args), is_trainable)
    return setup_p2d_heads(model, model_args, finetuning_args)


def patch_adapter(module: ModuleType) -> None:
    wrap(module, "init_adapter", init_adapter)
