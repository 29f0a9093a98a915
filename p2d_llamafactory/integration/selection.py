"""Stage II inside LLaMA-Factory: from the aligned training split (after conversion and the eval split,
before tokenization) to the selected subset, with stage I first when p2d selection needs the run's heads."""

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..data.prompts import Example
from ..data.report import write_selection_report
from ..data.select import SelectionInputs, select_examples
from ..heads.headset import HeadSet
from ..heads.identify import FHIInputs, identify_heads, plan_identification, reusable_head_set
from ..heads.layout import layout_from_config
from .context import CURRENT
from .template import chat_frame


logger = logging.getLogger(__name__)


def aligned_examples(dataset) -> list[Example]:
    """Prompt and response text of every aligned example (``_prompt`` turns joined, ``_response``)."""
    examples = []
    for index, row in enumerate(dataset):
        response = row.get("_response") or []
        if not response or not str(response[0].get("content", "")).strip():
            raise ValueError(
                f"Training example {index} has no response; data selection scores prompt/response pairs "
                "(check the dataset's `columns` mapping in dataset_info.json)."
            )
        prompt = "\n\n".join(str(turn.get("content", "")) for turn in row["_prompt"])
        examples.append(Example(index, prompt, str(response[0]["content"])))
    return examples


def _fingerprint(examples: list[Example]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(example.prompt.encode())
        digest.update(b"\0")
        digest.update(example.response.encode())
        digest.update(b"\1")
    return digest.hexdigest()[:16]


def _model_loader(model_args, device) -> Callable[[], torch.nn.Module]:
    cache: dict[str, torch.nn.Module] = {}

    def load() -> torch.nn.Module:
        if "model" not in cache:
            from transformers import AutoModelForCausalLM

            dtype = model_args.compute_dtype or "auto"
            model = AutoModelForCausalLM.from_pretrained(
                model_args.model_name_or_path, dtype=dtype, trust_remote_code=model_args.trust_remote_code
            )
            cache["model"] = model.to(device).eval()
        return cache["model"]

    return load


def _head_set(args, layout, tokenize_all: Callable[[], Any], load_model, training_args, collate_tokenizer, model_name):
    """The run's head set for p2d selection: a heads file, an identical earlier stage I, or stage I now."""
    if args.p2d_heads_file:
        head_set = HeadSet.load(args.p2d_heads_file)
        head_set.check_shape(layout)
        return head_set
    if args.p2d_data_selection != "p2d" or args.finetuning_type != "p2d_heads":
        return None
    tokenized = tokenize_all()
    _, settings = plan_identification(tokenized, args, model_name)
    previous = reusable_head_set(training_args.output_dir, settings, layout)
    if previous is not None:
        return previous
    from transformers import DataCollatorForSeq2Seq

    inputs = FHIInputs(
        model=load_model(),
        model_name=model_name,
        examples=tokenized,
        collate=DataCollatorForSeq2Seq(collate_tokenizer, label_pad_token_id=-100, padding=True, return_tensors="pt"),
        micro_batch_size=training_args.per_device_train_batch_size,
        output_dir=training_args.output_dir,
        progress=not training_args.disable_tqdm,
    )
    return identify_heads(inputs, args, layout)


def run_data_selection(dataset, data_args, training_args, template, tokenizer, tokenize: Callable[[Any], Any]):
    """Select ``p2d_data_ratio`` of the aligned training split with ``p2d_data_selection``; returns the subset."""
    from transformers import AutoConfig

    args, model_args = CURRENT.finetuning_args, CURRENT.model_args
    examples = aligned_examples(dataset)
    model_name = model_args.model_name_or_path
    config = AutoConfig.from_pretrained(model_name, trust_remote_code=model_args.trust_remote_code)
    layout = layout_from_config(config)
    load_model = _model_loader(model_args, training_args.device)
    head_set = _head_set(args, layout, lambda: tokenize(dataset), load_model, training_args, tokenizer, model_name)
    CURRENT.head_set = head_set
    encode = lambda text: len(tokenizer.encode(text, add_special_tokens=False))
    inputs = SelectionInputs(
        examples=examples,
        token_lengths=[encode(ex.prompt) + encode(ex.response) for ex in examples],
        max_length=data_args.cutoff_len,
        tokenizer=tokenizer,
        frame=chat_frame(template, tokenizer),
        load_model=load_model,
        layout=layout,
        head_set=head_set,
        output_dir=Path(training_args.output_dir),
        model_name=model_name,
        data_fingerprint=_fingerprint(examples),
        progress=not training_args.disable_tqdm,
    )
    frame = inputs.frame
    overhead = len(frame.prefix) + len(frame.suffix) + len(frame.answer_end)
    CURRENT.full_data_tokens = sum(min(n + overhead, data_args.cutoff_len) for n in inputs.token_lengths)
    logger.info(
        "P2D: stage II, data selection (%s): scoring %d candidates, keeping %.0f%%",
        args.p2d_data_selection,
        len(examples),
        100 * args.p2d_data_ratio,
    )
    start = time.perf_counter()
    selection = select_examples(inputs, args)
    if training_args.should_save:
        subset = [_sharegpt(row) for row in dataset.select(selection.selected)]
        write_selection_report(
            inputs, selection, head_set, subset, args.p2d_data_ppl_samples, args.p2d_icl_batch_size, args.p2d_seed
        )
    logger.info(
        "P2D: stage II done in %.1f s: data selection (%s) keeps %d of %d training examples",
        time.perf_counter() - start,
        selection.method,
        len(selection.selected),
        len(examples),
    )
    return dataset.select(selection.selected)


def _sharegpt(row: dict[str, Any]) -> dict[str, Any]:
    """An aligned example back in LLaMA-Factory's sharegpt format."""
    names = {"user": "human", "assistant": "gpt", "observation": "observation", "function": "function_call"}
    turns = [
        {"from": names.get(t["role"], t["role"]), "value": t["content"]} for t in row["_prompt"] + row["_response"][:1]
    ]
    record: dict[str, Any] = {"conversations": turns}
    if row.get("_system"):
        record["system"] = row["_system"]
    if row.get("_tools"):
        record["tools"] = row["_tools"]
    return record
