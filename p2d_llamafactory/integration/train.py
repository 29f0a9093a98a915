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
    """For a run that uses a P2D feature: add the P2D timing callback (training time, AER), carry
    ``p2d_heads.json`` into every checkpoint of a p2d_heads/lofit run, and hold the output dir's lock while the P2D
    stages and training run (process 0). Any other run is LLaMA-Factory's alone: the plugin adds and writes nothing."""
    if CURRENT.finetuning_args is not finetuning_args:  # not a P2D run (get_train_args kept no P2D arguments)
        return original(model_args, data_args, training_args, finetuning_args, generating_args, callbacks)
    from ..io import OutputDirLock
    from ..report.timing import AERRequest, P2DTimingCallback

    request = AERRequest(
        reference_dir=finetuning_args.p2d_aer_reference,
        estimate_steps=finetuning_args.p2d_aer_estimate_steps,
        load_full_model=_load_full_model,
        full_data_tokens=_full_data_tokens,
        epochs=training_args.num_train_epochs,
        learning_rate=training_args.learning_rate,
    )
    callbacks = [*(callbacks or []), P2DTimingCallback(request)]
    if finetuning_args.finetuning_type in ("p2d_heads", "lofit"):
        from ..adapter.artifact import HeadsFileCallback

        callbacks = [*callbacks, HeadsFileCallback()]
    if training_args.process_index != 0:
        return original(model_args, data_args, training_args, finetuning_args, generating_args, callbacks)
    with OutputDirLock(training_args.output_dir, command=" ".join(sys.argv)):
        return original(model_args, data_args, training_args, finetuning_args, generating_args, callbacks)


def patch_tuner(module: ModuleType) -> None:
    wrap(module, "run_sft", run_sft)
