"""Restricted attention sums: attention mass from query tokens to each demonstration, selected heads only.

A registered transformers attention function runs the model's own attention as usual (its eager function when
the model runs eager, as Gemma 2 needs for logit soft-capping; SDPA otherwise) and, while a probe is active,
additionally computes softmax(q k^T) for just the selected heads and just the query-token rows of the prefill
pass, reduced at once to one number per demonstration. It sees what the model's attention sees: queries and
keys after RoPE and any per-head norm (Qwen3, Gemma 3), the layer's own scaling, its sliding-window mask, and
its soft-cap. No attention probabilities of all layers and heads are ever materialised, and decoding steps cost
nothing extra.
"""

import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask


ATTENTION_NAME = "p2d_probe"


class AttentionProbe:
    """Accumulates, per batch element and demonstration, the attention mass from its query rows."""

    def __init__(self, heads_by_layer: Mapping[int, Sequence[int]]) -> None:
        self.heads_by_layer = {int(k): sorted(v) for k, v in heads_by_layer.items() if v}
        self.rows: list[torch.Tensor] = []
        self.spans: list[list[tuple[int, int]]] = []
        self.mass = torch.zeros(0, 0, dtype=torch.float64)

    def start(self, rows: list[list[int]], spans: list[list[tuple[int, int]]]) -> None:
        """Set the targets of the next forward (padded token positions per batch element)."""
        self.rows = [torch.tensor(r, dtype=torch.long) for r in rows]
        self.spans = spans
        self.mass = torch.zeros(len(rows), max(len(s) for s in spans), dtype=torch.float64)

    def observe(
        self,
        module: nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        mask: torch.Tensor | None,
        scaling: float | None,
        softcap: float | None = None,
    ) -> None:
        heads = self.heads_by_layer.get(getattr(module, "layer_idx", -1))
        if not heads:
            return
        group = query.shape[1] // key.shape[1]
        q_heads = torch.tensor(heads, device=query.device)
        k_heads = q_heads // group
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        length = key.shape[2]
        for b, (rows, spans) in enumerate(zip(self.rows, self.spans)):
            rows = rows.to(query.device)
            scores = query[b, q_heads][:, rows].float() @ key[b, k_heads].float().transpose(-1, -2) * scale
            if softcap:
                scores = torch.tanh(scores / softcap) * softcap
            keep = _keep_mask(mask, b, rows, length, query.device)
            probs = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1)
            column_mass = torch.cumsum(probs.sum(dim=(0, 1)).double(), dim=0)
            column_mass = torch.cat([column_mass.new_zeros(1), column_mass])
            for d, (start, end) in enumerate(spans):
                self.mass[b, d] += float(column_mass[end] - column_mass[start])


def _keep_mask(mask: torch.Tensor | None, b: int, rows: torch.Tensor, length: int, device) -> torch.Tensor:
    """Which keys each query row may attend to: the model's mask, or plain causal when it passed none."""
    if mask is None:
        return torch.arange(length, device=device)[None, :] <= rows[:, None]
    rows_mask = mask[b if mask.shape[0] > 1 else 0, 0][rows, :length]
    return rows_mask if rows_mask.dtype == torch.bool else rows_mask == 0


@dataclass(frozen=True)
class ActiveProbe:
    """The probe of the forward pass in progress, and how the attention runs meanwhile."""

    probe: AttentionProbe
    eager: bool  # the attention module's own eager function (else SDPA)


# set by ``probing`` for the forward passes it wraps, per thread and task (a ContextVar, not a module global)
_ACTIVE: ContextVar[ActiveProbe | None] = ContextVar("p2d_active_probe", default=None)


def probe_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None, **kwargs):
    """The model's attention that also feeds the active probe during prefill (more than one query position)."""
    active = _ACTIVE.get()
    if active is not None and query.shape[2] > 1:
        active.probe.observe(module, query, key, attention_mask, scaling, kwargs.get("softcap"))
    if active is not None and active.eager:
        forward = _eager_forward(module)
        return forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
    )


AttentionInterface.register(ATTENTION_NAME, probe_attention)
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


def _eager_forward(attention: nn.Module) -> Callable:
    """The eager attention function of the attention module's own modeling file (e.g. with Gemma 2's soft-cap)."""
    forward = getattr(sys.modules[type(attention).__module__], "eager_attention_forward", None)
    if forward is None:
        raise ValueError(f"{type(attention).__name__} runs eager attention but defines no eager_attention_forward.")
    return forward


@contextmanager
def probing(model: nn.Module, probe: AttentionProbe) -> Iterator[AttentionProbe]:
    """Route ``model``'s attention through ``probe_attention`` with ``probe`` active.

    A model configured for eager attention keeps its eager function and masks, and so does a model with attention
    logit soft-capping (Gemma 2), which SDPA cannot compute; any other implementation (SDPA, flash, flex) runs as
    SDPA while probing, the same math.
    """
    config = model.config
    previous = config._attn_implementation
    text_config = getattr(config, "text_config", None) or config
    eager = previous == "eager" or getattr(text_config, "attn_logit_softcapping", None) is not None
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask if eager else sdpa_mask)
    config._attn_implementation = ATTENTION_NAME
    token = _ACTIVE.set(ActiveProbe(probe, eager))
    try:
        yield probe
    finally:
        _ACTIVE.reset(token)
        config._attn_implementation = previous
