"""The Fast Head Identification proxy: a float32 copy of the model after a few full-batch AdamW steps."""

import copy
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm


Batch = Mapping[str, torch.Tensor]
MODEL_INPUTS = ("input_ids", "attention_mask", "labels")


def sample_indices(num_examples: int, num_samples: int, seed: int) -> list[int]:
    """A seeded random sample of example indices (all of them when there are not enough), in index order."""
    if num_samples >= num_examples:
        return list(range(num_examples))
    return sorted(random.Random(seed).sample(range(num_examples), num_samples))


_PAD_VALUES = {"input_ids": 0, "attention_mask": 0, "labels": -100}


def make_batches(
    examples: Sequence[Mapping[str, Any]], collate: Callable[[list[dict]], Batch], micro_batch_size: int, device
) -> list[dict[str, torch.Tensor]]:
    """Collate tokenized examples into micro-batches on ``device``, all right-padded to one length.

    One shape for every micro-batch: CPU kernels are prepared once per new shape, which costs far more than
    the padding (masked out of attention and loss, so the result is unchanged).
    """
    width = max(len(ex["input_ids"]) for ex in examples)
    batches = []
    for start in range(0, len(examples), micro_batch_size):
        features = [{k: ex[k] for k in MODEL_INPUTS if k in ex} for ex in examples[start : start + micro_batch_size]]
        batch = {k: v for k, v in collate(features).items() if k in MODEL_INPUTS}
        batches.append(
            {
                k: torch.nn.functional.pad(v, (0, width - v.shape[-1]), value=_PAD_VALUES[k]).to(device)
                for k, v in batch.items()
            }
        )
    return batches


def count_label_tokens(batches: Sequence[Batch]) -> int:
    """Tokens that contribute to the causal-LM loss (labels shifted by one, -100 ignored)."""
    return int(sum((b["labels"][..., 1:] != -100).sum() for b in batches))


def train_proxy(
    model: nn.Module,
    batches: Sequence[Batch],
    steps: int,
    lr: float,
    progress: bool = True,
) -> tuple[nn.Module, list[float]]:
    """Fine-tune a float32 copy of ``model`` for ``steps`` full-batch steps; returns (proxy, loss per step).

    Each step accumulates the gradient of the mean token loss over all micro-batches, so the update is the
    full-batch one whatever the micro-batch size.
    """
    num_tokens = count_label_tokens(batches)
    if num_tokens == 0:
        raise ValueError("The FHI examples have no response tokens to train on.")
    proxy = copy.deepcopy(model).to(torch.float32)
    proxy.requires_grad_(True)
    proxy.train()
    optimizer = torch.optim.AdamW(proxy.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    bar = tqdm(range(steps), desc="P2D proxy training (FHI)", disable=not progress)
    for _ in bar:
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for batch in batches:
            n = int((batch["labels"][..., 1:] != -100).sum())
            loss = proxy(**batch).loss * (n / num_tokens)
            loss.backward()
            total += float(loss.detach())
        optimizer.step()
        losses.append(total)
        bar.set_postfix(loss=f"{total:.4f}")
    optimizer.zero_grad(set_to_none=True)
    del optimizer
    proxy.eval()
    proxy.requires_grad_(False)
    return proxy, losses
