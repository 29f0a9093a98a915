"""LoFiT's bias tuning (step 2 of ``finetuning_type: lofit``) as a standard PEFT LoRA adapter.

LoFiT adds a learned bias v_h to the attention output of each selected head, before ``o_proj``:
o_proj(x + v) = o_proj(x) + W_o[:, cols] v, a constant added to ``o_proj``'s output. A LoRA module on ``o_proj``
with a bias on ``lora_B`` (peft's ``lora_bias``) and a zero ``lora_B`` weight outputs exactly its bias, so the
artifact is plain peft: ``lora_B.bias = W_o[:, cols] v``, loadable without this plugin.

While training, v itself is the trainable parameter (as in LoFiT, whose optimiser sees v, not W_o v): it lives in
``lora_A``'s single row at the selected heads' columns (``lora_A`` is multiplied by the zero ``lora_B`` weight in
the stock forward, so it changes nothing there). Only those columns get a gradient; ``lora_B.bias`` is recomputed
from v whenever the state dict is read (checkpoints, the final save) and before a merge.
"""

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.lora.layer import LoraLayer, LoraVariant
from peft.utils.warning import PeftWarning
from torch import nn

from ..heads.layout import AttentionLayout, text_config
from ..heads.lofit import INIT_STD
from ..models import dense_weight, is_quantized


# families whose o_proj (and q/k/v) take a bias when ``config.attention_bias`` is true: a LoFiT adapter merges
# into a plain model of these by switching the biases on; the others have o_proj without a bias, hard-wired
ATTENTION_BIAS_FAMILIES = ("llama", "qwen3", "gemma2", "gemma3", "gemma3_text")


def bias_columns(layout: AttentionLayout, selected: list[tuple[int, int]]) -> dict[int, list[int]]:
    """The ``o_proj`` input columns of the selected heads, per layer."""
    columns: dict[int, list[int]] = {}
    for layer, head in sorted(selected):
        columns.setdefault(layer, []).extend(range(head * layout.head_dim, (head + 1) * layout.head_dim))
    return columns


def lofit_lora_config(layout: AttentionLayout, layers: list[int]) -> LoraConfig:
    """Rank-1 LoRA with a ``lora_B`` bias on the ``o_proj`` of each layer with a selected head."""
    if not layers:
        raise ValueError("LoFiT: no heads selected, nothing to train.")
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=1,
        lora_alpha=1,
        target_modules=[f"{layout.attention_modules[layer]}.o_proj" for layer in layers],
        lora_dropout=0.0,
        lora_bias=True,
        bias="none",
        inference_mode=False,
    )


def _selected_bias(module: LoraLayer, adapter: str) -> torch.Tensor:
    """W_o[:, cols] v of one layer, in float32 (W_o dequantized where bitsandbytes quantized it)."""
    cols = getattr(module, f"p2d_lofit_cols_{adapter}")
    v = module.lora_A[adapter].weight[0].index_select(0, cols).float()
    return F.linear(v, dense_weight(module.get_base_layer()).index_select(1, cols).float())


def sync_bias(module: LoraLayer, adapter: str) -> None:
    """``lora_B.bias`` = W_o[:, cols] v / scaling: what stock peft adds."""
    with torch.no_grad():
        bias = module.lora_B[adapter].bias
        bias.copy_((_selected_bias(module, adapter) / module.scaling[adapter]).to(bias.dtype))


