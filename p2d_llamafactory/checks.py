"""Parse-time checks of a run's arguments: everything that can be refused from the arguments and the model's
config alone, before any data or weights load and before anything is written. ``integration.hparams`` calls them
from its ``get_train_args`` / ``get_infer_args`` wrappers."""

import logging
import os
from typing import Any

from .hparams import count_for_ratio


logger = logging.getLogger(__name__)
LOW_HEAD_LR = 2e-4  # head-slice rates below this left the model near the untrained one (docs/tuning.md)


def check_model_for_p2d(model_args: Any, finetuning_args: Any, do_train: bool) -> None:
    """Checks that need the model's config (not its weights): run before any data or weights are loaded."""
    from transformers import AutoConfig
    from transformers.integrations import is_deepspeed_zero3_enabled

    from .heads.layout import UnsupportedModelError, layout_from_config

    method = f"`finetuning_type: {finetuning_args.finetuning_type}`"
    if model_args.quantization_bit is not None:
        raise ValueError(
            f"{method} trains per-head parameters of the full-precision model; `quantization_bit="
            f"{model_args.quantization_bit}` is not supported."
        )
    if do_train and model_args.adapter_name_or_path is not None:
        raise ValueError(
            f"{method} training starts from the base model; merge `adapter_name_or_path` first "
            "(llamafactory-cli export) or continue a run with `resume_from_checkpoint`."
        )
    if model_args.use_unsloth or getattr(model_args, "use_kt", False):
        raise ValueError(f"{method} does not support `use_unsloth` or `use_kt`.")
    if not do_train:
        return
    if is_deepspeed_zero3_enabled():
        check_zero3(finetuning_args, method)
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    if getattr(config, "quantization_config", None) is not None:
        raise ValueError(f"{method} needs a full-precision model; {model_args.model_name_or_path} is quantized.")
    try:
        layout = layout_from_config(config)
    except UnsupportedModelError as err:
        raise ValueError(f"{method} cannot find this model's heads: {err}") from None
    check_head_ratio(finetuning_args.p2d_head_ratio, layout)
    check_head_sources(model_args, finetuning_args, config, layout)


def check_fsdp(training_args: Any, finetuning_type: str = "p2d_heads") -> None:
    """Per-head training under FSDP is refused: plain DDP and DeepSpeed ZeRO-0/1/2/3 are the tested ways to train
    on several devices (FSDP would flatten the frozen one-hot factors together with the trainable ones)."""
    fsdp = getattr(training_args, "fsdp", None)
    if fsdp or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        raise ValueError(
            f"`finetuning_type: {finetuning_type}` does not support FSDP (`fsdp` / accelerate's FSDP plugin); train with plain "
            "DDP (FORCE_TORCHRUN=1) or DeepSpeed (`deepspeed: yaml_examples/deepspeed/ds_z2_config.json` or ds_z3_config.json)."
        )


def check_head_ratio(ratio: float, layout: Any) -> None:
    """``p2d_head_ratio`` must select at least one head of this model."""
    if count_for_ratio(ratio, layout.total_heads) < 1:
        raise ValueError(
            f"`p2d_head_ratio: {ratio}` selects 0 of the {layout.total_heads} heads of this model; use a value in "
            f"[{0.5 / layout.total_heads:.4g}, 1]."
        )


def _task_config(path: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"`p2d_task_model` {path!r} is not a model folder (nor a model this machine can load): {err}"
        ) from None


def check_head_sources(model_args: Any, finetuning_args: Any, config=None, layout=None) -> None:
    """``p2d_heads_file`` and ``p2d_task_model``, with any finetuning_type: they exist and fit the base model."""
    from transformers import AutoConfig

    from .heads.headset import HeadSet
    from .heads.layout import UnsupportedModelError, layout_from_config

    heads_file, task_model = finetuning_args.p2d_heads_file, finetuning_args.p2d_task_model
    if heads_file is None and task_model is None:
        return
    heads = HeadSet.load(heads_file) if heads_file is not None else None  # form errors before any model access
    task_config = _task_config(task_model) if task_model is not None else None
    if config is None:
        config = AutoConfig.from_pretrained(
            model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code
        )
        try:
            layout = layout_from_config(config)
        except UnsupportedModelError as err:
            raise ValueError(f"`p2d_heads_file`/`p2d_task_model` need a model with attention heads: {err}") from None
    if heads is not None:
        heads.check_shape(layout)
    if task_config is not None:
        if task_config.model_type != config.model_type:
            raise ValueError(
                f"`p2d_task_model` is a {task_config.model_type} model; the base model is {config.model_type}."
            )
        task_layout = layout_from_config(task_config)
        if task_layout.shape() != layout.shape():
            raise ValueError(
                f"`p2d_task_model` has attention shape {task_layout.shape()}; the base model has {layout.shape()}."
            )


def check_zero3(finetuning_args: Any, method: str) -> None:
    """Under DeepSpeed ZeRO-3 P2D reads whole copies of the weights for stages I and II; LoFiT's step 1 and the
    AER's timed full fine-tuning steps would run on the partitioned model, so they are refused."""
    if finetuning_args.finetuning_type == "lofit":
        raise ValueError(f"{method} supports DeepSpeed ZeRO stages 0-2, not ZeRO-3; use ZeRO-2 (or `p2d_heads`).")
    if finetuning_args.p2d_aer_estimate_steps is not None:
        raise ValueError(
            "`p2d_aer_estimate_steps` times full fine-tuning steps of the model, which DeepSpeed ZeRO-3 partitions over "
            "the ranks; give `p2d_aer_reference` (a full fine-tuning run's output dir) instead."
        )


