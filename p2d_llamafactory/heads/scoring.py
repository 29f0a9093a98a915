"""Head sensitivity scores: W1 / cosine between weight distributions, |weight x gradient|, random.

For query head h in KV group g: W_comp = Wq_h (Wk_g^T Wv_g), with Wq_h, Wk_g, Wv_g the d_model x d_head
projections (nn.Linear stores their transposes). P_h = Softmax(Flatten(W_comp) / tau). The product is
associated so that no d_model x d_model matrix is formed, and everything runs in float64. Depending on the
model the softmaxes are near-uniform (tiny entries, e.g. 7B models: float32 round-off would swamp the
base-vs-proxy difference) or near point masses (large entries, e.g. SmolLM2 at tau = 0.1: a one-sided
cumulative sum would round the tail away); ``w1_distance`` stays exact in both regimes.
"""

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..distributed import all_reduce_sum_
from ..models import is_quantized
from ..tokens import count_label_tokens
from .layout import AttentionLayout, layer_parameters, projection_weights, split_projections
from .proxy import float32_projections


def composite_flat(q_w: torch.Tensor, k_w: torch.Tensor, v_w: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
    """Flattened W_comp of every query head of one layer: (num_heads, d_model * head_dim), float64."""
    d, hidden = layout.head_dim, layout.hidden_size
    q = q_w.detach().to(torch.float64).view(layout.num_heads, d, hidden)
    k = k_w.detach().to(torch.float64).view(layout.num_kv_heads, d, hidden)
    v = v_w.detach().to(torch.float64).view(layout.num_kv_heads, d, hidden)
    kv = k @ v.transpose(1, 2)  # Wk_g^T Wv_g: (groups, d, d)
    kv = kv.repeat_interleave(layout.group_size, dim=0)  # one per query head
    comp = q.transpose(1, 2) @ kv  # Wq_h (Wk^T Wv): (heads, d_model, d)
    return comp.reshape(layout.num_heads, hidden * d)


def head_distributions(flat: torch.Tensor, temperature: float) -> torch.Tensor:
    """P = Softmax(Flatten(W_comp) / tau) per head, in float64."""
    return torch.softmax(flat.to(torch.float64) / temperature, dim=-1)


def w1_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Exact W1 between distributions on the shared support 0..n-1 (unit spacing): sum_i |CDF_p(i) - CDF_q(i)|.

    O(n) per row with one cumulative sum. The heaviest entry m of p + q is kept out of every partial sum:
    left of m the CDF gap is sum_{j<=i} d_j, from m on it is -sum_{j>i} d_j (d = p - q sums to zero), both
    read off the cumulative sum of d with d_m set to 0. So a near point mass never enters a sum whose
    result is tiny, and the result keeps full relative precision where a plain cumulative sum (and scipy)
    round the tail away. Equals ``scipy.stats.wasserstein_distance(x, x, p, q)`` with ``x = arange(n)``
    wherever scipy's own round-off allows.
    """
    d = p - q
    heavy = torch.argmax(p + q, dim=-1, keepdim=True)
    d.scatter_(-1, heavy, 0.0)
    partial = torch.cumsum(d, dim=-1)
    right = torch.arange(d.shape[-1], device=d.device) >= heavy
    partial -= right * partial[..., -1:]
    return partial[..., :-1].abs().sum(dim=-1)


def cosine_distance(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity between the same distributions (the cheap baseline of the paper's Table 14)."""
    return 1.0 - torch.nn.functional.cosine_similarity(p, q, dim=-1)


DISTANCES = {"w1": w1_distance, "cosine": cosine_distance}


def weight_scores(
    base: nn.Module,
    other: nn.Module,
    layout: AttentionLayout,
    method: str,
    temperature: float,
    progress: bool = True,
) -> torch.Tensor:
    """Distance between base and other (proxy or task model) for every head: (num_layers, num_heads)."""
    distance = DISTANCES[method]
    scores = torch.zeros(layout.num_layers, layout.num_heads, dtype=torch.float64)
    for layer in tqdm(range(layout.num_layers), desc=f"P2D head scoring ({method})", disable=not progress):
        dists = []
        for model in (base, other):
            w = projection_weights(model, layout, layer)
            dists.append(head_distributions(composite_flat(w["q"], w["k"], w["v"], layout), temperature))
        scores[layer] = distance(*dists).cpu()
    return scores


def slice_magnitudes(weights: Mapping[str, torch.Tensor], layout: AttentionLayout) -> torch.Tensor:
    """Sum of |weights| over each query head's q rows, its group's k and v rows, and its o columns."""
    d = layout.head_dim
    q = weights["q"].view(layout.num_heads, d, -1).sum(dim=(1, 2))
    k = weights["k"].view(layout.num_kv_heads, d, -1).sum(dim=(1, 2)).repeat_interleave(layout.group_size)
    v = weights["v"].view(layout.num_kv_heads, d, -1).sum(dim=(1, 2)).repeat_interleave(layout.group_size)
    o = weights["o"].view(-1, layout.num_heads, d).sum(dim=(0, 2))
    return q + k + v + o


def gradient_scores(
    model: nn.Module,
    layout: AttentionLayout,
    batches: Iterable[Mapping[str, torch.Tensor]],
    num_label_tokens: int,
    progress: bool = True,
) -> torch.Tensor:
    """SNIP-style sensitivity: |W * dL/dW| summed over each head's slices, with L the mean token loss. Under
    ``torchrun``, ``batches`` is this rank's share and ``num_label_tokens`` the count over all ranks: the gradients
    are summed over the ranks before scoring. On a base quantized by bitsandbytes, W is the dequantized weight (a
    float32 copy swapped in while the gradients are taken)."""
    with _head_weights(model, layout) as per_layer:
        params = [w for weights in per_layer for w in weights.values()]
        grads = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        for batch in tqdm(list(batches), desc="P2D head scoring (gradient)", disable=not progress):
            loss = model(**batch).loss * count_label_tokens([batch]) / num_label_tokens
            for acc, g in zip(grads, torch.autograd.grad(loss, params)):
                acc += g.float()
        all_reduce_sum_(grads)
        scores = torch.zeros(layout.num_layers, layout.num_heads, dtype=torch.float64)
        grads_iter = iter(grads)
        for layer, weights in enumerate(per_layer):
            snip = {name: (w.detach().float() * next(grads_iter)).abs() for name, w in weights.items()}
            scores[layer] = slice_magnitudes(split_projections(snip, layout), layout).double().cpu()
    return scores


@contextmanager
def _head_weights(model: nn.Module, layout: AttentionLayout) -> Iterator[list[dict[str, torch.Tensor]]]:
    """``model`` in eval mode with the weights of its head-holding linears taking gradients, yielded per layer by
    module name: its own weights, or float32 copies swapped in where bitsandbytes quantized them (a 4-/8-bit weight
    takes no gradient). On exit every flag, mode and module is back as it was."""
    if is_quantized(model):
        with float32_projections(model, layout, with_output=True) as copies:
            model.eval()
            yield [{name: linear.weight for name, linear in layer.items()} for layer in copies]
        return
    per_layer = [layer_parameters(model, layout, layer) for layer in range(layout.num_layers)]
    params = [w for weights in per_layer for w in weights.values()]
    flags = [p.requires_grad for p in params]
    was_training = model.training
    model.eval()
    try:
        for p in params:
            p.requires_grad_(True)
        yield per_layer
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)


