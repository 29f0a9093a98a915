"""What the patched functions of one run share: its parsed arguments, tokenizer and training split."""

from dataclasses import dataclass
from typing import Any


@dataclass
class RunContext:
    model_args: Any = None
    finetuning_args: Any = None
    training_args: Any = None
    tokenizer: Any = None
    train_dataset: Any = None
    full_data_tokens: int | None = None  # tokens of the training split before data selection
    pending_selection: Any = None  # (aligned training split, its tokenizer function) while get_dataset runs

    def clear(self) -> None:
        """Forget the previous run (a new one is being parsed); a run without P2D leaves the context empty."""
        for name, value in vars(RunContext()).items():
            setattr(self, name, value)


CURRENT = RunContext()
