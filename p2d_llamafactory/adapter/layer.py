"""Head-slice LoRA layers: one-hot initialisation and a training forward that skips the one-hot matmul."""

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import LoraLayer, LoraVariant

from .config import SliceTarget


def fixed_factor(target: SliceTarget, in_features: int, out_features: int) -> tuple[str, torch.Tensor]:
    """The fixed one-hot factor of a slice: ``lora_B`` (out x rank) for rows, ``lora_A`` (rank x in) for columns."""
    rank = torch.arange(target.rank)
    index = torch.tensor(target.index, dtype=torch.long)
    if target.kind == "rows":
        factor = torch.zeros(out_features, target.rank)
        factor[index, rank] = 1.0
        return "lora_B", factor
    factor = torch.zeros(target.rank, in_features)
    factor[rank, index] = 1.0
    return "lora_A", factor


def init_head_slice(layer: LoraLayer, adapter: str, target: SliceTarget) -> None:
    """Set the fixed one-hot factor, zero the trainable one, freeze the one-hot, use the fast forward."""
    lora_a, lora_b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    name, factor = fixed_factor(target, layer.in_features, layer.out_features)
    fixed = lora_b if name == "lora_B" else lora_a
    with torch.no_grad():
        lora_a.zero_()
        lora_b.zero_()
        fixed.copy_(factor)
    fixed.requires_grad_(False)
    index = torch.tensor(target.index, dtype=torch.long, device=lora_a.device)
    layer.register_buffer(f"p2d_index_{adapter}", index, persistent=False)
    layer.p2d_kind = {**getattr(layer, "p2d_kind", {}), adapter: target.kind}
    layer.lora_variant[adapter] = HeadSliceVariant()


class HeadSliceVariant(LoraVariant):
    """Same output as ``B @ A`` with one one-hot factor, computed as a gather / scatter instead of a matmul."""

    @staticmethod
    def init(module: LoraLayer, adapter_name: str, **kwargs) -> None:
        return None

    @staticmethod
    def forward(module: LoraLayer, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs):
        index = getattr(module, f"p2d_index_{active_adapter}")
        scaling = module.scaling[active_adapter]
        if module.p2d_kind[active_adapter] == "rows":
            delta = F.linear(x, module.lora_A[active_adapter].weight) * scaling
            return result.index_add(-1, index, delta.to(result.dtype))
        delta = F.linear(x.index_select(-1, index), module.lora_B[active_adapter].weight) * scaling
        return result + delta.to(result.dtype)

    @staticmethod
    def merge_safe(module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight + module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def merge_unsafe(module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> None:
        orig_weight.data += module.get_delta_weight(active_adapter).to(orig_weight.dtype)

    @staticmethod
    def unmerge(module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight - module.get_delta_weight(active_adapter).to(orig_weight.dtype)