def random_scores(layout: AttentionLayout, seed: int) -> torch.Tensor:
    """Uniform random scores, the paper's random-heads baseline: one float64 ``torch.rand`` draw of shape
    (num_layers, num_heads) from a CPU generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(layout.num_layers, layout.num_heads, generator=generator, dtype=torch.float64)


def trainable_layers(num_layers: int, count: int | None) -> range:
    """The layers whose heads may be selected under ``p2d_head_trainable_layers`` (LLaMA-Factory's
    ``freeze_trainable_layers`` rule): ``count`` > 0 the last ``count`` layers, < 0 the first ``-count``, None (or 0)
    every layer."""
    if not count:
        return range(num_layers)
    return range(num_layers - count, num_layers) if count > 0 else range(-count)


def select_top(scores: torch.Tensor, k: int, layers: range | None = None) -> list[tuple[int, int]]:
    """The k highest-scoring (layer, head) pairs, among the heads of ``layers`` only (default: every layer); ties go
    to the lower (layer, head). Sorted by position."""
    layers = range(scores.shape[0]) if layers is None else layers
    flat = scores[layers.start : layers.stop].detach().cpu().double().numpy().ravel()
    if np.isnan(flat).any():
        raise ValueError("Head scores contain NaN; the proxy training diverged (lower `p2d_fhi_lr`).")
    order = np.lexsort((np.arange(flat.size), -flat))[:k]
    num_heads = scores.shape[1]
    return sorted((layers.start + int(i) // num_heads, int(i) % num_heads) for i in order)
