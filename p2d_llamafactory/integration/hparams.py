"""Patches of ``llamafactory.hparams.parser``: the ``p2d_*`` keys and ``finetuning_type: p2d_heads``."""

import contextlib
import copy
import logging
import sys
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

from llamafactory.hparams.finetuning_args import FinetuningArguments

from ..checks import check_output_dir, head_learning_rate
from ..hparams import P2DArguments, default_of, p2d_keys
from ..methods import HEAD_FINETUNING_TYPES
from . import share_llamafactory_logging, wrap
from .checks import (
    check_adapters,
    check_aer,
    check_data_selection,
    check_fsdp,
    check_head_sources_of_run,
    check_model_for_p2d,
    check_quantization,
)


logger = logging.getLogger(__name__)
P2D_STAGES = ("sft",)
PARSER = "llamafactory.hparams.parser"
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


# LLaMA-Factory's argument lists whose runs P2D joins (training; chat, export and evaluation load P2D adapters). Any
# other list holding the fine-tuning arguments (MCA, Megatron Bridge, a later one) gets the p2d_* keys only to refuse
# them by name: those runs train through their own workflows, without the functions the plugin patches.
P2D_ARGUMENT_LISTS = ("_TRAIN_ARGS", "_INFER_ARGS", "_EVAL_ARGS")
OTHER_RUNS = {"_TRAIN_MCA_ARGS": "MCA (USE_MCA=1)", "_TRAIN_MBRIDGE_ARGS": "Megatron Bridge (USE_MEGATRON_BRIDGE=1)"}
_CLASSES: dict[tuple[type, str | None], type] = {}  # (base, refusal) -> its P2D class, built once per process


def _stock_finetuning_types(base: type) -> tuple[str, ...]:
    """The ``finetuning_type`` values ``base`` declares (its Literal), in order."""
    hint = typing.get_type_hints(base).get("finetuning_type")
    return tuple(typing.get_args(hint)) if typing.get_origin(hint) is Literal else ()


def _p2d_post_init(self) -> None:
    """Validate the P2D keys, then run the base class's own checks (for p2d_heads/lofit as for freeze tuning)."""
    cls = type(self)
    allowed = cls.__p2d_finetuning_types__
    if self.finetuning_type not in allowed:
        raise ValueError(f"`finetuning_type` must be one of {', '.join(allowed)}; got {self.finetuning_type!r}.")
    if cls.__p2d_refusal__ is not None:
        used = [key for key in p2d_keys(cls) if getattr(self, key) != default_of(key, cls)]
        if self.finetuning_type in HEAD_FINETUNING_TYPES or used:
            what = ", ".join(f"`{key}`" for key in used) or f"`finetuning_type: {self.finetuning_type}`"
            raise ValueError(f"P2D does not run under {cls.__p2d_refusal__}; remove {what} or train without it.")
    P2DArguments.__post_init__(self)
    if self.p2d_head_modules is not None and self.finetuning_type != "p2d_heads":
        raise ValueError(
            f"`p2d_head_modules` only applies to `finetuning_type: p2d_heads` (got {self.finetuning_type!r})."
        )
    if self.finetuning_type in HEAD_FINETUNING_TYPES:
        _check_p2d_heads_compatible(self)
    requested = self.finetuning_type
    if requested in HEAD_FINETUNING_TYPES:  # the base class validates the other options as for a non-LoRA method
        self.finetuning_type = "freeze"
    try:
        cls.__p2d_base__.__post_init__(self)
    finally:
        self.finetuning_type = requested


def _check_p2d_heads_compatible(args) -> None:
    method = f"`finetuning_type: {args.finetuning_type}`"
    if args.stage not in P2D_STAGES:
        raise ValueError(f"{method} supports `stage` {', '.join(P2D_STAGES)}; got {args.stage!r}.")
    for key, neutral in _INCOMPATIBLE.items():
        if getattr(args, key, neutral) != neutral:
            raise ValueError(f"`{key}` cannot be combined with {method}.")


