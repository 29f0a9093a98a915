"""Turn a model into a PeftModel whose only trainable parameters are the selected heads' slices."""

from peft import PeftModel, get_peft_model
from torch import nn

from ..heads.layout import AttentionLayout
from .config import lora_config, slice_targets
from .layer import init_head_slice


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
    return peft_model


def count_slice_params(layout: AttentionLayout, selected: list[tuple[int, int]], modules: tuple[str, ...]) -> int:
    """Number of trainable weights for a head set: the sum of the slice sizes."""
    total = 0
    for target in slice_targets(layout, selected, modules):
        total += target.rank * layout.hidden_size
    return total
