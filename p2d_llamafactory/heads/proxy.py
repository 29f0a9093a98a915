"""The Fast Head Identification proxy: the model after a few full-batch AdamW steps (its memory: proxy_memory.py).

``p2d_fhi_trainable`` says what trains. ``all`` (the paper's): a float32 copy of the whole model. ``attention``:
float32 copies of the q/k/v projections only, swapped into the base model for the steps (every other weight is the
base's own, frozen: no copy, no gradient, no optimizer state) and swapped out again afterwards.
"""

import copy
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..distributed import all_reduce_sum_, is_distributed, sum_over_ranks
from ..models import dense_weight, is_quantized
from ..tokens import count_label_tokens
from .layout import AttentionLayout, find_attention_layout


Batch = Mapping[str, torch.Tensor]
MODEL_INPUTS = ("input_ids", "attention_mask", "labels")


def sample_indices(num_examples: int, num_samples: int, seed: int) -> list[int]:
    """A seeded random sample of example indices (all of them when there are not enough), in index order."""
    if num_samples >= num_examples:
        return list(range(num_examples))
    return sorted(random.Random(seed).sample(range(num_examples), num_samples))


QUANTIZED_ALL = (
    "`p2d_fhi_trainable: all` trains a float32 copy of every weight, which a base quantized by bitsandbytes "
    "(`quantization_bit`) does not have; use `p2d_fhi_trainable: attention` (float32 copies of the dequantized "
    "q/k/v projections), or give a head set from elsewhere (`p2d_heads_file`)."
)
_PAD_VALUES = {"input_ids": 0, "attention_mask": 0, "labels": -100}


PAD_MULTIPLE = 64


