"""Patches of ``llamafactory.train.tuner``: ``run_sft`` opens the P2D run (``integration.run``) and adds the P2D
timing callback to every run that uses P2D."""

import sys
from types import ModuleType

from ..hparams import P2DArguments
from ..models import load_causal_lm
from . import wrap
from .run import P2DRun, opened


def _full_data_tokens(run: P2DRun) -> int:
    """Tokens of the full training split: counted before data selection, or from the tokenized split."""
    if run.full_data_tokens is not None:
        return run.full_data_tokens
    return sum(len(ids) for ids in run.train_dataset["input_ids"])


def _load_full_model(run: P2DRun):
    model_args = run.model_args
    path, device = model_args.model_name_or_path, run.training_args.device
    return load_causal_lm(path, "auto", device, model_args.trust_remote_code)


def run_sft(original, model_args, data_args, training_args, finetuning_args, generating_args, callbacks=None):
    """For a run that uses a P2D feature: open the run for the integration points, add the P2D timing callback
    (training time, AER), and hold the output dir's lock while the P2D stages and training run (process 0). Any
    other run is LLaMA-Factory's alone: the plugin opens, adds and writes nothing."""
    p2d = finetuning_args if isinstance(finetuning_args, P2DArguments) else None  # another extension's class: not ours
    if p2d is None or not p2d.uses_p2d:
        return original(model_args, data_args, training_args, finetuning_args, generating_args, callbacks)
    from ..io import OutputDirLock
    from ..report.timing import AERRequest, FiniteLossGuard, P2DTimingCallback

    run = P2DRun(model_args, data_args, training_args, p2d)
    request = AERRequest(
        reference_dir=p2d.p2d_aer_reference,
        estimate_steps=p2d.p2d_aer_estimate_steps,
        load_full_model=lambda: _load_full_model(run),
        full_data_tokens=lambda: _full_data_tokens(run),
        epochs=training_args.num_train_epochs,
        learning_rate=training_args.learning_rate,
    )
    timing = P2DTimingCallback(request)
    callbacks = [*(callbacks or []), timing]
    if p2d.finetuning_type in ("p2d_heads", "lofit"):
        callbacks.append(FiniteLossGuard(_rate_note(p2d, training_args.learning_rate)))
    with opened(run):
        if training_args.process_index != 0:
            result = original(model_args, data_args, training_args, finetuning_args, generating_args, callbacks)
        else:
            with OutputDirLock(training_args.output_dir, command=" ".join(sys.argv)):
                result = original(model_args, data_args, training_args, finetuning_args, generating_args, callbacks)
    timing.raise_late_error()  # after LLaMA-Factory saved the model and train_results.json
    return result


def _rate_note(args: P2DArguments, rate: float) -> str:
    if args.finetuning_type == "lofit":
        return f"`learning_rate` {rate:.3g}"
    scale = args.p2d_head_lr_scale  # learning_rate was scaled at parse time
    return f"{rate:.3g} (`learning_rate` {rate / scale:.3g} x `p2d_head_lr_scale` {scale:g})"


def patch_tuner(module: ModuleType) -> None:
    wrap(module, "run_sft", run_sft)
