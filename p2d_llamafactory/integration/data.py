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


def patch_data_loader(module: ModuleType) -> None:
    wrap(module, "get_dataset", get_dataset)
