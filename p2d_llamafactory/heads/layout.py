"""Where the attention heads of a model live: per-layer q/k/v/o projections and the head geometry.

Two projection layouts are recognised: separate ``q_proj``/``k_proj``/``v_proj`` linears (Llama, Qwen2/2.5/3,
Mistral, Gemma 2/3) and one fused ``qkv_proj`` whose output rows are the query rows, then the key rows, then the
value rows (Phi-3). Either way ``o_proj`` takes the concatenated head outputs. A head's q (k, v) rows are then a
block of rows at a fixed offset inside one linear layer, which is all the scorers and the adapter need.
"""

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ..models import dense_weight


PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
FUSED_PROJECTIONS = ("qkv_proj", "o_proj")
# model_type -> family, for every decoder family whose heads P2D slices and tests (README: "Supported models")
SUPPORTED_FAMILIES = {
    "llama": "Llama",
    "mistral": "Mistral",
    "qwen2": "Qwen2 / Qwen2.5",
    "qwen3": "Qwen3",
    "gemma2": "Gemma 2",
    "gemma3": "Gemma 3",
    "gemma3_text": "Gemma 3",
    "phi3": "Phi-3",
}


class UnsupportedModelError(ValueError):
    """The model has no standard attention projections, or a shape P2D cannot slice per head."""


@dataclass(frozen=True)
class ProjectionSlot:
    """Where the q, k or v rows of every head live: the linear layer (attribute of the attention module) and the
    first row of the block inside its weight (0 for a separate projection, past q (and k) in a fused one)."""

    module: str
    offset: int = 0


@dataclass(frozen=True)
class AttentionLayout:
    """Head geometry shared by every decoder layer, plus the module path of each layer's attention."""

    attention_modules: tuple[str, ...]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    fused_qkv: bool = False

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

    def slot(self, name: str) -> ProjectionSlot:
        """Where the ``q``, ``k`` or ``v`` rows live (``o`` is always the columns of ``o_proj``)."""
        if name == "o":
            return ProjectionSlot("o_proj")
        if not self.fused_qkv:
            return ProjectionSlot(f"{name}_proj")
        q_rows, kv_rows = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return ProjectionSlot("qkv_proj", {"q": 0, "k": q_rows, "v": q_rows + kv_rows}[name])

    @property
    def linear_modules(self) -> tuple[str, ...]:
        """The attention module's linear layers that hold head parameters."""
        return FUSED_PROJECTIONS if self.fused_qkv else PROJECTIONS

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


def text_config(config: Any) -> Any:
    return getattr(config, "text_config", None) or config


def _has_linears(module: nn.Module, names: tuple[str, ...]) -> bool:
    return all(isinstance(_base_linear(getattr(module, n, None)), nn.Linear) for n in names)


def _attention_modules(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], bool]:
    """Modules with q/k/v/o (or fused qkv + o) linear projections, plain or wrapped by a PEFT adapter layer; and
    whether the projections are fused."""
    found: dict[bool, list[tuple[str, nn.Module]]] = {False: [], True: []}
    for name, module in model.named_modules():
        for fused, names in ((False, PROJECTIONS), (True, FUSED_PROJECTIONS)):
            if _has_linears(module, names):
                found[fused].append((name.removeprefix("base_model.model."), module))
    if found[False] and found[True]:
        raise UnsupportedModelError("The model mixes separate q/k/v projections and fused qkv_proj layers.")
    return (found[True], True) if found[True] else (found[False], False)


