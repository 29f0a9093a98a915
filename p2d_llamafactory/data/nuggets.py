"""Nuggets (Li et al., "One-Shot Learning as Instruction Data Prospector", official code pldlgb/nuggets).

A candidate's golden score is the fraction of anchor examples whose answer the model finds more likely with the
candidate prepended as a one-shot demonstration than zero-shot: sum of the answer tokens' log-probabilities,
compared strictly (one-shot > zero-shot). As in the official code, the anchors (100 by default) are drawn from the
pool by k-means on the base model's mean-pooled last hidden states of the whole example (each centroid's nearest
example), and a demonstration is the candidate's chat turn placed before the anchor's.

The candidate's turn is run once and its KV cache reused for every anchor (copied and expanded over each anchor
batch), so a candidate costs one prefix pass plus the anchors' own tokens.
"""

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..distributed import gather, map_sharded, shard
from ..hparams import default_of
from ..tokens import pad_batch
from .prompts import ChatFrame, Example


@dataclass
class NuggetsResult:
    """One candidate's outcome: how many anchors its demonstration helped, of how many."""

    candidate: int
    wins: int
    anchors: int

    @property
    def score(self) -> float:
        return self.wins / self.anchors


@dataclass(frozen=True)
class Turn:
    """A framed example as token ids: everything up to the answer, then the answer (with the frame's end)."""

    context: list[int]
    answer: list[int]

    @property
    def ids(self) -> list[int]:
        return self.context + self.answer


def frame_turn(tokenizer, frame: ChatFrame, example: Example) -> Turn:
    prompt = tokenizer.encode(example.prompt.strip(), add_special_tokens=False)
    answer = tokenizer.encode(example.response.strip(), add_special_tokens=False) + list(frame.answer_end)
    return Turn(list(frame.prefix) + prompt + list(frame.suffix), answer)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _answer_logprobs(logits: torch.Tensor, ids: torch.Tensor, spans: Sequence[tuple[int, int]]) -> list[float]:
    """Sum of log p(ids[t] | ids[<t]) over t in each row's [start, end) span; ``logits[:, t]`` predicts t + 1."""
    sums = []
    for b, (start, end) in enumerate(spans):
        logprobs = torch.log_softmax(logits[b, start - 1 : end - 1].float(), dim=-1)
        targets = ids[b, start:end].to(logprobs.device)
        sums.append(float(logprobs.gather(-1, targets[:, None]).sum()))
    return sums


@torch.no_grad()
def zero_shot(model: nn.Module, anchors: Sequence[Turn], pad: int, batch_size: int) -> list[float]:
    """Each anchor's answer log-likelihood given its own prompt."""
    out: list[float] = []
    for start in range(0, len(anchors), batch_size):
        batch = anchors[start : start + batch_size]
        ids, mask, _ = pad_batch([turn.ids for turn in batch], pad)
        logits = model(input_ids=ids.to(_device(model)), attention_mask=mask.to(_device(model))).logits
        out += _answer_logprobs(logits, ids, [(len(t.context), len(t.ids)) for t in batch])
    return out


@torch.no_grad()
def one_shot(
    model: nn.Module, demo: list[int], anchors: Sequence[Turn], pad: int, batch_size: int, reuse_prefix: bool = True
) -> list[float]:
    """Each anchor's answer log-likelihood after the demonstration ``demo``: its KV cache computed once and reused
    (``reuse_prefix``), or the whole sequence run per anchor (the reference the benchmark compares with)."""
    device = _device(model)
    prefix_cache = None
    if reuse_prefix:
        prefix_cache = model(input_ids=torch.tensor([demo], device=device), use_cache=True).past_key_values
    out: list[float] = []
    for start in range(0, len(anchors), batch_size):
        batch = anchors[start : start + batch_size]
        if prefix_cache is None:
            ids, mask, _ = pad_batch([demo + turn.ids for turn in batch], pad)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            spans = [(len(demo) + len(t.context), len(demo) + len(t.ids)) for t in batch]
        else:
            ids, mask, _ = pad_batch([turn.ids for turn in batch], pad)
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(batch))
            full_mask = torch.cat([torch.ones(len(batch), len(demo), dtype=mask.dtype), mask], dim=1)
            logits = model(
                input_ids=ids.to(device), attention_mask=full_mask.to(device), past_key_values=cache, use_cache=True
            ).logits
            spans = [(len(t.context), len(t.ids)) for t in batch]
        out += _answer_logprobs(logits, ids, spans)
    return out


