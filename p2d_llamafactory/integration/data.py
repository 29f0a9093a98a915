"""Patches of ``llamafactory.data.loader``.

LLaMA-Factory loads, aligns and tokenizes the data inside ``main_process_first`` (each node's rank 0 first, the
other ranks after it), where ranks cannot work together. So the training split's tokenization is deferred there, and
P2D's stages I and II run right after LLaMA-Factory's ``get_dataset``, on every rank together; only the selected
subset is tokenized (again rank 0 first, so the datasets cache is written once).
"""

from types import ModuleType

from . import wrap
from .run import P2DRun, open_run


def _selects_data(run: P2DRun | None) -> bool:
    return run is not None and run.finetuning_args.p2d_data_selection != "none"


def get_dataset(original, template, model_args, data_args, training_args, stage, tokenizer, processor=None):
    """Run P2D data selection on the aligned training split that LLaMA-Factory left untokenized, then tokenize the
    selected subset (and save it to ``tokenized_path``, if given); record the tokenizer and the training split in
    the run, for stage I and LoFiT."""
    run = open_run()
    if run is None:  # not a P2D run: nothing to select, nothing to keep
        return original(template, model_args, data_args, training_args, stage, tokenizer, processor)
    run.enter("data")
    tokenized_path = data_args.tokenized_path
    if _selects_data(run):
        data_args.tokenized_path = None  # LLaMA-Factory would save the split before selection: saved below instead
    try:
        dataset_module = original(template, model_args, data_args, training_args, stage, tokenizer, processor)
    finally:
        data_args.tokenized_path = tokenized_path
    if run.pending_selection is not None:
        from .selection import run_data_selection

        dataset, tokenize = run.pending_selection
        run.pending_selection = None
        subset = run_data_selection(run, dataset, template, tokenizer, tokenize)
        dataset_module["train_dataset"] = tokenize(subset)
        if tokenized_path is not None and training_args.should_save:
            _save_tokenized(dataset_module, tokenized_path)
    run.tokenizer = tokenizer
    run.train_dataset = dataset_module.get("train_dataset")
    return dataset_module


def _get_preprocessed_dataset(
    original, dataset, data_args, training_args, stage, template, tokenizer, processor=None, is_eval=False
):
    """Leave the training split aligned but untokenized when P2D selects data: ``get_dataset`` selects from it."""
    run = open_run()
    if is_eval or dataset is None or not _selects_data(run):
        return original(dataset, data_args, training_args, stage, template, tokenizer, processor, is_eval)

    def tokenize(subset):
        local = not data_args.data_shared_file_system
        with training_args.main_process_first(desc="pre-process dataset", local=local):
            return original(subset, data_args, training_args, stage, template, tokenizer, processor, is_eval)

    run.pending_selection = (dataset, tokenize)
    return dataset


def _save_tokenized(dataset_module: dict, path: str) -> None:
    """The tokenized splits in LLaMA-Factory's ``tokenized_path`` layout (``train``, ``validation[_name]``)."""
    from datasets import DatasetDict
    from llamafactory.extras import logging as lf_logging

    splits = {"train": dataset_module["train_dataset"]}
    evaluation = dataset_module.get("eval_dataset")
    if isinstance(evaluation, dict):
        splits.update({f"validation_{name}": split for name, split in evaluation.items()})
    elif evaluation is not None:
        splits["validation"] = evaluation
    DatasetDict(splits).save_to_disk(path)
    lf_logging.get_logger(__name__).info_rank0(
        f"Tokenized dataset (the P2D-selected training split) is saved at {path}."
    )


def patch_data_loader(module: ModuleType) -> None:
    wrap(module, "get_dataset", get_dataset)
    wrap(module, "_get_preprocessed_dataset", _get_preprocessed_dataset)
