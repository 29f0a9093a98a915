"""Which weight slices train, and the standard LoRA config that encodes them exactly.

A head's q/k/v rows R of W: dW[R, :] = B @ A with B a fixed one-hot (d_out x |R|) and A trainable.
A head's o columns C of W: dW[:, C] = B @ A with A a fixed one-hot (|C| x d_in) and B trainable.
Each module gets rank |R| (or |C|) and alpha equal to its rank, so the LoRA scaling is exactly 1.
"""

import re
from dataclasses import dataclass
from typing import Literal

from peft import LoraConfig, TaskType

from ..heads.layout import AttentionLayout


@dataclass(frozen=True)
class SliceTarget:
    """The slice of one linear layer that trains: output rows (q/k/v) or input columns (o)."""

    module: str
    kind: Literal["rows", "cols"]
    index: tuple[int, ...]

    @property
    def rank(self) -> int:
        return len(self.index)


def _span(blocks: list[int], size: int, offset: int = 0) -> tuple[int, ...]:
    return tuple(offset + i for block in blocks for i in range(block * size, (block + 1) * size))


def slice_targets(
    layout: AttentionLayout, selected: list[tuple[int, int]], modules: tuple[str, ...]
) -> list[SliceTarget]:
    """The trainable slices of the selected heads; under GQA a head's k/v rows are those of its KV head.

    With a fused ``qkv_proj`` the q, k and v rows of a layer are one target (one LoRA module) whose rows are the
    union of the three blocks, each at its offset inside the fused weight.
    """
    by_layer: dict[int, list[int]] = {}
    for layer, head in selected:
        by_layer.setdefault(layer, []).append(head)
    targets = []
    for layer in sorted(by_layer):
        heads = sorted(set(by_layer[layer]))
        kv_heads = sorted({layout.kv_head(h) for h in heads})
        prefix = layout.attention_modules[layer]
        slices: dict[str, list[int]] = {}  # module -> rows (q/k/v) or columns (o), in the order of ``modules``
        for name in modules:
            slot = layout.slot(name)
            owners = heads if name in ("q", "o") else kv_heads
            slices.setdefault(slot.module, []).extend(_span(owners, layout.head_dim, slot.offset))
        for module, index in slices.items():
            kind = "cols" if module == "o_proj" else "rows"
            targets.append(SliceTarget(f"{prefix}.{module}", kind, tuple(sorted(index))))
    return targets


def lora_config(targets: list[SliceTarget]) -> LoraConfig:
    """A plain LoRA config (loadable by stock peft and LLaMA-Factory) with one rank per targeted module."""
    if not targets:
        raise ValueError("No head slices to train: the head set selects no heads.")
    ranks = {re.escape(t.module): t.rank for t in targets}
    default_rank = targets[0].rank
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=default_rank,
        lora_alpha=default_rank,
        target_modules=[t.module for t in targets],
        rank_pattern=ranks,
        alpha_pattern=dict(ranks),
        lora_dropout=0.0,
        bias="none",
        inference_mode=False,
    )


def matching_slices(layout: AttentionLayout, selected: list[tuple[int, int]], config: dict) -> tuple[str, ...] | None:
    """The ``p2d_head_modules`` whose head slices of ``selected`` give exactly the saved adapter ``config``'s target
    modules and ranks (its ``adapter_config.json``), or None where no choice does (an edited config or heads file)."""
    import itertools

    targets, ranks = config.get("target_modules"), config.get("rank_pattern") or {}
    if not isinstance(targets, list) or not isinstance(ranks, dict):
        return None
    names = ("q", "k", "v", "o")
    for count in range(1, len(names) + 1):
        for modules in itertools.combinations(names, count):
            expected = slice_targets(layout, selected, modules)
            if sorted(t.module for t in expected) == sorted(targets) and all(
                ranks.get(re.escape(t.module)) == t.rank for t in expected
            ):
                return modules
    return None