def find_attention_layout(model: nn.Module) -> AttentionLayout:
    """Discover the attention layout of a (possibly meta-device) transformers model.

    Raises:
        UnsupportedModelError: no module has separate ``q_proj``/``k_proj``/``v_proj``/``o_proj`` linear layers,
            or their shapes do not agree with the config's head geometry.
    """
    config = text_config(getattr(model, "config", None))
    model_type = getattr(config, "model_type", type(model).__name__)
    if model_type not in SUPPORTED_FAMILIES:
        raise UnsupportedModelError(
            f"model_type={model_type} ({type(model).__name__}) is not a supported decoder family; P2D slices the "
            f"heads of model types {', '.join(SUPPORTED_FAMILIES)}."
        )
    found, fused = _attention_modules(model)
    if not found:
        raise UnsupportedModelError(
            f"P2D needs attention modules with linear {', '.join(PROJECTIONS)} layers (or a fused qkv_proj and "
            f"o_proj); none found in {type(model).__name__} (model_type={model_type})."
        )
    num_heads = getattr(config, "num_attention_heads", None)
    if not num_heads:
        raise UnsupportedModelError(f"The config of {model_type} has no `num_attention_heads`.")
    num_kv_heads = getattr(config, "num_key_value_heads", None) or num_heads
    hidden_size = _base_linear(found[0][1].o_proj).out_features
    head_dim = getattr(config, "head_dim", None) or hidden_size // num_heads
    for name, module in found:
        q_rows, kv_rows = num_heads * head_dim, num_kv_heads * head_dim
        expected = {"o_proj": (hidden_size, q_rows)}
        if fused:
            expected["qkv_proj"] = (q_rows + 2 * kv_rows, hidden_size)
        else:
            expected.update(q_proj=(q_rows, hidden_size), k_proj=(kv_rows, hidden_size), v_proj=(kv_rows, hidden_size))
        for proj, shape in expected.items():
            layer = _base_linear(getattr(module, proj))
            if (layer.out_features, layer.in_features) != shape:
                raise UnsupportedModelError(
                    f"{name}.{proj} has shape {(layer.out_features, layer.in_features)}, expected {shape} for "
                    f"{num_heads} heads, {num_kv_heads} key/value heads and head_dim {head_dim}."
                )
    if num_heads % num_kv_heads:
        raise UnsupportedModelError(f"num_attention_heads={num_heads} is not a multiple of num_key_value_heads.")
    modules = tuple(name for name, _ in found)
    return AttentionLayout(modules, num_heads, num_kv_heads, head_dim, hidden_size, fused_qkv=fused)


def layout_from_config(config: Any) -> AttentionLayout:
    """Layout of the model a config describes, built on the meta device (no weights are loaded)."""
    from transformers import AutoModelForCausalLM

    from ..distributed import whole_models

    with torch.device("meta"), whole_models():
        model = AutoModelForCausalLM.from_config(config)
    return find_attention_layout(model)


def layer_parameters(model: nn.Module, layout: AttentionLayout, layer: int) -> dict[str, nn.Parameter]:
    """The weight parameters of one layer's head-holding linears, by module name (``q_proj``... or ``qkv_proj``)."""
    module = model.get_submodule(layout.attention_modules[layer])
    return {name: _base_linear(getattr(module, name)).weight for name in layout.linear_modules}


def split_projections(weights: dict[str, torch.Tensor], layout: AttentionLayout) -> dict[str, torch.Tensor]:
    """The q/k/v/o matrices (out x in, as stored by nn.Linear) inside one layer's linears: views, no copies."""
    sizes = {"q": layout.num_heads * layout.head_dim, "k": layout.num_kv_heads * layout.head_dim}
    sizes["v"] = sizes["k"]
    out = {}
    for name in ("q", "k", "v"):
        slot = layout.slot(name)
        out[name] = weights[slot.module][slot.offset : slot.offset + sizes[name]]
    out["o"] = weights["o_proj"]
    return out


def projection_weights(model: nn.Module, layout: AttentionLayout, layer: int) -> dict[str, torch.Tensor]:
    """The q/k/v/o weight matrices (out x in, as stored by nn.Linear) of one layer, dequantized where the base is
    quantized by bitsandbytes."""
    module = model.get_submodule(layout.attention_modules[layer])
    weights = {name: dense_weight(_base_linear(getattr(module, name))) for name in layout.linear_modules}
    return split_projections(weights, layout)


def _base_linear(module: nn.Module | None) -> nn.Module | None:
    return getattr(module, "base_layer", module)
