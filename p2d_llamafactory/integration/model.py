"""Patches of ``llamafactory.model.adapter``: build the P2D head-slice adapter in ``init_adapter``."""

import logging
from types import ModuleType

import torch

from . import wrap
from .context import CURRENT


logger = logging.getLogger(__name__)


def setup_p2d_heads(model, model_args, finetuning_args):
    """Stage I (or its result) then stage III set-up: returns a PeftModel training only the selected head slices."""
    from ..adapter import apply_head_slices
    from ..heads.layout import find_attention_layout
    from .heads import run_head_identification

    training_args = CURRENT.training_args
    if training_args is None:
        raise RuntimeError("P2D: `init_adapter` ran before `get_train_args`; launch with `llamafactory-cli train`.")
    layout = find_attention_layout(model)
    dataset = CURRENT.train_dataset
    head_set = run_head_identification(
        model,
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
    total = sum(param.numel() for param in model.parameters())
    model = apply_head_slices(model, layout, head_set.selected, finetuning_args.head_modules)
    if training_args.should_save:
        write_run_record(training_args, finetuning_args, layout, head_set, total)
    if not finetuning_args.pure_bf16:
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.to(torch.float32)
    return model


def write_run_record(training_args, finetuning_args, layout, head_set, total_params: int) -> None:
    """``p2d_run.json`` of this run, in its output dir."""
    from ..adapter import count_slice_params
    from ..report.aer import write_run_record as write

    modules = finetuning_args.head_modules
    trainable = count_slice_params(layout, head_set.selected, modules)
    args = (training_args.learning_rate, finetuning_args.p2d_head_lr_scale)
    write(training_args.output_dir, head_set, layout.total_heads, modules, trainable, total_params, *args)


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
