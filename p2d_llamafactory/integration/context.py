"""What the patched functions of one run share: its parsed arguments, tokenizer and training split."""

from dataclasses import dataclass
from typing import Any


@dataclass
class RunContext:
    training_args: Any = None
    tokenizer: Any = None
    train_dataset: Any = None


CURRENT = RunContext()
