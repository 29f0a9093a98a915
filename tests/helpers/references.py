"""Independent reference computations the tests compare the package against.

Each one is written from the definition, head by head, and reads the model's ``q_proj``/``k_proj``/``v_proj``/
``o_proj`` weights (for Phi-3, the q/k/v parts of ``qkv_proj`` as its modeling code splits them) and its config
directly: none of them uses ``p2d_llamafactory``.
"""

import numpy as np
import torch


def _geometry(model, head: int) -> tuple[int, int]:
    """(head_dim, the KV head that query head ``head`` reads)."""
    config = model.config
    group_size = config.num_attention_heads // config.num_key_value_heads
    return config.head_dim, head // group_size


def linear_names(attention) -> tuple[str, ...]:
    """The attention module's linear layers: q/k/v/o, or Phi-3's fused qkv and o."""
    return ("qkv_proj", "o_proj") if hasattr(attention, "qkv_proj") else ("q_proj", "k_proj", "v_proj", "o_proj")


def split_qkv(weights: dict[str, torch.Tensor], config) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The q, k and v matrices (out x in) from one layer's weights by module name; Phi-3's qkv_proj is split the
    way Phi3Attention splits its output."""
    if "qkv_proj" not in weights:
        return weights["q_proj"], weights["k_proj"], weights["v_proj"]
    q_rows = config.num_attention_heads * config.head_dim
    kv_rows = config.num_key_value_heads * config.head_dim
    fused = weights["qkv_proj"]
    return fused[:q_rows], fused[q_rows : q_rows + kv_rows], fused[q_rows + kv_rows :]


def head_distribution_np(model, layer: int, head: int, temperature: float) -> np.ndarray:
    """P_h = Softmax(Flatten(Wq_h (Wk_g^T Wv_g)) / tau) of one query head, in numpy float64.

    Wq_h, Wk_g, Wv_g are the d_model x d_head projections of the head and its KV group; nn.Linear stores their
    transposes (output features as rows).
    """
    d, g = _geometry(model, head)
    attention = model.model.layers[layer].self_attn
    weights = {n: getattr(attention, n).weight.detach().double() for n in linear_names(attention)}
    q, k, v = (w.numpy() for w in split_qkv(weights, model.config))
    wq = q[head * d : (head + 1) * d].T
    wk = k[g * d : (g + 1) * d].T
    wv = v[g * d : (g + 1) * d].T
    logits = (wq @ (wk.T @ wv)).ravel() / temperature
    e = np.exp(logits - logits.max())
    return e / e.sum()


def cosine_distance_np(p: np.ndarray, q: np.ndarray) -> float:
    """1 - cosine similarity."""
    return 1.0 - float(p @ q) / float(np.linalg.norm(p) * np.linalg.norm(q))


def snip_head_scores(model, batch: dict[str, torch.Tensor]) -> np.ndarray:
    """|W * dL/dW| of every head, (num_layers, num_heads) in float64, with L = ``model(**batch).loss``.

    The gradient comes from one ``torch.autograd.grad`` call. A query head's score sums its q_proj rows, its KV
    group's k_proj and v_proj rows and its o_proj columns.
    """
    config = model.config
    layers = model.model.layers
    names = linear_names(layers[0].self_attn)
    weights = [getattr(layer.self_attn, proj).weight for layer in layers for proj in names]
    grads = torch.autograd.grad(model(**batch).loss, weights)
    snip = [(w.detach().double() * g.double()).abs() for w, g in zip(weights, grads)]
    scores = np.zeros((len(layers), config.num_attention_heads))
    for layer in range(len(layers)):
        per_module = dict(zip(names, snip[len(names) * layer : len(names) * (layer + 1)]))
        q, k, v = split_qkv(per_module, config)
        o = per_module["o_proj"]
        for head in range(config.num_attention_heads):
            d, g = _geometry(model, head)
            rows, kv_rows = slice(head * d, (head + 1) * d), slice(g * d, (g + 1) * d)
            scores[layer, head] = float(q[rows].sum() + k[kv_rows].sum() + v[kv_rows].sum() + o[:, rows].sum())
    return scores


def top_heads(scores, k: int) -> list[tuple[int, int]]:
    """The k highest of a (layers, heads) score table as (layer, head), ties to the lower position, sorted."""
    flat = np.asarray(scores, dtype=np.float64).ravel()
    best = sorted(range(flat.size), key=lambda i: (-flat[i], i))[:k]
    return sorted(divmod(i, np.shape(scores)[1]) for i in best)


def exact_w1(p: np.ndarray, q: np.ndarray) -> float:
    """W1 of the float64 arrays taken as exact rationals (each normalised by its own sum), in integer arithmetic."""
    scale = 2**1100  # every float64 times this is an integer

    def to_int(v: float) -> int:
        num, den = v.as_integer_ratio()
        return num * (scale // den)

    ip, iq = [to_int(v) for v in p.tolist()], [to_int(v) for v in q.tolist()]
    tp, tq = sum(ip), sum(iq)
    total, cp, cq = 0, 0, 0
    for a, b in zip(ip[:-1], iq[:-1]):
        cp, cq = cp + a, cq + b
        total += abs(cp * tq - cq * tp)
    return total / (tp * tq)


def eager_attention_mass(model, ids, mask, heads_by_layer, rows, spans) -> torch.Tensor:
    """Attention mass from the query ``rows`` of each batch row onto each of its key ``spans``, summed over the
    given heads, from the eager attention weights (``output_attentions=True``): (batch, spans) in float64."""
    previous, model.config._attn_implementation = model.config._attn_implementation, "eager"
    try:
        attentions = model(input_ids=ids, attention_mask=mask, output_attentions=True).attentions
    finally:
        model.config._attn_implementation = previous
    expected = torch.zeros(len(rows), max(len(s) for s in spans), dtype=torch.float64)
    for layer, heads in heads_by_layer.items():
        for b in range(len(rows)):
            a = attentions[layer][b, heads][:, rows[b]].double()  # (heads, rows, keys)
            for d, (start, end) in enumerate(spans[b]):
                expected[b, d] += a[..., start:end].sum()
    return expected
