"""What the FHI proxy costs in memory, and the preflight that refuses a proxy that cannot fit before stage I trains it.

``all`` trains every parameter of a float32 copy; ``attention`` only float32 copies of the q/k/v projections
(:mod:`.proxy`). Either way each trained parameter costs 16 bytes (weight, gradient, AdamW's two moments), plus
the activations of one micro-batch.
"""

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..models import Quantization, parameter_count
from .layout import AttentionLayout, find_attention_layout, text_config
from .proxy import projection_slots


STATE_BYTES_PER_PARAMETER = 16  # float32 weight + gradient + AdamW's two moments (exp_avg, exp_avg_sq)
GB = 1e9


@dataclass(frozen=True)
class ProxyMemory:
    """What the FHI proxy adds on top of the loaded base model, in bytes."""

    trainable: str
    parameters: int  # parameters the proxy trains
    state_bytes: int  # their float32 weights, gradients and AdamW moments
    activation_bytes: int  # one micro-batch's activations kept for the backward pass (a low estimate)

    @property
    def total_bytes(self) -> int:
        return self.state_bytes + self.activation_bytes


def activation_bytes(model: nn.Module, layout: AttentionLayout, tokens: int, itemsize: int) -> int:
    """Bytes autograd keeps for a micro-batch of ``tokens`` tokens, values of ``itemsize`` bytes: a deliberately low
    estimate, so that the preflight refuses only a proxy that cannot fit.

    Per decoder layer and token: 8 hidden-size values (norm inputs and outputs, q, k, v and the attention output)
    and 4 intermediate-size values (MLP gate, up, activation, product); with gradient checkpointing, each layer's
    input plus one layer's recomputation. Plus 3 float32 copies of the logits (logits, log-softmax, gradient). Not
    counted: the backward pass's transient buffers (activation gradients, kernel temporaries), attention
    probabilities where eager attention keeps them, the allocator's overhead. On SmolLM2 on the CPU the measured
    peaks were 1.4 to 1.5 times the estimate (docs/benchmarks.md).
    """
    config = text_config(model.config)
    hidden = layout.hidden_size
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    vocab = output.weight.shape[0] if output is not None else config.vocab_size
    per_layer = 8 * hidden + 4 * intermediate
    if getattr(model, "is_gradient_checkpointing", False):
        layers = layout.num_layers * hidden + per_layer
    else:
        layers = layout.num_layers * per_layer
    return tokens * (layers * itemsize + 3 * vocab * 4)


def proxy_memory(model: nn.Module, layout: AttentionLayout, trainable: str, tokens: int) -> ProxyMemory:
    """The bytes the proxy of ``model`` (real or on the meta device) adds for ``trainable`` (all, attention), with
    micro-batches of ``tokens`` tokens: 16 bytes per trained parameter (:data:`STATE_BYTES_PER_PARAMETER`) plus
    :func:`activation_bytes`, in float32 for ``all`` (the whole proxy is float32) and in the base model's dtype for
    ``attention`` (the frozen layers compute in it; for a base quantized by bitsandbytes, its compute dtype, and the
    q/k/v copies count their unpacked weights)."""
    if trainable == "all":
        params, itemsize = sum(p.numel() for p in model.parameters()), 4
    else:
        slots = [
            getattr(owner, attribute)
            for layer in projection_slots(model, layout)
            for owner, attribute in layer.values()
        ]
        params = sum(parameter_count(p) for linear in slots for p in linear.parameters())
        itemsize = model.get_input_embeddings().weight.element_size()  # the compute dtype, also of a quantized base
    return ProxyMemory(
        trainable, params, params * STATE_BYTES_PER_PARAMETER, activation_bytes(model, layout, tokens, itemsize)
    )


def proxy_memory_from_config(
    config: Any, trainable: str, tokens: int, dtype: torch.dtype = torch.bfloat16, gradient_checkpointing: bool = False
) -> ProxyMemory:
    """:func:`proxy_memory` of the model ``config`` describes, loaded in ``dtype``, built on the meta device."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return proxy_memory(model, find_attention_layout(model), trainable, tokens)


def base_memory_from_config(
    config: Any, dtype: torch.dtype = torch.bfloat16, quantization: Quantization | None = None
) -> int:
    """Bytes of the weights of the model ``config`` describes, loaded in ``dtype``, or quantized by bitsandbytes as
    ``quantization_bit`` loads it: every linear layer but the output head (which bitsandbytes keeps) at 4 bits plus
    one block scale per 64 weights (float32, or 8-bit with a float32 per 256 scales under double quantization), or at
    8 bits plus a float32 scale per output row; everything else in ``dtype``."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    kept = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    quantized = {
        id(module.weight): module
        for module in model.modules()
        if quantization is not None and isinstance(module, nn.Linear) and module is not kept
    }
    total = 0
    for param in model.parameters():
        module = quantized.get(id(param))
        if module is None:
            total += param.numel() * itemsize
        elif quantization.bits == 8:
            total += param.numel() + module.out_features * 4
        else:
            blocks = math.ceil(param.numel() / 64)
            scales = blocks + math.ceil(blocks / 256) * 4 if quantization.double_quantization else blocks * 4
            total += math.ceil(param.numel() / 2) + scales
    return total


def available_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device``: on CUDA the free device memory plus what torch's caching allocator
    holds unused; on the CPU the available RAM (psutil, else /proc/meminfo). None where unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_proxy_fits(model: nn.Module, layout: AttentionLayout, trainable: str, tokens: int) -> None:
    """Refuse, before anything is allocated, a proxy that cannot fit beside the loaded ``model`` on its device(s),
    naming the estimate and the key that makes it fit. Nothing is checked where the free memory is unknown."""
    devices = sorted({param.device for param in model.parameters()}, key=str)
    free = [available_memory(device) for device in devices]
    if not devices or None in free:
        return
    available = sum(free)
    need = proxy_memory(model, layout, trainable, tokens)
    if need.total_bytes <= available:
        return
    lean = proxy_memory(model, layout, "attention", tokens)
    if trainable == "all" and lean.total_bytes <= available:
        hint = (
            f"set `p2d_fhi_trainable: attention` (float32 copies of q/k/v only: about {lean.total_bytes / GB:.3g} GB)"
        )
    else:
        hint = (
            f"even `p2d_fhi_trainable: attention` needs about {lean.total_bytes / GB:.3g} GB; use a smaller "
            "micro-batch (`per_device_train_batch_size`) or shorter examples, or give a head set from elsewhere "
            "(`p2d_heads_file`, `p2d_task_model`)"
        )
    raise ValueError(
        f"P2D: the FHI proxy (`p2d_fhi_trainable: {trainable}`) needs about {need.total_bytes / GB:.3g} GB on "
        f"{', '.join(map(str, devices))} ({need.parameters:,} trained parameters x {STATE_BYTES_PER_PARAMETER} B of "
        f"float32 weights, gradients and AdamW moments = {need.state_bytes / GB:.3g} GB, plus about "
        f"{need.activation_bytes / GB:.3g} GB of activations for a micro-batch of {tokens} tokens), but only "
        f"{available / GB:.3g} GB are free there beside the loaded model: {hint}. Nothing was trained."
    )
