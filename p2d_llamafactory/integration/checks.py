"""Checks of a LLaMA-Factory run's own arguments (model, data, training) for P2D: everything refused from the
parsed arguments and the model's config alone, before any data or weights load and before anything is written.
``integration.hparams`` calls them from its ``get_train_args`` / ``get_infer_args`` wrappers; the checks of the P2D
arguments alone are in ``p2d_llamafactory.checks``."""

import importlib.util
import os
from typing import Any

from ..checks import check_aer_reference, check_head_ratio, check_head_sources, check_quantized_base
from ..models import Quantization


def check_model_for_p2d(model_args: Any, finetuning_args: Any, do_train: bool) -> None:
    """Checks that need the model's config (not its weights): run before any data or weights are loaded."""
    from transformers import AutoConfig
    from transformers.integrations import is_deepspeed_zero3_enabled

    from ..heads.layout import UnsupportedModelError, layout_from_config

    method = f"`finetuning_type: {finetuning_args.finetuning_type}`"
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
        raise ValueError(
            f"{method} needs a full-precision checkpoint; {model_args.model_name_or_path} is saved quantized. Train "
            "from its full-precision original with `quantization_bit: 4` (or 8): bitsandbytes quantizes it as it loads."
        )
    try:
        layout = layout_from_config(config)
    except UnsupportedModelError as err:
        raise ValueError(f"{method} cannot find this model's heads: {err}") from None
    check_head_ratio(finetuning_args.p2d_head_ratio, layout, finetuning_args.p2d_head_trainable_layers)
    check_head_sources(finetuning_args, config, layout)


def run_quantization(model_args: Any) -> Quantization | None:
    """The run's ``quantization_bit`` settings, as the stages load the base with them (None: full precision)."""
    if model_args.quantization_bit is None:
        return None
    quant_type = getattr(model_args, "quantization_type", "nf4")
    return Quantization(model_args.quantization_bit, quant_type, getattr(model_args, "double_quantization", True))


