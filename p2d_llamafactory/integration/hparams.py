"""Patches of ``llamafactory.hparams.parser``: the ``p2d_*`` keys and ``finetuning_type: p2d_heads``."""

import copy
import logging
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

from llamafactory.hparams.finetuning_args import FinetuningArguments

from ..checks import (
    check_adapters,
    check_aer,
    check_data_selection,
    check_fsdp,
    check_head_sources,
    check_model_for_p2d,
    check_output_dir,
    scale_head_learning_rate,
)
from ..hparams import P2DArguments
from ..methods import FINETUNING_TYPES, HEAD_FINETUNING_TYPES
from . import share_llamafactory_logging, wrap
from .context import CURRENT


logger = logging.getLogger(__name__)
P2D_STAGES = ("sft",)
# options of other methods that P2D head adaptation cannot combine with
_INCOMPATIBLE = {
    "use_llama_pro": False,
    "use_galore": False,
    "use_apollo": False,
    "use_badam": False,
    "pissa_init": False,
    "use_dora": False,
    "use_rslora": False,
    "loraplus_lr_ratio": None,
}


@dataclass
class P2DFinetuningArguments(FinetuningArguments, P2DArguments):
    r"""LLaMA-Factory's fine-tuning arguments plus ``finetuning_type: p2d_heads`` and the ``p2d_*`` keys."""

    finetuning_type: Literal[FINETUNING_TYPES] = field(
        default="lora",
        metadata={
            "help": "Which fine-tuning method to use (p2d_heads: P2D sparse attention-head adaptation; lofit: LoFiT's "
            "per-head biases)."
        },
    )

    def __post_init__(self):
        if self.finetuning_type not in FINETUNING_TYPES:
            raise ValueError(
                f"`finetuning_type` must be one of {', '.join(FINETUNING_TYPES)}; got {self.finetuning_type!r}."
            )
        P2DArguments.__post_init__(self)
        if self.p2d_head_modules is not None and self.finetuning_type != "p2d_heads":
            raise ValueError(
                f"`p2d_head_modules` only applies to `finetuning_type: p2d_heads` (got {self.finetuning_type!r})."
            )
        if self.finetuning_type in HEAD_FINETUNING_TYPES:
            self._check_p2d_heads_compatible()
        requested = self.finetuning_type
        if requested in HEAD_FINETUNING_TYPES:  # the base class validates the other options as for a non-LoRA method
            self.finetuning_type = "freeze"
        try:
            FinetuningArguments.__post_init__(self)
        finally:
            self.finetuning_type = requested

    def _check_p2d_heads_compatible(self) -> None:
        method = f"`finetuning_type: {self.finetuning_type}`"
        if self.stage not in P2D_STAGES:
            raise ValueError(f"{method} supports `stage` {', '.join(P2D_STAGES)}; got {self.stage!r}.")
        for key, neutral in _INCOMPATIBLE.items():
            if getattr(self, key) != neutral:
                raise ValueError(f"`{key}` cannot be combined with {method}.")


def as_lora(finetuning_args: FinetuningArguments) -> FinetuningArguments:
    """A shallow copy that LLaMA-Factory treats as LoRA: P2D adapters are standard LoRA adapters."""
    clone = copy.copy(finetuning_args)
    clone.finetuning_type = "lora"
    return clone


def as_lora_for_training(training_args: Any) -> None:
    """What LLaMA-Factory's parser sets for LoRA only and a p2d_heads run (a PeftModel too) needs as well:
    ``label_names`` (the PeftModel's forward hides ``labels``) and, under DDP, ``ddp_find_unused_parameters=False``
    (with LLaMA-Factory's reentrant gradient checkpointing, DDP otherwise marks a parameter ready twice)."""
    from transformers.training_args import ParallelMode

    training_args.label_names = training_args.label_names or ["labels"]
    if training_args.parallel_mode == ParallelMode.DISTRIBUTED and training_args.ddp_find_unused_parameters is None:
        logger.info("P2D: set `ddp_find_unused_parameters` to False in DDP training, as LLaMA-Factory does for LoRA.")
        training_args.ddp_find_unused_parameters = False


def get_train_args(original, args=None):
    """Parse as usual, then run the P2D checks that need the model config, before anything is loaded."""
    model_args, data_args, training_args, finetuning_args, generating_args = original(args)
    check_adapters(model_args)
    if finetuning_args.uses_p2d:
        check_output_dir(training_args.output_dir)
    if finetuning_args.finetuning_type in HEAD_FINETUNING_TYPES:
        check_model_for_p2d(model_args, finetuning_args, training_args.do_train)
        if training_args.do_train:
            check_fsdp(training_args, finetuning_args.finetuning_type)
            if finetuning_args.finetuning_type == "p2d_heads":
                scale_head_learning_rate(training_args, finetuning_args)
            as_lora_for_training(training_args)
    elif training_args.do_train:
        check_head_sources(model_args, finetuning_args)
    check_data_selection(data_args, finetuning_args)
    check_aer(model_args, finetuning_args)
    for key, why in finetuning_args.ineffective_keys().items():
        logger.warning("P2D: `%s` has no effect in this run: %s.", key, why)
    CURRENT.model_args, CURRENT.finetuning_args, CURRENT.training_args = model_args, finetuning_args, training_args
    CURRENT.full_data_tokens = None
    return model_args, data_args, training_args, finetuning_args, generating_args


def get_infer_args(original, args=None):
    """Parse as usual; P2D adapters load for chat/export like LoRA adapters."""
    model_args, data_args, finetuning_args, generating_args = original(args)
    check_adapters(model_args)
    if finetuning_args.finetuning_type in HEAD_FINETUNING_TYPES:
        check_model_for_p2d(model_args, finetuning_args, do_train=False)
    return model_args, data_args, finetuning_args, generating_args


def _verify_model_args(original, model_args, data_args, finetuning_args):
    """Let ``finetuning_type: p2d_heads`` / ``lofit`` load adapters as LoRA does."""
    if finetuning_args.finetuning_type in HEAD_FINETUNING_TYPES:
        finetuning_args = as_lora(finetuning_args)
    return original(model_args, data_args, finetuning_args)


def patch_parser(module: ModuleType) -> None:
    for name in ("_TRAIN_ARGS", "_INFER_ARGS", "_EVAL_ARGS", "_TRAIN_MCA_ARGS"):
        classes = getattr(module, name)
        classes[:] = [P2DFinetuningArguments if cls is FinetuningArguments else cls for cls in classes]
    wrap(module, "get_train_args", get_train_args)
    wrap(module, "get_infer_args", get_infer_args)
    wrap(module, "_verify_model_args", _verify_model_args)
    share_llamafactory_logging()
