"""Checks of the P2D arguments alone (with the model's config and head layout where they need it): everything the
Python API and a LLaMA-Factory run refuse alike, before any data or weights load and before anything is written.
The checks of LLaMA-Factory's own arguments are in ``integration.checks``."""

import logging
import math
from typing import Any

from .hparams import count_for_ratio


logger = logging.getLogger(__name__)
LOW_HEAD_LR = 2e-4  # head-slice rates below this left the model near the untrained one (docs/tuning.md)


def check_head_ratio(ratio: float, layout: Any, trainable_layers: int | None = None) -> None:
    """``p2d_head_ratio`` must select at least one head of this model, and no more than the layers that
    ``p2d_head_trainable_layers`` allows hold."""
    count = count_for_ratio(ratio, layout.total_heads)
    if count < 1:
        lowest = 0.5 / layout.total_heads  # the smallest ratio that keeps one head (round half up)
        digits = 2 - math.floor(math.log10(lowest))  # three significant digits, rounded up: the bound itself works
        shown = math.ceil(lowest * 10**digits) / 10**digits
        raise ValueError(
            f"`p2d_head_ratio: {ratio}` selects 0 of the {layout.total_heads} heads of this model; use a value in "
            f"[{shown:g}, 1] ({shown:g} keeps 1 head)."
        )
    if not trainable_layers:
        return
    layers = layout.num_layers
    if abs(trainable_layers) > layers:
        raise ValueError(
            f"`p2d_head_trainable_layers: {trainable_layers}` asks for more layers than this model's {layers}; use "
            f"a value in [1, {layers}] (the last n layers) or [-{layers}, -1] (the first n), or leave it out."
        )
    allowed = abs(trainable_layers) * layout.num_heads
    if count > allowed:
        needed = math.ceil(count / layout.num_heads)
        which = "last" if trainable_layers > 0 else "first"
        raise ValueError(
            f"`p2d_head_ratio: {ratio}` keeps {count} heads, but the {which} {abs(trainable_layers)} layers that "
            f"`p2d_head_trainable_layers: {trainable_layers}` allows hold only {allowed}; allow at least {needed} "
            f"layers, or lower `p2d_head_ratio`."
        )


def _task_config(path: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"`p2d_task_model` {path!r} is not a model folder (nor a model this machine can load): {err}"
        ) from None


def check_head_sources(args: Any, config: Any, layout: Any) -> None:
    """``p2d_heads_file`` and ``p2d_task_model``: they exist and fit the base model (its ``config`` and head
    ``layout``)."""
    from .heads.headset import HeadSet
    from .heads.layout import layout_from_config

    heads_file, task_model = args.p2d_heads_file, args.p2d_task_model
    if heads_file is not None:
        HeadSet.load(heads_file).check_shape(layout)
    if task_model is None:
        return
    task_config = _task_config(task_model)
    if task_config.model_type != config.model_type:
        raise ValueError(
            f"`p2d_task_model` is a {task_config.model_type} model; the base model is {config.model_type}."
        )
    task_layout = layout_from_config(task_config)
    if task_layout.shape() != layout.shape():
        raise ValueError(
            f"`p2d_task_model` has attention shape {task_layout.shape()}; the base model has {layout.shape()}."
        )


def check_quantized_base(args: Any) -> None:
    """Stage I on a base quantized by bitsandbytes: refused where it would need full-precision weights of the whole
    model (the `all` proxy) or of the base next to a task model."""
    from .heads.proxy import QUANTIZED_ALL
    from .methods import PROXY_SCORERS

    if args.p2d_heads_file is not None:
        return
    if args.p2d_task_model is not None:
        raise ValueError(
            "`p2d_task_model` is compared with the base model's full-precision weights, which a base quantized by "
            "bitsandbytes (`quantization_bit`) does not have: their quantization error would swamp the task's "
            "changes. Score the task model's heads on the unquantized base and give that p2d_heads.json as "
            "`p2d_heads_file`."
        )
    if args.p2d_head_selection in PROXY_SCORERS and args.p2d_fhi_trainable == "all":
        raise ValueError(QUANTIZED_ALL)


def check_aer_reference(args: Any) -> None:
    """``p2d_aer_reference`` is a finished full fine-tuning run whose training time can be read."""
    import os

    if args.p2d_aer_reference is not None:
        if not os.path.isdir(args.p2d_aer_reference):
            raise ValueError(f"`p2d_aer_reference` {args.p2d_aer_reference!r} is not a directory.")
        from .report.aer import reference_training_seconds

        reference_training_seconds(args.p2d_aer_reference)


def head_learning_rate(learning_rate: float, scale: float) -> float:
    """The rate the head slices train at, ``learning_rate * p2d_head_lr_scale``; warns where it barely moves them."""
    rate = learning_rate * float(scale)
    if float(scale) != 1.0:
        logger.info(
            "P2D: head slices train at learning_rate %.3g x p2d_head_lr_scale %g = %.3g", learning_rate, scale, rate
        )
    if rate < LOW_HEAD_LR:
        logger.warning(
            "P2D: the head slices train at %.3g, a rate at which ~1%% of the weights barely move (measured in "
            "docs/tuning.md: near the untrained model below %.0e). Raise `learning_rate` or `p2d_head_lr_scale` "
            "unless you follow a protocol that fixes it.",
            rate,
            LOW_HEAD_LR,
        )
    return rate


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
