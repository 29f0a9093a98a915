"""The one loader of the models the stages read beside the run's own (the base model for scoring and probing, a
task model (``p2d_task_model``), the full model whose steps the AER times), and what the stages need to know about
a bitsandbytes-quantized base: its dense weights and its true parameter counts."""

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .distributed import whole_models


QUANTIZED_PARAMETER_TYPES = ("Params4bit", "Int8Params")  # bitsandbytes' 4-bit and 8-bit weights
QUANTIZATION_BITS = (4, 8)
QUANTIZATION_TYPES = ("nf4", "fp4")


@dataclass(frozen=True)
class Quantization:
    """On-the-fly bitsandbytes quantization of a full-precision checkpoint, as LLaMA-Factory's ``quantization_bit``
    (with ``quantization_type`` and ``double_quantization`` for 4 bits) loads it for QLoRA."""

    bits: int
    quant_type: str = "nf4"
    double_quantization: bool = True

    def __post_init__(self) -> None:
        if self.bits not in QUANTIZATION_BITS:
            raise ValueError(f"`quantization_bit` must be 4 or 8 (bitsandbytes); got {self.bits!r}.")
        if self.quant_type not in QUANTIZATION_TYPES:
            raise ValueError(f"`quantization_type` must be nf4 or fp4; got {self.quant_type!r}.")

    def config(self, compute_dtype: torch.dtype) -> Any:
        """The ``BitsAndBytesConfig`` LLaMA-Factory builds for these settings."""
        from transformers import BitsAndBytesConfig

        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=self.double_quantization,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_quant_storage=compute_dtype,
        )


def load_causal_lm(
    path: str,
    dtype: Any = "auto",
    device: torch.device | str | None = None,
    trust_remote_code: bool = False,
    quantization: Quantization | None = None,
) -> nn.Module:
    """``path``'s causal LM in ``dtype`` ("auto": the checkpoint's), on ``device``, in eval mode; whole on every rank,
    also under DeepSpeed ZeRO-3 (where the run's own model is partitioned over the ranks). With ``quantization`` its
    linear layers are quantized by bitsandbytes as they load, on ``device`` (the CPU when None)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if quantization is not None:
        compute_dtype = dtype if isinstance(dtype, torch.dtype) else torch.float32
        kwargs.update(quantization_config=quantization.config(compute_dtype), device_map={"": device or "cpu"})
    with whole_models():
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if device is not None and quantization is None:
        model = model.to(device)
    return model.eval()


def is_quantized_weight(param: torch.Tensor) -> bool:
    """Whether ``param`` is a bitsandbytes 4-bit or 8-bit weight (no gradient, no float arithmetic on it)."""
    return type(param).__name__ in QUANTIZED_PARAMETER_TYPES


def is_quantized(model: nn.Module) -> bool:
    """Whether any weight of ``model`` is quantized by bitsandbytes."""
    return any(is_quantized_weight(param) for param in model.parameters())


def dense_weight(linear: nn.Module) -> torch.Tensor:
    """The weight of ``linear`` (out x in) as a float tensor: a bitsandbytes one dequantized (a new tensor; the layer
    is left untouched), any other as it is."""
    weight = linear.weight
    kind = type(weight).__name__
    if kind not in QUANTIZED_PARAMETER_TYPES:
        return weight
    import bitsandbytes.functional as bnb_functional

    if kind == "Int8Params":
        scales = weight.SCB if weight.SCB is not None else linear.state.SCB  # per-row absmax
        return bnb_functional.int8_vectorwise_dequant(weight.data, scales)
    data, state = weight.data, weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):  # repacked by bitsandbytes' CPU inference kernel
        data, state = bnb_functional._convert_weight_packed_for_cpu_inverse(data, copy.copy(state))
    return bnb_functional.dequantize_4bit(data, state)


def parameter_count(param: torch.Tensor) -> int:
    """The number of weights ``param`` holds: its whole size under ZeRO-3 (``ds_numel``), a 4-bit weight's unpacked
    size (its storage packs two or more values per element)."""
    if hasattr(param, "ds_numel"):
        return int(param.ds_numel)
    quant_state = getattr(param, "quant_state", None)
    if quant_state is not None and type(param).__name__ == "Params4bit":
        return int(torch.Size(quant_state.shape).numel())
    return param.numel()


def weight_bytes(model: nn.Module) -> int:
    """Bytes ``model`` holds in its parameters and in bitsandbytes' block and row scales (not counted: their code
    tables, at most 1 KiB per layer)."""
    total = 0
    for param in model.parameters():
        total += param.numel() * param.element_size()
        state = getattr(param, "quant_state", None)
        if state is not None:
            total += state.absmax.numel() * state.absmax.element_size()
            if state.nested:
                total += state.state2.absmax.numel() * state.state2.absmax.element_size()
        if getattr(param, "SCB", None) is not None:
            total += param.SCB.numel() * param.SCB.element_size()
    return total