def make_batches(
    examples: Sequence[Mapping[str, Any]],
    collate: Callable[[list[dict]], Batch],
    micro_batch_size: int,
    device,
    by_length: bool = True,
) -> list[dict[str, torch.Tensor]]:
    """Collate tokenized examples into right-padded micro-batches on ``device``.

    ``by_length``: the examples are grouped by length (a stable sort) and each micro-batch is padded to its own longest
    example rounded up to a multiple of ``PAD_MULTIPLE`` tokens (at most the longest overall), so one long outlier
    does not pad every micro-batch and CPU kernels see few distinct shapes. Otherwise every micro-batch is padded
    to the longest example, in the order given. Padding is masked out of attention and loss, and the callers' steps
    are full-batch (the mean token loss over all micro-batches), so the grouping does not change a step.
    """
    longest = max(len(ex["input_ids"]) for ex in examples)
    ordered = sorted(examples, key=lambda ex: len(ex["input_ids"])) if by_length else list(examples)
    batches = []
    for start in range(0, len(ordered), micro_batch_size):
        chunk = ordered[start : start + micro_batch_size]
        width = longest
        if by_length:
            own = max(len(ex["input_ids"]) for ex in chunk)
            width = min(-(-own // PAD_MULTIPLE) * PAD_MULTIPLE, longest)
        features = [{k: ex[k] for k in MODEL_INPUTS if k in ex} for ex in chunk]
        batch = {k: v for k, v in collate(features).items() if k in MODEL_INPUTS}
        batches.append(
            {
                k: torch.nn.functional.pad(v, (0, width - v.shape[-1]), value=_PAD_VALUES[k]).to(device)
                for k, v in batch.items()
            }
        )
    return batches


def micro_batch_tokens(examples: Sequence[Mapping[str, Any]], micro_batch_size: int) -> int:
    """Tokens of the largest micro-batch of :func:`make_batches` (the one holding the longest example)."""
    width = max((len(ex["input_ids"]) for ex in examples), default=0)
    return min(micro_batch_size, len(examples)) * width


# --- the attention-only proxy ---------------------------------------------------------------------------------------


class _Float32Linear(torch.autograd.Function):
    """``x Wᵀ + b`` with a float32 ``W`` and ``b``: computed in float32, returned in the dtype of ``x``. The backward
    pass keeps ``x`` as it is, not a float32 copy (in a half-precision model, q, k and v would each keep one)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return nn.functional.linear(x.to(weight.dtype), weight, bias).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad = grad.to(weight.dtype)
        rows = grad.reshape(-1, grad.shape[-1])
        grad_x = (grad @ weight).to(x.dtype) if ctx.needs_input_grad[0] else None
        grad_weight = rows.T @ x.reshape(-1, x.shape[-1]).to(weight.dtype) if ctx.needs_input_grad[1] else None
        grad_bias = rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias


class Float32Projection(nn.Linear):
    """A trainable float32 copy of a projection (dequantized where the base is quantized by bitsandbytes). It
    computes in float32 and returns its output in the dtype of its input, so it fits into a half-precision or
    quantized model."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        self.weight = nn.Parameter(dense_weight(linear).detach().to(torch.float32, copy=True))
        if linear.bias is not None:
            self.bias = nn.Parameter(linear.bias.detach().to(torch.float32, copy=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Float32Linear.apply(x, self.weight, self.bias)


def projection_slots(
    model: nn.Module, layout: AttentionLayout, with_output: bool = False
) -> list[dict[str, tuple[nn.Module, str]]]:
    """Per layer, where each q/k/v linear (``q_proj``/``k_proj``/``v_proj``, or the fused ``qkv_proj``) sits, and
    ``o_proj`` too ``with_output``: (owner module, attribute); the owner is a PEFT wrapper when one wraps the linear
    (its ``base_layer``)."""
    names = [name for name in layout.linear_modules if with_output or name != "o_proj"]
    slots = []
    for path in layout.attention_modules:
        attention = model.get_submodule(path)
        layer = {}
        for name in names:
            module = getattr(attention, name)
            layer[name] = (module, "base_layer") if hasattr(module, "base_layer") else (attention, name)
        slots.append(layer)
    return slots


@contextmanager
def float32_projections(
    model: nn.Module, layout: AttentionLayout, with_output: bool = False
) -> Iterator[list[dict[str, Float32Projection]]]:
    """``model`` in train mode with each layer's q/k/v linears (and ``o_proj`` ``with_output``) swapped for
    :class:`Float32Projection` copies, its only trainable parameters (yielded per layer, by module name); every other
    weight stays the base's own, frozen.

    On exit, also on an error, the original modules, every ``requires_grad`` flag and every module's train/eval mode
    are back as they were.
    """
    flags = [(param, param.requires_grad) for param in model.parameters()]
    modes = [(module, module.training) for module in model.modules()]
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        model.requires_grad_(False)
        copies = []
        for slots in projection_slots(model, layout, with_output):
            layer = {}
            for name, (owner, attribute) in slots.items():
                original = getattr(owner, attribute)
                layer[name] = Float32Projection(original)
                setattr(owner, attribute, layer[name])
                swapped.append((owner, attribute, original))
            copies.append(layer)
        model.train()
        yield copies
    finally:
        for owner, attribute, original in reversed(swapped):
            setattr(owner, attribute, original)
        for param, flag in flags:
            param.requires_grad_(flag)
        for module, mode in modes:
            module.training = mode


def projection_view(model: nn.Module, layout: AttentionLayout, copies: Sequence[Mapping[str, nn.Module]]) -> nn.Module:
    """The ``attention`` proxy as scoring reads it: at each attention module's path (same names as in ``model``), the
    trained q/k/v copies and the base's own, untrained ``o_proj`` (shared, not copied); nothing else."""
    root = nn.Module()
    for path, layer in zip(layout.attention_modules, copies, strict=True):
        node = root
        for part in path.split("."):
            if part not in node._modules:
                node.add_module(part, nn.Module())
            node = node._modules[part]
        for name, module in {**layer, "o_proj": model.get_submodule(path).o_proj}.items():
            node.add_module(name, module)
    return root


# --- training -------------------------------------------------------------------------------------------------------


def _fit(
    model: nn.Module, params: list[nn.Parameter], batches: Sequence[Batch], steps: int, lr: float, progress: bool
) -> list[float]:
    """``steps`` full-batch AdamW steps of ``params``: each accumulates the gradient of the mean token loss over all
    micro-batches, so the update is the full-batch one whatever the micro-batch size. Returns the loss per step.

    Under ``torchrun``, ``batches`` is this rank's share of the micro-batches: the token count and the gradients are
    summed over the ranks before each step, so every rank applies the same full-batch update."""
    num_tokens = int(sum_over_ranks(count_label_tokens(batches)))
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    bar = tqdm(range(steps), desc="P2D proxy training (FHI)", disable=not progress)
    for _ in bar:
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for batch in batches:
            n = count_label_tokens([batch])
            loss = model(**batch).loss * (n / num_tokens)
            loss.backward()
            total += float(loss.detach())
        if is_distributed():
            for param in params:  # a rank without micro-batches, or a weight unused by its share, adds zeros
                if param.grad is None:
                    param.grad = torch.zeros_like(param)
            all_reduce_sum_([param.grad for param in params])
            total = sum_over_ranks(total)
        optimizer.step()
        losses.append(total)
        bar.set_postfix(loss=f"{total:.4f}")
    optimizer.zero_grad(set_to_none=True)
    return losses


def train_proxy(
    model: nn.Module,
    batches: Sequence[Batch],
    steps: int,
    lr: float,
    progress: bool = True,
    trainable: str = "all",
    layout: AttentionLayout | None = None,
) -> tuple[nn.Module, list[float]]:
    """Fine-tune the FHI proxy of ``model`` for ``steps`` full-batch steps; returns (proxy, loss per step).

    ``trainable="all"``: the proxy is a float32 copy of ``model``, all of it trained. ``"attention"``: only float32
    copies of the q/k/v projections train, inside ``model`` (:func:`float32_projections`), which is left as it was;
    the proxy is their :func:`projection_view`. Either way scoring reads the proxy like a model. Under ``torchrun``
    ``batches`` is this rank's share (see :func:`_fit`).
    """
    if sum_over_ranks(count_label_tokens(batches)) == 0:
        raise ValueError("The FHI examples have no response tokens to train on.")
    if trainable == "all":
        if is_quantized(model):
            raise ValueError(QUANTIZED_ALL)
        proxy = copy.deepcopy(model).to(torch.float32)
        proxy.requires_grad_(True)
        proxy.train()
        losses = _fit(proxy, list(proxy.parameters()), batches, steps, lr, progress)
        proxy.eval()
        proxy.requires_grad_(False)
        return proxy, losses
    if trainable != "attention":
        raise ValueError(f"`p2d_fhi_trainable` must be all or attention; got {trainable!r}.")
    layout = layout or find_attention_layout(model)
    with float32_projections(model, layout) as copies:
        params = [param for layer in copies for module in layer.values() for param in module.parameters()]
        losses = _fit(model, params, batches, steps, lr, progress)
    for layer in copies:
        for module in layer.values():
            module.requires_grad_(False).eval()
    return projection_view(model, layout, copies), losses
