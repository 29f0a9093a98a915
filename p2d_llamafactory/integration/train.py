"""Patches of ``llamafactory.train.tuner``: the P2D timing callback joins every run that uses P2D."""

import sys
from types import ModuleType

from . import wrap
from .context import CURRENT


def _full_data_tokens() -> int:
    """Tokens of the full training split: counted before data selection, or from the tokenized split."""
    if CURRENT.full_data_tokens is not None:
        return CURRENT.full_data_tokens
    return sum(len(ids) for ids in CURRENT.train_dataset["input_ids"])


def _load_full_model():
    from transformers import AutoModelForCausalLM

    model_args, training_args = CURRENT.model_args, CURRENT.training_args
    model = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path, dtype="auto", trust_remote_code=model_args.trust_remote_code
    )
    return model.to(training_args.device)


def run_sft(original, model_args, data_args, training_args, finetuning_args, generating_args, callbacks=None):
    """Add the P2D timing callback (training time, AER) when the run uses any P2D feature, and to full
    fine-tuning on the full data, which is then its own AER reference (AER = 1) for other runs; carry
    ``p2d_heads.json`` into every checkpoint of a p2d_heads run; hold the output dir's lock while the P2D stages
    and training run (process 0)."""
    full_ft_reference = finetuning_args.finetuning_type == "full" and finetuning_args.p2d_data_selection == "none"
    if finetuning_args.uses_p2d or full_ft_reference:
        from ..report.timing import AERRequest, P2DTimingCallback

        request = AERRequest(
            reference_dir=finetuning_args.p2d_aer_reference,
            estimate_steps=finetuning_args.p2d_aer_estimate_steps,
            this_run_is_full_ft=full_ft_reference,
            load_full_model=_load_full_model,
            full_data_tokens=_full_data_tokens,
            epochs=training_args.num_train_epochs,
            learning_rate=training_args.learning_rate,
        )
        callbacks = [*(callbacks or []), P2DTimingCallback(request)]
    if finetuning_args.finetuning_type in ("p2d_heads", "lofit"):
        from ..adapter.artifact import HeadsFileCallback

        callbacks = [*(callbacks or []), HeadsFileCallback()]
    if not finetuning_args.uses_p2d or training_args.process_index != 0:
        return original(model_args, data_args, training_args, finetuning_args, generating_args, callbacks)
    from ..io import OutputDirLock

    with OutputDirLock(training_args.output_dir, command=" ".join(sys.argv)):
        return original(model_args, data_args, training_args, finetuning_args, generating_args, callbacks)


def patch_tuner(module: ModuleType) -> None:
    wrap(module, "run_sft", run_sft)