class LofitBiasVariant(LoraVariant):
    """Training forward: ``o_proj``'s output plus W_o[:, cols] v, differentiable in v (the selected columns)."""

    @staticmethod
    def init(module: LoraLayer, adapter_name: str, **kwargs) -> None:
        return None

    @staticmethod
    def forward(module: LoraLayer, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs):
        return result + _selected_bias(module, active_adapter).to(result.dtype)

    @staticmethod
    def merge_safe(module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        sync_bias(module, active_adapter)  # peft then adds lora_B.bias to the base bias; the weight is unchanged
        return orig_weight

    @staticmethod
    def merge_unsafe(module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> None:
        sync_bias(module, active_adapter)

    @staticmethod
    def unmerge(module: LoraLayer, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        return orig_weight


def _init_bias_layer(module: LoraLayer, adapter: str, columns: list[int], generator: torch.Generator) -> None:
    lora_a, lora_b = module.lora_A[adapter].weight, module.lora_B[adapter]
    index = torch.tensor(columns, dtype=torch.long, device=lora_a.device)
    with torch.no_grad():
        lora_a.zero_()
        init = torch.randn(len(columns), generator=generator) * INIT_STD  # LoFiT: v ~ N(0, 1e-3)
        lora_a[0, index] = init.to(lora_a.device, lora_a.dtype)
        lora_b.weight.zero_()
    lora_b.requires_grad_(False)
    module.register_buffer(f"p2d_lofit_cols_{adapter}", index, persistent=False)
    module.lora_variant[adapter] = LofitBiasVariant()
    module.register_state_dict_pre_hook(lambda mod, prefix, keep_vars: sync_bias(mod, adapter))
    sync_bias(module, adapter)


def apply_lofit_biases(
    model: nn.Module, layout: AttentionLayout, selected: list[tuple[int, int]], seed: int, adapter: str = "default"
) -> PeftModel:
    """Wrap ``model`` so that only the biases v of the ``selected`` heads train (LoFiT's step 2)."""
    columns = bias_columns(layout, selected)
    with warnings.catch_warnings():  # "merging won't be possible" (o_proj without a bias): merge_lofit handles it
        warnings.filterwarnings("ignore", message=".*lora_bias=True.*has no bias", category=PeftWarning)
        peft_model = get_peft_model(model, lofit_lora_config(layout, sorted(columns)), adapter_name=adapter)
    base = peft_model.get_base_model()
    generator = torch.Generator().manual_seed(seed)
    for layer, cols in sorted(columns.items()):
        _init_bias_layer(base.get_submodule(f"{layout.attention_modules[layer]}.o_proj"), adapter, cols, generator)
    return peft_model


def count_bias_params(layout: AttentionLayout, selected: list[tuple[int, int]]) -> int:
    """Trainable weights of LoFiT's step 2: head_dim per selected head."""
    return len(set(selected)) * layout.head_dim


def merge_lofit(model: PeftModel) -> nn.Module:
    """A plain model with the adapter merged: into ``o_proj``'s bias where it has one; for families whose attention
    biases follow ``config.attention_bias``, by switching them on (zero q/k/v/o biases, then the merge), so the
    saved model reloads exactly. Other families (o_proj without a bias, hard-wired) are refused."""
    base = model.get_base_model()
    if is_quantized(base):
        raise ValueError(
            "LoFiT's biases stay unmerged on a base quantized by bitsandbytes (`quantization_bit`); export merges "
            "them into the full-precision base (an export YAML without `quantization_bit`)."
        )
    o_layers = [m for name, m in base.named_modules() if isinstance(m, LoraLayer) and name.endswith("o_proj")]
    if any(layer.get_base_layer().bias is None for layer in o_layers):
        config = text_config(base.config)
        if config.model_type not in ATTENTION_BIAS_FAMILIES:
            raise ValueError(
                f"LoFiT's biases cannot merge into {config.model_type}: its o_proj has no bias and the family has no "
                f"`attention_bias` switch (merging works for {', '.join(ATTENTION_BIAS_FAMILIES)}). Use the adapter "
                "unmerged: chat with `finetuning_type: lofit`, or load it with peft's PeftModel.from_pretrained."
            )
        _switch_on_attention_bias(base, config)
    return model.merge_and_unload()


def _switch_on_attention_bias(model: nn.Module, config: Any) -> None:
    """Give every q/k/v/o projection a zero bias where it has none and set ``attention_bias``: the model computes
    exactly what it did, and its saved config rebuilds the biases."""
    for name, module in model.named_modules():
        linear = getattr(module, "base_layer", module)
        if name.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "o_proj") and isinstance(linear, nn.Linear):
            if linear.bias is None:
                weight = linear.weight
                linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=weight.dtype, device=weight.device))
    config.attention_bias = True