def p2d_arguments_class(base: type, refusal: str | None = None) -> type:
    """``base`` (LLaMA-Factory's ``FinetuningArguments`` or another extension's subclass of it) with
    ``finetuning_type: p2d_heads | lofit`` and the ``p2d_*`` keys. ``refusal``: the kind of run the class parses
    for, where P2D does not run; its keys then exist only to be refused by name."""
    if issubclass(base, P2DArguments):
        return base
    key = (base, refusal)
    if key not in _CLASSES:
        finetuning_types = tuple(dict.fromkeys((*_stock_finetuning_types(base), *HEAD_FINETUNING_TYPES)))
        namespace = {
            "__module__": __name__,
            "__doc__": f"{base.__name__} plus ``finetuning_type: p2d_heads | lofit`` and the ``p2d_*`` keys.",
            "__annotations__": {"finetuning_type": Literal[finetuning_types]},
            "finetuning_type": field(
                default=base.__dataclass_fields__["finetuning_type"].default,
                metadata={
                    "help": "Which fine-tuning method to use (p2d_heads: P2D sparse attention-head adaptation; "
                    "lofit: LoFiT's per-head biases)."
                },
            ),
            "__post_init__": _p2d_post_init,
            "__p2d_base__": base,
            "__p2d_refusal__": refusal,
            "__p2d_finetuning_types__": finetuning_types,
        }
        name = "P2DFinetuningArguments" if base is FinetuningArguments else f"P2D{base.__name__}"
        _CLASSES[key] = dataclass(type(name, (base, P2DArguments), namespace))
    return _CLASSES[key]


P2DFinetuningArguments = p2d_arguments_class(FinetuningArguments)


def extend_argument_lists(parser: ModuleType) -> None:
    """Give every fine-tuning arguments class in the parser's argument lists the P2D keys: LLaMA-Factory's own and
    any subclass another extension put there, whenever it did (called at patch time and again before each parse)."""
    for name, classes in list(vars(parser).items()):
        if not (name.startswith("_") and name.endswith("_ARGS") and isinstance(classes, list)):
            continue
        refusal = None if name in P2D_ARGUMENT_LISTS else OTHER_RUNS.get(name, f"LLaMA-Factory's `{name}` runs")
        classes[:] = [
            p2d_arguments_class(cls, refusal)
            if isinstance(cls, type) and issubclass(cls, FinetuningArguments)
            else cls
            for cls in classes
        ]


def p2d_args(finetuning_args: Any) -> P2DArguments | None:
    """The run's arguments if they carry the P2D keys (another extension may have parsed with its own class)."""
    return finetuning_args if isinstance(finetuning_args, P2DArguments) else None


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


@contextlib.contextmanager
def _override_hint(args) -> Iterator[None]:
    """A parse error of ``llamafactory-cli train run.yaml --key value`` gets the form LLaMA-Factory takes after a
    YAML path, ``key=value``."""
    try:
        yield
    except ValueError as err:
        argv = sys.argv[1:] if args is None else []
        flags = (
            [item for item in argv[1:] if item.startswith("--")]
            if argv[:1] and argv[0].endswith((".yaml", ".yml", ".json"))
            else []
        )
        if not flags:
            raise
        key = flags[0].lstrip("-").split("=")[0]
        raise ValueError(
            f"{err}\nAfter a YAML path LLaMA-Factory takes overrides as key=value: write `{key}=...`, not `{flags[0]} ...`."
        ) from err


