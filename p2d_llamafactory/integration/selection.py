"""Stage II inside LLaMA-Factory: from the aligned training split (after conversion and the eval split,
before tokenization) to the selected subset, with stage I first when p2d selection needs the run's heads."""

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data.prompts import Example, examples_fingerprint
from ..data.report import write_selection_report
from ..data.select import SelectionInputs, check_selection, select_examples
from ..heads.layout import layout_from_config
from ..report.aer import record_timings
from .context import CURRENT
from .heads import run_head_identification, whole_model_loader
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


def _head_set(args, layout, tokenize_all: Callable[[], Any], load_model, training_args, tokenizer, model_name):
    """The run's head set for data selection: a heads file, or stage I on the full data (p2d with p2d_heads)."""
    if not args.p2d_heads_file and (args.p2d_data_selection != "p2d" or args.finetuning_type != "p2d_heads"):
        return None
    examples = tokenize_all() if not args.p2d_heads_file else []
    return run_head_identification(load_model, examples, layout, args, training_args, tokenizer, model_name)


def run_data_selection(dataset, data_args, training_args, template, tokenizer, tokenize: Callable[[Any], Any]):
    """Select ``p2d_data_ratio`` of the aligned training split with ``p2d_data_selection``; returns the subset."""
    from transformers import AutoConfig

    args, model_args = CURRENT.finetuning_args, CURRENT.model_args
    examples = aligned_examples(dataset)
    model_name = model_args.model_name_or_path
    config = AutoConfig.from_pretrained(model_name, trust_remote_code=model_args.trust_remote_code)
    layout = layout_from_config(config)
    load_model = whole_model_loader(model_args, training_args.device)
    encode = lambda text: len(tokenizer.encode(text, add_special_tokens=False))
    token_lengths = [encode(ex.prompt) + encode(ex.response) for ex in examples]
    check_selection(args, token_lengths, data_args.cutoff_len)  # before stage I and any model load
    head_set = _head_set(args, layout, lambda: tokenize(dataset), load_model, training_args, tokenizer, model_name)
    inputs = SelectionInputs(
        examples=examples,
        token_lengths=token_lengths,
        max_length=data_args.cutoff_len,
        tokenizer=tokenizer,
        frame=chat_frame(template, tokenizer),
        load_model=load_model,
        layout=layout,
        head_set=head_set,
        output_dir=Path(training_args.output_dir),
        model_name=model_name,
        data_fingerprint=examples_fingerprint(examples),
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
            inputs, selection, subset, args.p2d_data_ppl_samples, args.p2d_icl_batch_size, args.p2d_seed
        )
        record_timings(training_args.output_dir, selection.timings, inherited=selection.inherited_from is not None)
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