def check_data_selection(data_args: Any, finetuning_args: Any) -> None:
    """Data selection needs raw SFT examples and, for p2d, a head set."""
    import os

    method = finetuning_args.p2d_data_selection
    if method == "none":
        return
    if finetuning_args.stage != "sft":
        raise ValueError(f"`p2d_data_selection` applies to `stage: sft`; got {finetuning_args.stage!r}.")
    if data_args.streaming:
        raise ValueError("`p2d_data_selection` needs the whole training split; turn off `streaming`.")
    if data_args.tokenized_path is not None and os.path.isdir(data_args.tokenized_path):
        raise ValueError(
            f"`tokenized_path` {data_args.tokenized_path!r} holds already tokenized data, which skips "
            "`p2d_data_selection`; remove it or point it to a new folder."
        )
    scores_file = finetuning_args.p2d_data_scores_file
    if scores_file is not None and not os.path.isfile(scores_file):
        raise ValueError(f"`p2d_data_scores_file` {scores_file!r} does not exist (a run's p2d_data_scores.json).")
    if method == "p2d" and finetuning_args.finetuning_type != "p2d_heads" and finetuning_args.p2d_heads_file is None:
        raise ValueError(
            "`p2d_data_selection: p2d` needs a head set: use `finetuning_type: p2d_heads` (stage I finds the heads) "
            "or set `p2d_heads_file` (with `finetuning_type: lofit` too: LoFiT ranks its own heads for training, "
            "not for selection)."
        )


def check_aer(model_args: Any, finetuning_args: Any) -> None:
    """AER requests that cannot work fail before anything runs."""
    import os

    if finetuning_args.p2d_aer_estimate_steps is not None and model_args.quantization_bit is not None:
        raise ValueError(
            "`p2d_aer_estimate_steps` times full fine-tuning steps, which this run cannot do: the model is loaded "
            f"with `quantization_bit={model_args.quantization_bit}`. Give `p2d_aer_reference` instead."
        )
    if finetuning_args.p2d_aer_reference is not None:
        if not os.path.isdir(finetuning_args.p2d_aer_reference):
            raise ValueError(f"`p2d_aer_reference` {finetuning_args.p2d_aer_reference!r} is not a directory.")
        from .report.aer import reference_training_seconds

        reference_training_seconds(finetuning_args.p2d_aer_reference)


def scale_head_learning_rate(training_args: Any, finetuning_args: Any) -> None:
    """Head slices train at ``learning_rate * p2d_head_lr_scale``; warn where that rate barely moves them."""
    scale = float(finetuning_args.p2d_head_lr_scale)
    given = training_args.learning_rate
    training_args.learning_rate = given * scale
    if scale != 1.0:
        logger.info(
            "P2D: head slices train at learning_rate %.3g x p2d_head_lr_scale %g = %.3g", given, scale, given * scale
        )
    if given * scale < LOW_HEAD_LR:
        logger.warning(
            "P2D: the head slices train at %.3g, a rate at which ~1%% of the weights barely move (measured in "
            "docs/tuning.md: near the untrained model below %.0e). Raise `learning_rate` or `p2d_head_lr_scale` "
            "unless you follow a protocol that fixes it.",
            given * scale,
            LOW_HEAD_LR,
        )


def check_adapters(model_args: Any) -> None:
    """A P2D adapter (a folder holding ``p2d_heads.json``) loads only onto a base model of the shape it was made
    for, whatever the finetuning_type: peft itself would merge a 3-layer adapter into a 4-layer model silently."""
    import os

    from transformers import AutoConfig

    from .heads.headset import HEADS_FILE, HeadSet
    from .heads.layout import UnsupportedModelError, layout_from_config

    paths = model_args.adapter_name_or_path or []
    found = [
        (path, os.path.join(path, HEADS_FILE)) for path in paths if os.path.isfile(os.path.join(path, HEADS_FILE))
    ]
    if not found:
        return
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    try:
        layout = layout_from_config(config)
    except UnsupportedModelError as err:
        raise ValueError(
            f"`adapter_name_or_path` holds a P2D adapter, which this base model cannot take: {err}"
        ) from None
    for path, heads_file in found:
        head_set = HeadSet.load(heads_file)
        if head_set.shape != layout.shape():
            raise ValueError(
                f"`adapter_name_or_path` {path!r} is a P2D adapter of a model shaped {head_set.shape} "
                f"({head_set.model or 'unknown'}); `model_name_or_path` {model_args.model_name_or_path!r} is shaped "
                f"{layout.shape()}. Load it onto the base model it was trained on."
            )


def check_output_dir(output_dir: str) -> None:
    """A P2D run writes its stage results into ``output_dir``: refuse one that cannot be, before any work."""
    import os

    path = os.path.abspath(output_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"`output_dir` {output_dir!r} is a file, not a directory.")
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"`output_dir` {output_dir!r} cannot be written ({existing!r} is not a writable directory).")