def get_train_args(original, args=None):
    """Parse as usual, then run the P2D checks that need the model config, before anything is loaded. A run that
    uses no P2D feature is left as LLaMA-Factory parsed it, and the plugin keeps nothing of it."""
    extend_argument_lists(
        sys.modules[PARSER]
    )  # another extension may have put its own class there after the plugin's patch
    with _override_hint(args):
        model_args, data_args, training_args, finetuning_args, generating_args = original(args)
    check_adapters(model_args, finetuning_args)
    p2d = p2d_args(finetuning_args)
    if p2d is None or not p2d.uses_p2d:
        if p2d is not None and training_args.do_train:
            check_head_sources_of_run(model_args, p2d)
        if p2d is not None:
            _warn_ineffective(p2d)
        return model_args, data_args, training_args, finetuning_args, generating_args
    check_own_call_sites(p2d)
    check_output_dir(training_args.output_dir)
    check_quantization(model_args, p2d, training_args.do_train)
    if p2d.finetuning_type in HEAD_FINETUNING_TYPES:
        check_model_for_p2d(model_args, p2d, training_args.do_train)
        if training_args.do_train:
            check_fsdp(training_args, p2d.finetuning_type)
            if p2d.finetuning_type == "p2d_heads":
                training_args.learning_rate = head_learning_rate(training_args.learning_rate, p2d.p2d_head_lr_scale)
            as_lora_for_training(training_args)
    elif training_args.do_train:
        check_head_sources_of_run(model_args, p2d)
    check_data_selection(data_args, p2d)
    check_aer(model_args, p2d)
    _warn_ineffective(p2d)
    return model_args, data_args, training_args, finetuning_args, generating_args


# where LLaMA-Factory's SFT path calls what the plugin wraps for a P2D run (stages I and II run in get_dataset, stage
# III is set up in init_adapter, the timing callback and the output dir's lock join in run_sft)
P2D_CALL_SITES = (
    ("llamafactory.train.sft.workflow", "get_dataset"),
    ("llamafactory.data.loader", "get_dataset"),
    ("llamafactory.model.loader", "init_adapter"),
    ("llamafactory.train.tuner", "run_sft"),
)


def check_own_call_sites(args: P2DArguments) -> None:
    """Refuse, naming it, a P2D run where another extension replaced a function the plugin wraps (DataFlex's
    dynamic_mix, dynamic_lego and raw-row dynamic_reorder replace get_dataset), rather than crash or skip a stage
    later; a run without P2D never gets here."""
    for module, name in P2D_CALL_SITES:
        function = getattr(sys.modules.get(module), name, None)
        if function is not None and getattr(function, "__p2d_original__", None) is None:
            train_type = getattr(args, "train_type", None)  # DataFlex's mode, if DataFlex parsed the run
            raise ValueError(
                f"P2D needs LLaMA-Factory's `{name}`, but `{module}.{name}` is replaced by "
                f"{function.__module__}.{function.__qualname__}"
                + (f" (DataFlex `train_type: {train_type}`)" if train_type else "")
                + ". Remove the `p2d_*` keys and the P2D `finetuning_type`, or use a mode that keeps LLaMA-Factory's "
                f"{name} (DataFlex: static, dynamic_select, dynamic_weight, or dynamic_reorder with `apply_at: index`)."
            )


def _warn_ineffective(args: P2DArguments) -> None:
    for key, why in args.ineffective_keys().items():
        logger.warning("P2D: `%s` has no effect in this run: %s.", key, why)


def get_infer_args(original, args=None):
    """Parse as usual; P2D adapters load for chat/export like LoRA adapters."""
    extend_argument_lists(sys.modules[PARSER])
    model_args, data_args, finetuning_args, generating_args = original(args)
    check_adapters(model_args, finetuning_args)
    if getattr(finetuning_args, "finetuning_type", None) in HEAD_FINETUNING_TYPES:
        check_model_for_p2d(model_args, finetuning_args, do_train=False)
        check_quantization(model_args, finetuning_args, do_train=False)
    return model_args, data_args, finetuning_args, generating_args


def _verify_model_args(original, model_args, data_args, finetuning_args):
    """Let ``finetuning_type: p2d_heads`` / ``lofit`` load adapters as LoRA does."""
    if getattr(finetuning_args, "finetuning_type", None) in HEAD_FINETUNING_TYPES:
        finetuning_args = as_lora(finetuning_args)
    return original(model_args, data_args, finetuning_args)


def patch_parser(module: ModuleType) -> None:
    extend_argument_lists(module)
    wrap(module, "get_train_args", get_train_args)
    wrap(module, "get_infer_args", get_infer_args)
    wrap(module, "_verify_model_args", _verify_model_args)
    share_llamafactory_logging()
