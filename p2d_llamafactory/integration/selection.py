"""Stage II inside LLaMA-Factory: from the aligned training split (after conversion and the eval split,
before tokenization) to the selected subset, with stage I first when p2d selection needs the run's heads."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data.prompts import Example, examples_fingerprint
from ..data.report import sharegpt_record
from ..data.select import SelectionInputs, check_instruction, check_scores_file, check_selection, selection_settings
from ..heads.layout import layout_from_config
from ..pipeline import select_data
from .heads import find_run_heads, whole_model_loader
from .run import P2DRun
from .template import chat_frame


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


def run_data_selection(run: P2DRun, dataset, template, tokenizer, tokenize: Callable[[Any], Any]):
    """Select ``p2d_data_ratio`` of the aligned training split with ``p2d_data_selection``; returns the subset."""
    from transformers import AutoConfig

    args, model_args, data_args = run.finetuning_args, run.model_args, run.data_args
    examples = aligned_examples(dataset)
    config = AutoConfig.from_pretrained(model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code)
    layout = layout_from_config(config)
    load_model = whole_model_loader(run)
    encode = lambda text: len(tokenizer.encode(text, add_special_tokens=False))
    token_lengths = [encode(ex.prompt) + encode(ex.response) for ex in examples]
    check_selection(args, token_lengths, data_args.cutoff_len)  # before stage I and any model load
    check_instruction(args, tokenizer, data_args.cutoff_len)
    inputs = SelectionInputs(
        examples=examples,
        token_lengths=token_lengths,
        max_length=data_args.cutoff_len,
        tokenizer=tokenizer,
        frame=chat_frame(template, tokenizer),
        load_model=load_model,
        layout=layout,
        head_set=None,  # stage I's, below
        output_dir=Path(run.training_args.output_dir),
        model_name=model_args.model_name_or_path,
        data_fingerprint=examples_fingerprint(examples),
        progress=not run.training_args.disable_tqdm,
    )
    if args.p2d_data_scores_file:  # another data set's or model's scores: refused before stage I trains a proxy
        check_scores_file(args.p2d_data_scores_file, selection_settings(args, inputs, None))
    if args.p2d_heads_file or (args.p2d_data_selection == "p2d" and args.finetuning_type == "p2d_heads"):
        run.tokenizer = tokenizer  # stage I on the full training data, with the run's tokenizer
        examples_for_fhi = tokenize(dataset) if not args.p2d_heads_file else []
        inputs.head_set = find_run_heads(run, load_model, examples_for_fhi, layout)
    frame = inputs.frame
    overhead = len(frame.prefix) + len(frame.suffix) + len(frame.answer_end)
    run.full_data_tokens = sum(min(n + overhead, data_args.cutoff_len) for n in inputs.token_lengths)
    records = lambda selected: [
        sharegpt_record(row["_prompt"] + row["_response"][:1], row.get("_system"), row.get("_tools"))
        for row in dataset.select(selected)
    ]
    selection = select_data(inputs, args, run.training_args.should_save, records)
    return dataset.select(selection.selected)