def embeddings(model: nn.Module, turns: Sequence[Turn], pad: int, batch_size: int) -> np.ndarray:
    """Mean of the last hidden state over each example's tokens (padding masked out); under ``torchrun`` the
    batches are shared by the ranks and every rank gets every row."""

    @torch.no_grad()
    def batch_means(batch: Sequence[Turn]) -> np.ndarray:
        ids, mask, _ = pad_batch([t.ids for t in batch], pad)
        hidden = model(
            input_ids=ids.to(_device(model)), attention_mask=mask.to(_device(model)), output_hidden_states=True
        ).hidden_states[-1]
        weights = mask.to(hidden.device, hidden.dtype)[..., None]
        return ((hidden * weights).sum(1) / weights.sum(1)).float().cpu().numpy()

    batches = [turns[start : start + batch_size] for start in range(0, len(turns), batch_size)]
    return np.concatenate(map_sharded(batch_means, batches))


def kmeans_anchors(vectors: np.ndarray, k: int, seed: int) -> list[int]:
    """Rows nearest to the k centroids of a seeded k-means (scipy's kmeans2, k-means++ start); a centroid whose
    nearest row is taken already gets its nearest free row. Sorted."""
    from scipy.cluster.vq import kmeans2

    if k > len(vectors):
        raise ValueError(f"k-means needs at least {k} rows; got {len(vectors)}.")
    data = vectors.astype(np.float64)
    centroids, _ = kmeans2(data, k, minit="++", seed=np.random.default_rng(seed))
    chosen: list[int] = []
    for centroid in centroids:
        order = np.argsort(((data - centroid) ** 2).sum(axis=1), kind="stable")
        chosen.append(int(next(i for i in order if int(i) not in chosen)))
    return sorted(chosen)


def random_anchors(num: int, k: int, seed: int) -> list[int]:
    return sorted(np.random.default_rng(seed).choice(num, size=k, replace=False).tolist())


@dataclass(frozen=True)
class NuggetsSettings:
    num_anchors: int = default_of("p2d_nuggets_anchors")
    anchor_sampling: str = default_of("p2d_nuggets_anchor_sampling")
    batch_size: int = default_of("p2d_nuggets_batch_size")
    seed: int = default_of("p2d_seed")


def choose_anchors(model: nn.Module, turns: dict[int, Turn], settings: NuggetsSettings, pad: int) -> list[int]:
    """Example indices of the anchor set, drawn from the candidates ``turns``."""
    indices = sorted(turns)
    if settings.num_anchors > len(indices):
        raise ValueError(
            f"`p2d_nuggets_anchors: {settings.num_anchors}` is larger than the {len(indices)} candidates to draw the "
            "anchors from; lower it."
        )
    if settings.anchor_sampling == "random":
        return [indices[i] for i in random_anchors(len(indices), settings.num_anchors, settings.seed)]
    vectors = embeddings(model, [turns[i] for i in indices], pad, settings.batch_size)
    return [indices[i] for i in kmeans_anchors(vectors, settings.num_anchors, settings.seed)]


def nuggets_scores(
    model: nn.Module,
    turns: dict[int, Turn],
    anchors: list[int],
    settings: NuggetsSettings,
    pad: int,
    done: dict[int, NuggetsResult],
    on_result: Callable[[NuggetsResult], None],
    progress: bool = True,
    reuse_prefix: bool = True,
) -> dict[int, NuggetsResult]:
    """Golden scores of every candidate in ``turns`` (the finished ones in ``done`` are kept, not redone);
    ``reuse_prefix=False`` runs each one-shot sequence whole (the benchmark's reference). Under ``torchrun`` the
    candidates left are shared by the ranks (each reports its own to ``on_result``) and every rank gets every score."""
    anchor_turns = [turns[i] for i in anchors]
    base = zero_shot(model, anchor_turns, pad, settings.batch_size)
    results = dict(done)
    todo = shard([i for i in sorted(turns) if i not in results])
    mine = {}
    for index in tqdm(todo, desc="P2D Nuggets (one-shot scoring)", disable=not progress):
        shot = one_shot(model, turns[index].ids, anchor_turns, pad, settings.batch_size, reuse_prefix)
        mine[index] = NuggetsResult(index, sum(s > z for s, z in zip(shot, base)), len(anchors))
        on_result(mine[index])
    for part in gather(mine):
        results.update(part)
    return results
