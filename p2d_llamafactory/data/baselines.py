"""Data-selection baselines with the P2D interface: random, and IFD (Cherry LLM's instruction-following
difficulty). Data Whisperer is the probe itself with all heads of one middle layer (see ``select``)."""

import math
import random
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..distributed import map_sharded
from ..tokens import IGNORE_INDEX, label_token_counts, pad_batch, pad_id
from .prompts import ChatFrame, Example


def random_scores(num_examples: int, seed: int) -> list[float]:
    """One uniform draw in [0, 1) per example, in index order, from Python's ``random.Random(seed)`` (the same on
    every platform); the selection keeps the highest."""
    rng = random.Random(seed)
    return [rng.random() for _ in range(num_examples)]


def _sequences(tokenizer, frame: ChatFrame, example: Example, conditional: bool) -> tuple[list[int], int]:
    """Token ids and where the response starts: chat-framed prompt + response, or the response alone."""
    response = tokenizer.encode(example.response.strip(), add_special_tokens=False) + list(frame.answer_end)
    if not conditional:
        return response, 1  # the first response token has no context to be predicted from
    prompt = (
        list(frame.prefix) + tokenizer.encode(example.prompt.strip(), add_special_tokens=False) + list(frame.suffix)
    )
    return prompt + response, len(prompt)


def response_losses(
    model: nn.Module,
    tokenizer,
    frame: ChatFrame,
    examples: Sequence[Example],
    conditional: bool,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "P2D response loss",
) -> list[float]:
    """Mean token NLL of each example's response, given its prompt (``conditional``) or alone."""
    pad = pad_id(tokenizer)
    device = next(model.parameters()).device
    losses = []
    for start in tqdm(range(0, len(examples), batch_size), desc=desc, disable=not progress):
        seqs = [_sequences(tokenizer, frame, ex, conditional) for ex in examples[start : start + batch_size]]
        ids, mask, _ = pad_batch([seq for seq, _ in seqs], pad)  # right padding: positions need no shifting
        labels = torch.full_like(ids, IGNORE_INDEX)
        for b, (seq, answer_start) in enumerate(seqs):
            labels[b, answer_start : len(seq)] = ids[b, answer_start : len(seq)]
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        nll = torch.nn.functional.cross_entropy(
            logits[:, :-1].transpose(1, 2), labels[:, 1:].to(device), ignore_index=IGNORE_INDEX, reduction="none"
        )
        counts = label_token_counts(labels).clamp_min(1).to(device)
        losses.extend((nll.sum(dim=1) / counts).tolist())
    return losses


def ifd_scores(
    model: nn.Module, tokenizer, frame: ChatFrame, examples: Sequence[Example], batch_size: int = 8, progress=True
) -> list[float]:
    """IFD = PPL(response | prompt) / PPL(response): how much the instruction fails to help. Under ``torchrun``
    the batches are shared by the ranks and every rank gets every score."""

    def batch_ifd(batch: Sequence[Example]) -> list[float]:
        conditioned = response_losses(model, tokenizer, frame, batch, True, batch_size, False)
        alone = response_losses(model, tokenizer, frame, batch, False, batch_size, False)
        bar.update(len(batch))
        return [math.exp(c - a) for c, a in zip(conditioned, alone)]

    batches = [examples[start : start + batch_size] for start in range(0, len(examples), batch_size)]
    with tqdm(total=len(examples), desc="P2D IFD", unit="example", disable=not progress) as bar:
        return [score for scores in map_sharded(batch_ifd, batches) for score in scores]
