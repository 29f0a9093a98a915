"""Token-level helpers every stage shares: the pad id, padded batches and counting the tokens that carry a loss."""

from collections.abc import Iterable, Mapping, Sequence

import torch


IGNORE_INDEX = -100  # a label that carries no loss (the prompt, padding), as LLaMA-Factory and transformers use


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id, or its EOS id where it has none (SmolLM2, Llama)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def pad_batch(
    rows: Sequence[Sequence[int]], pad: int, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """(ids, attention mask, offsets) of ``rows`` padded to the longest: on the right, or on the ``left`` (for
    generation); ``offsets[b]`` is where row b starts."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    offsets = []
    for b, row in enumerate(rows):
        offset = width - len(row) if left else 0
        ids[b, offset : offset + len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[b, offset : offset + len(row)] = 1
        offsets.append(offset)
    return ids, mask, offsets


def label_token_counts(labels: torch.Tensor) -> torch.Tensor:
    """Per row: the tokens whose next-token loss counts (labels shifted by one, IGNORE_INDEX left out)."""
    return (labels[..., 1:] != IGNORE_INDEX).sum(dim=-1)


def count_label_tokens(batches: Iterable[Mapping[str, torch.Tensor]]) -> int:
    """The loss-carrying tokens of ``batches`` (each with ``labels``): the denominator of a token-mean loss."""
    return int(sum(int(label_token_counts(batch["labels"]).sum()) for batch in batches))
