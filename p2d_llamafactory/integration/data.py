"""Patches of ``llamafactory.data.loader``."""

from types import ModuleType

from . import wrap
from .context import CURRENT


def get_dataset(original, template, model_args, data_args, training_args, stage, tokenizer, processor=None):
    """Remember the tokenized training split and tokenizer, for Fast Head Identification."""
    dataset_module = original(template, model_args, data_args, training_args, stage, tokenizer, processor)
    CURRENT.tokenizer = tokenizer
    CURRENT.train_dataset = dataset_module.get("train_dataset")
    return dataset_module


def _get_preprocessed_dataset(
    original, dataset, data_args, training_args, stage, template, tokenizer, processor=None, is_eval=False
):
    """Run P2D data selection on the aligned training split, then tokenize only the selected subset."""
    args = CURRENT.finetuning_args
    if is_eval or dataset is None or args is None or args.p2d_data_selection == "none":
        return original(dataset, data_args, training_args, stage, template, tokenizer, processor, is_eval)
    from .selection import run_data_selection

    def tokenize(subset):
        return original(subset, data_args, training_args, stage, template, tokenizer, processor, is_eval)

    subset = run_data_selection(dataset, data_args, training_args, template, tokenizer, tokenize)
    return tokenize(subset)


def patch_data_loader(module: ModuleType) -> None:
    wrap(module, "get_dataset", get_dataset)
    wrap(module, "_get_preprocessed_dataset", _get_preprocessed_dataset)
