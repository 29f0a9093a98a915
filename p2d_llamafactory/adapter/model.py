"""Turn a model into a PeftModel whose only trainable parameters are the selected heads' slices, and the one save
path of P2D adapters."""

from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from torch import nn

from ..heads.headset import HeadSet
from ..heads.layout import AttentionLayout
from .config import SliceTarget, lora_config, slice_targets
from .layer import fixed_factor, init_head_slice


def apply_head_slices(
    model: nn.Module,
    layout: AttentionLayout,
    selected: list[tuple[int, int]],
    modules: tuple[str, ...],
    adapter_name: str = "default",
) -> PeftModel:
    """Wrap ``model`` so that only the q/k/v rows and o columns of the ``selected`` heads train."""
    targets = slice_targets(layout, selected, modules)
    peft_model = get_peft_model(model, lora_config(targets), adapter_name=adapter_name)
    base = peft_model.get_base_model()
    for target in targets:
        init_head_slice(base.get_submodule(target.module), adapter_name, target)
    _complete_saved_state_dicts(peft_model, targets, adapter_name)
    return peft_model


def _complete_saved_state_dicts(peft_model: PeftModel, targets: list[SliceTarget], adapter_name: str) -> None:
    """``peft_model.save_pretrained(state_dict=...)`` adds the fixed one-hot factors that the given state dict lacks:
    under DeepSpeed ZeRO-3 the Trainer gathers a PEFT model's trainable parameters only, and the artifact needs both
    factors."""
    base = peft_model.get_base_model()
    fixed = {}
    for target in targets:
        layer = base.get_submodule(target.module)
        name, factor = fixed_factor(target, layer.in_features, layer.out_features)
        fixed[f"base_model.model.{target.module}.{name}.{adapter_name}.weight"] = factor
    save_pretrained = peft_model.save_pretrained

    def save_complete(save_directory, *args, state_dict=None, **kwargs):
        if state_dict is not None:
            dtype = next((v.dtype for k, v in state_dict.items() if "lora_" in k), torch.float32)
            missing = {key: value.to(dtype) for key, value in fixed.items() if key not in state_dict}
            state_dict = {**state_dict, **missing}
        return save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)

    peft_model.save_pretrained = save_complete


def save_head_set_with_adapter(peft_model: PeftModel, head_set: HeadSet, file_name: str) -> None:
    """Every save of ``peft_model`` (a Trainer's checkpoints and final save, also under ZeRO-3 with only the trainable
    tensors; the API's ``save_pretrained``) writes ``head_set`` as ``file_name`` next to the adapter weights, so a
    saved adapter can be checked against the base model it is loaded onto. Wraps the instance's own
    ``save_pretrained`` (for head slices, the one that completes the fixed one-hot factors)."""
    save_adapter = peft_model.save_pretrained

    def save_pretrained(save_directory, *args, is_main_process: bool = True, **kwargs):
        result = save_adapter(save_directory, *args, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            head_set.save(Path(save_directory) / file_name)
        return result

    peft_model.save_pretrained = save_pretrained
    peft_model.p2d_heads = head_set


def count_slice_params(layout: AttentionLayout, selected: list[tuple[int, int]], modules: tuple[str, ...]) -> int:
    """Number of trainable weights for a head set: the sum of the slice sizes."""
    total = 0
    for target in slice_targets(layout, selected, modules):
        total += target.rank * layout.hidden_size
    return total
