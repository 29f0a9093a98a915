"""Helpers shared by the benchmarks: the SmolLM2 model folder and a fixed GSM8K training batch.

GSM8K is read in place (never copied into the project). Every example is rendered with the tokenizer's chat
template (system + user question + assistant answer); labels are the input ids with the prompt part masked.
"""

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from p2d_llamafactory.assets.smollm2 import DEFAULT_MODEL_DIR, prepare_smollm2


# the shared benchmark data next to the repository (read in place, never copied); P2D_DATA_DIR overrides it
DATA_DIR = Path(os.environ.get("P2D_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data"))
GSM8K_TRAIN = DATA_DIR / "gsm8k" / "train.json"
IGNORE_INDEX = -100
Batch = dict[str, torch.Tensor]


def model_folder(model_dir: str | None) -> Path:
    """The SmolLM2-135M-Instruct folder: ``model_dir`` as given, or the default one prepared on demand."""
    if model_dir:
        return Path(model_dir)
    return prepare_smollm2(DEFAULT_MODEL_DIR)


def load_model(folder: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def load_gsm8k(path: Path = GSM8K_TRAIN) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def tokenize_example(tokenizer: Any, question: str, answer: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one chat-formatted example; labels are -100 over the prompt."""
    user = [{"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": answer}], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("The chat template renders the prompt differently inside the full conversation.")
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids


def _fit(ids: list[int], labels: list[int], seq_len: int, pad_id: int) -> tuple[list[int], list[int], list[int]]:
    """Truncate or right-pad to ``seq_len``: (input_ids, attention_mask, labels)."""
    ids, labels = ids[:seq_len], labels[:seq_len]
    pad = seq_len - len(ids)
    return ids + [pad_id] * pad, [1] * len(ids) + [0] * pad, labels + [IGNORE_INDEX] * pad


def make_batches(
    tokenizer: Any,
    examples: Sequence[dict[str, str]],
    num_batches: int,
    batch_size: int,
    seq_len: int,
    seed: int,
) -> list[Batch]:
    """``num_batches`` fixed (batch_size x seq_len) batches from a seeded sample of ``examples``.

    Examples that fill ``seq_len`` are preferred (truncated, no padding), so every position is a real token;
    each one still keeps some answer tokens as labels.
    """
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    rows: list[tuple[list[int], list[int], list[int]]] = []
    short: list[tuple[list[int], list[int], list[int]]] = []
    needed = num_batches * batch_size
    for i in order:
        ids, labels = tokenize_example(tokenizer, examples[i]["question"], examples[i]["answer"])
        fitted = _fit(ids, labels, seq_len, tokenizer.pad_token_id)
        has_labels = any(label != IGNORE_INDEX for label in fitted[2])
        (rows if len(ids) >= seq_len and has_labels else short).append(fitted)
        if len(rows) >= needed:
            break
    rows = (rows + short)[:needed]
    batches = []
    for start in range(0, needed, batch_size):
        chunk = rows[start : start + batch_size]
        ids, mask, labels = (torch.tensor([row[k] for row in chunk]) for k in range(3))
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return batches
