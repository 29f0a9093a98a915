"""Patches of ``llamafactory.model.adapter``: build the P2D head-slice adapter in ``init_adapter``."""

import logging
import os
from types import ModuleType

from ..files import HEADS_FILE, LOFIT_HEADS_FILE, MERGED_KEY, adapter_digest
from ..pipeline import adapt_heads, adapt_lofit, check_resumed_heads
from . import wrap
from .heads import find_run_heads, run_output, whole_model_loader
from .run import P2DRun, open_run


logger = logging.getLogger(__name__)


def _open_run_for(finetuning_args) -> P2DRun:
    run = open_run()
    if run is None or run.finetuning_args is not finetuning_args:
        raise RuntimeError(
            f"P2D: `finetuning_type: {finetuning_args.finetuning_type}` trains inside LLaMA-Factory's SFT workflow; "
            "launch it with `llamafactory-cli train` (init_adapter ran outside run_sft)."
        )
    run.enter("adapter")
    return run


def setup_p2d_heads(model, model_args, finetuning_args):
    """Stage I (or its result) then stage III set-up: returns a PeftModel training only the selected head slices."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    from ..heads.layout import find_attention_layout

    run = _open_run_for(finetuning_args)
    layout = find_attention_layout(model)
    # under ZeRO-3 ``model``'s weights are partitioned over the ranks: stage I reads a whole copy
    fhi_model = whole_model_loader(run) if is_deepspeed_zero3_enabled() else model
    examples = run.train_dataset if run.train_dataset is not None else []
    found = finetuning_args.p2d_data_selection == "p2d"  # data selection identified them on all data
    head_set = find_run_heads(run, fhi_model, examples, layout, found_in_this_run=found)
    check_resumed_heads(_resumed_checkpoint(run), head_set, HEADS_FILE, layout, finetuning_args.head_modules)
    rate = run.training_args.learning_rate  # the slices' rate (learning_rate x p2d_head_lr_scale, set at parse time)
    return adapt_heads(model, layout, head_set, finetuning_args, run_output(run), rate, finetuning_args.pure_bf16)


def setup_lofit(model, model_args, finetuning_args):
    """LoFiT: step 1 ranks the heads (or reuses an identical earlier step 1 of this run), step 2 returns a
    PeftModel training only the biases of the top ``p2d_head_ratio`` heads."""
    from ..heads.layout import find_attention_layout

    run = _open_run_for(finetuning_args)
    training_args = run.training_args
    return adapt_lofit(
        model,
        run.train_dataset if run.train_dataset is not None else [],
        find_attention_layout(model),
        finetuning_args,
        run.tokenizer,
        model_args.model_name_or_path,
        training_args.per_device_train_batch_size,
        run_output(run),
        training_args.learning_rate,
        finetuning_args.pure_bf16,
        _resumed_checkpoint(run),
    )


def _resumed_checkpoint(run: P2DRun) -> str | None:
    """The checkpoint this run resumes from (LLaMA-Factory sets the last one of an existing output dir), if any."""
    checkpoint = run.training_args.resume_from_checkpoint
    if checkpoint is True or str(checkpoint).lower() == "true":
        from transformers.trainer_utils import get_last_checkpoint

        return get_last_checkpoint(run.training_args.output_dir)
    return checkpoint or None


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
        return _mark_merged(load_lofit(model, model_args), model_args)
    if finetuning_type != "p2d_heads":
        return _mark_merged(original(config, model, model_args, finetuning_args, is_trainable), model_args)
    if not is_trainable:
        from .hparams import as_lora  # not at import time: this module may load before llamafactory.hparams

        return _mark_merged(original(config, model, model_args, as_lora(finetuning_args), is_trainable), model_args)
    return setup_p2d_heads(model, model_args, finetuning_args)


def _mark_merged(model, model_args):
    """An export (``export_dir``) records in the merged model's config which P2D adapters it holds, so that merging
    one of them into it again (its update applied twice) is refused (``integration.checks.check_adapters``)."""
    if not getattr(model_args, "export_dir", None) or getattr(model, "config", None) is None:
        return model
    adapters = [path for path in model_args.adapter_name_or_path or [] if _is_p2d_adapter(path)]
    digests = [digest for digest in map(adapter_digest, adapters) if digest is not None]
    if digests:
        merged = list(getattr(model.config, MERGED_KEY, None) or [])
        setattr(model.config, MERGED_KEY, [*merged, *(d for d in digests if d not in merged)])
    return model


def _is_p2d_adapter(path: str) -> bool:
    return any(os.path.isfile(os.path.join(path, name)) for name in (HEADS_FILE, LOFIT_HEADS_FILE))


def patch_adapter(module: ModuleType) -> None:
    wrap(module, "init_adapter", init_adapter)
