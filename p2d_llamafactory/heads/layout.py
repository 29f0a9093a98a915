"""Where the attention heads of a model live: per-layer q/k/v/o projections and the head geometry."""

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


class UnsupportedModelError(ValueError):
    """The model has no standard attention projections, or a shape P2D cannot slice per head."""


@dataclass(frozen=True)
class AttentionLayout:
    """Head geometry shared by every decoder layer, plus the module path of each layer's attention."""

    attention_modules: tuple[str, ...]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int

    @property
    def num_layers(self) -> int:
        return len(self.attention_modules)

    @property
    def total_heads(self) -> int:
        return self.num_layers * self.num_heads

    @property
    def group_size(self) -> int:
        """Query heads per key/value head (1 without GQA)."""
        return self.num_heads // self.num_kv_heads

    def kv_head(self, head: int) -> int:
        return head // self.group_size

    def shape(self) -> dict[str, int]:
        """The geometry that two models must share for head sets and weights to be comparable."""
        return {
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "num_kv_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_size": self.hidden_size,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _text_config(config: Any) -> Any:
    return getattr(config, "text_config", None) or config


def _attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules with q/k/v/o linear projections (plain, or wrapped by a PEFT adapter layer)."""
    found = []
    for name, module in model.named_modules():
        projections = [getattr(module, proj, None) for proj in PROJECTIONS]
        if all(p is not None and isinstance(_base_linear(p), nn.Linear) for p in projections):
            found.append((name.removeprefix("base_model.model."), module))
    return found


def find_attention_layout(model: nn.Module) -> AttentionLayout:
    """Discover the attention layout of a (possibly meta-device) transformers model.

    Raises:
        UnsupportedModelError: no module has separate ``q_proj``/``k_proj``/``v_proj``/``o_proj`` linear layers,
            or their shapes do not agree with the config's head geometry.
    """
    found = _attention_modules(model)
    config = _text_config(getattr(model, "config", None))
    model_type = getattr(config, "model_type", type(model).__name__)
    if not found:
        raise UnsupportedModelError(
            f"P2D needs attention modules with separate linear {', '.join(PROJECTIONS)} layers; "
            f"none found in {type(model).__name__} (model_type={model_type})."
        )
    num_heads = getattr(config, "num_attention_heads", None)
    if not num_heads:
        raise UnsupportedModelError(f"The config of {model_type} has no `num_attention_heads`.")
    num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
    hidden_size = _base_linear(found[0][1].q_proj).in_features
    head_dim = getattr(config, "head_dim", None) or hidden_size // num_heads
    for name, module in found:
        expected = {
            "q_proj": (num_heads * head_dim, hidden_size),
            "k_proj": (num_kv_heads * head_dim, hidden_size),
            "v_proj": (num_kv_heads * head_dim, hidden_size),
            "o_proj": (hidden_size, num_heads * head_dim),
        }
        for proj, shape in expected.items():
            layer = _base_linear(getattr(module, proj))
            if (layer.out_features, layer.in_features) != shape:
                raise UnsupportedModelError(
                    f"{name}.{proj} has shape {(layer.out_features, layer.in_features)}, expected {shape} for "
                    f"{num_heads} heads, {num_kv_heads} key/value heads and head_dim {head_dim}."
                )
    if num_heads % num_kv_heads:
        raise UnsupportedModelError(f"num_attention_heads={num_heads} is not a multiple of num_key_value_heads.")
    return AttentionLayout(tuple(name for name, _ in found), num_heads, num_kv_heads, head_dim, hidden_size)


def layout_from_config(config: Any) -> AttentionLayout:
    """Layout of the model a config describes, built on the meta device (no weights are loaded)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return find_attention_layout(model)


def projection_weights(model: nn.Module, layout: AttentionLayout, layer: int) -> dict[str, torch.Tensor]:
    """The q/k/v/o weight matrices (out x in, as stored by nn.Linear) of one layer."""
    module = model.get_submodule(layout.attention_modules[layer])
    return {proj[0]: _base_linear(getattr(module, proj)).weight for proj in PROJECTIONS}


def _base_linear(module: nn.Module) -> nn.Linear:
    return getattr(module, "base_layer", module)
