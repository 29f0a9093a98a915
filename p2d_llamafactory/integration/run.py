"""One P2D training run inside LLaMA-Factory: its arguments, and what its integration points hand each other.

``run_sft`` (``integration.train``) opens the run for the duration of LLaMA-Factory's SFT workflow, which calls the
other points in this order, checked by :meth:`P2DRun.enter`:

1. ``data``: ``get_dataset`` (``integration.data``) runs stages I and II on the aligned training split and records
   the tokenizer, the training split and its token count;
2. ``adapter``: ``init_adapter`` (``integration.model``) sets up stage III on the model with what 1 recorded;
3. training: the timing callback reads the token count for an AER estimate.

The open run lives in a ``ContextVar`` for the duration of ``run_sft`` only: no run state outlives its run, and a
run without P2D opens none.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..hparams import P2DArguments


if TYPE_CHECKING:
    from datasets import Dataset
    from llamafactory.hparams import DataArguments, ModelArguments
    from transformers import PreTrainedTokenizerBase, Seq2SeqTrainingArguments


PHASES = ("opened", "data", "adapter")  # the order LLaMA-Factory's SFT workflow calls the integration points in


@dataclass
class P2DRun:
    model_args: ModelArguments
    data_args: DataArguments
    training_args: Seq2SeqTrainingArguments
    finetuning_args: P2DArguments
    phase: str = "opened"
    tokenizer: PreTrainedTokenizerBase | None = None
    train_dataset: Dataset | None = None
    full_data_tokens: int | None = None  # tokens of the training split before data selection
    # while get_dataset runs: the aligned training split and the function that tokenizes a subset of it
    pending_selection: tuple[Dataset, Callable[[Dataset], Dataset]] | None = None

    def enter(self, phase: str) -> None:
        """Move on to ``phase``; a point called out of order (LLaMA-Factory's workflow changed, or another
        extension calls it) is refused rather than run on missing inputs."""
        if PHASES.index(phase) != PHASES.index(self.phase) + 1:
            raise RuntimeError(
                f"P2D: LLaMA-Factory's SFT workflow reached `{phase}` after `{self.phase}`; P2D expects the order "
                f"{' -> '.join(PHASES)} (get_dataset, then init_adapter). Train with `llamafactory-cli train`, or set "
                "P2D_LLAMAFACTORY_DISABLE=1 to run without the plugin."
            )
        self.phase = phase


_OPEN: ContextVar[P2DRun | None] = ContextVar("p2d_run", default=None)


@contextmanager
def opened(run: P2DRun) -> Iterator[P2DRun]:
    """``run`` is the open run while the block executes (``run_sft``)."""
    token = _OPEN.set(run)
    try:
        yield run
    finally:
        _OPEN.reset(token)


def open_run() -> P2DRun | None:
    """The P2D run in progress, or None (no run, or a run without P2D)."""
    return _OPEN.get()