def check_quantization(model_args: Any, finetuning_args: Any, do_train: bool) -> None:
    """A base quantized as it loads (``quantization_bit``, QLoRA-style) for a P2D run: bitsandbytes with 4 or 8 bits,
    and no stage that needs float weights of the whole model. Refused before anything loads."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    if model_args.quantization_bit is None:
        return
    quantization_method = getattr(model_args, "quantization_method", "bnb")
    quantization_method = getattr(quantization_method, "value", quantization_method)
    if quantization_method != "bnb":
        raise ValueError(
            f"P2D supports `quantization_method: bnb` (bitsandbytes) with `quantization_bit`; got {quantization_method!r}."
        )
    run_quantization(model_args)  # bits and type
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("`quantization_bit` needs bitsandbytes: pip install bitsandbytes")
    if not do_train:
        return
    if is_deepspeed_zero3_enabled():
        raise ValueError(
            "P2D on a quantized base (`quantization_bit`) runs without DeepSpeed ZeRO-3; use ZeRO-2 or plain DDP."
        )
    if finetuning_args.finetuning_type == "p2d_heads":
        check_quantized_base(finetuning_args)


def check_fsdp(training_args: Any, finetuning_type: str = "p2d_heads") -> None:
    """Per-head training under FSDP is refused: plain DDP and DeepSpeed ZeRO-0/1/2/3 are the tested ways to train
    on several devices (FSDP would flatten the frozen one-hot factors together with the trainable ones)."""
    fsdp = getattr(training_args, "fsdp", None)
    if fsdp or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
        raise ValueError(
            f"`finetuning_type: {finetuning_type}` does not support FSDP (`fsdp` / accelerate's FSDP plugin); train with plain "
            "DDP (FORCE_TORCHRUN=1) or DeepSpeed (`deepspeed: yaml_examples/deepspeed/ds_z2_config.json` or ds_z3_config.json)."
        )


def check_head_sources_of_run(model_args: Any, finetuning_args: Any) -> None:
    """``p2d_heads_file`` and ``p2d_task_model``, with any finetuning_type, against ``model_name_or_path``."""
    from transformers import AutoConfig

    from ..heads.headset import HeadSet
    from ..heads.layout import UnsupportedModelError, layout_from_config

    if finetuning_args.p2d_heads_file is None and finetuning_args.p2d_task_model is None:
        return
    if finetuning_args.p2d_heads_file is not None:
        HeadSet.load(finetuning_args.p2d_heads_file)  # form errors before any model access
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    try:
        layout = layout_from_config(config)
    except UnsupportedModelError as err:
        raise ValueError(f"`p2d_heads_file`/`p2d_task_model` need a model with attention heads: {err}") from None
    check_head_sources(finetuning_args, config, layout)


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
    if finetuning_args.p2d_aer_estimate_steps is not None and model_args.quantization_bit is not None:
        raise ValueError(
            "`p2d_aer_estimate_steps` times full fine-tuning steps, which this run cannot do: the model is loaded "
            f"with `quantization_bit={model_args.quantization_bit}`. Give `p2d_aer_reference` instead."
        )
    check_aer_reference(finetuning_args)


def check_adapters(model_args: Any, finetuning_args: Any = None) -> None:
    """A P2D adapter (a folder holding ``p2d_heads.json``) loads only onto a base model of the shape it was made
    for, whatever the finetuning_type: peft itself would merge a 3-layer adapter into a 4-layer model silently."""

    from transformers import AutoConfig

    from ..adapter.config import matching_slices
    from ..files import HEADS_FILE, LOFIT_HEADS_FILE, MERGED_KEY, adapter_digest, read_record
    from ..heads.headset import HeadSet
    from ..heads.layout import UnsupportedModelError, layout_from_config

    paths = model_args.adapter_name_or_path or []
    finetuning_type = getattr(finetuning_args, "finetuning_type", None)
    for path in paths:
        if os.path.isfile(os.path.join(path, LOFIT_HEADS_FILE)) and finetuning_type not in (None, "lofit"):
            raise ValueError(
                f"`adapter_name_or_path` {path!r} is a LoFiT adapter (it holds {LOFIT_HEADS_FILE}); load or export it "
                f"with `finetuning_type: lofit`, not {finetuning_type!r}."
            )
    found = [
        (path, os.path.join(path, HEADS_FILE)) for path in paths if os.path.isfile(os.path.join(path, HEADS_FILE))
    ]
    lofit = [path for path in paths if os.path.isfile(os.path.join(path, LOFIT_HEADS_FILE))]
    if not found and not lofit:
        return
    if getattr(model_args, "export_dir", None) and model_args.quantization_bit is not None:
        raise ValueError(
            f"Export merges the P2D adapter into the base model's weights, which `quantization_bit="
            f"{model_args.quantization_bit}` would load quantized: remove `quantization_bit` from the export YAML. An "
            "adapter trained on a quantized base merges onto the full-precision one, as LoRA's export does."
        )
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    merged = getattr(config, MERGED_KEY, None) or []
    for path in [*(path for path, _ in found), *lofit]:
        if adapter_digest(path) in merged:
            raise ValueError(
                f"`adapter_name_or_path` {path!r} is already merged into `model_name_or_path` "
                f"{model_args.model_name_or_path!r} (exported from it): loading it again would apply its update twice. "
                "Use the merged model alone, or the adapter on the base model it was trained on."
            )
    if not found:
        return
    try:
        layout = layout_from_config(config)
    except UnsupportedModelError as err:
        raise ValueError(
            f"`adapter_name_or_path` holds a P2D adapter, which this base model cannot take: {err}"
        ) from None
    for path, heads_file in found:
        head_set = HeadSet.load(heads_file, source="adapter_name_or_path")
        if head_set.shape != layout.shape():
            raise ValueError(
                f"`adapter_name_or_path` {path!r} is a P2D adapter of a model shaped {head_set.shape} "
                f"({head_set.model or 'unknown'}); `model_name_or_path` {model_args.model_name_or_path!r} is shaped "
                f"{layout.shape()}. Load it onto the base model it was trained on."
            )
        adapter_config = read_record(os.path.join(path, "adapter_config.json"))  # without one peft refuses it
        if adapter_config is not None and matching_slices(layout, head_set.selected, adapter_config) is None:
            raise ValueError(
                f"`adapter_name_or_path` {path!r}: its adapter_config.json (target modules and ranks) does not match "
                f"the head slices of its {HEADS_FILE}: one of the two was edited. Use the folder as the run saved it."
            )
