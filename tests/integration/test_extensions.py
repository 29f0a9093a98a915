"""Beside another LLaMA-Factory extension (a dummy one, built as DataFlex is): its subclasses of LLaMA-Factory's
argument classes get the P2D keys whenever it installs them, the plugin's wrappers never assume P2D attributes on an
object that lacks them, and an extension that replaces ``get_dataset`` is named when a P2D run needs it."""

from dataclasses import dataclass, field

import pytest
from llamafactory.hparams import parser
from llamafactory.hparams.data_args import DataArguments
from llamafactory.hparams.finetuning_args import FinetuningArguments

from p2d_llamafactory.integration.run import open_run
from tests.helpers.cli import parse_train_args


@dataclass
class ExtensionFinetuningArguments(FinetuningArguments):
    extension_mode: str = field(default="off", metadata={"help": "The extension's own key."})

    def __post_init__(self):
        super().__post_init__()
        if self.extension_mode not in ("off", "on"):
            raise ValueError("`extension_mode` must be off or on.")


@dataclass
class ExtensionDataArguments(DataArguments):
    extension_mix: float = field(default=0.5, metadata={"help": "The extension's data key."})


@pytest.fixture
def extension(monkeypatch):
    """The extension swaps its classes into LLaMA-Factory's argument lists after the plugin patched them."""
    for name in ("_TRAIN_ARGS", "_INFER_ARGS", "_EVAL_ARGS"):
        swapped = [
            ExtensionFinetuningArguments
            if isinstance(cls, type) and issubclass(cls, FinetuningArguments)
            else ExtensionDataArguments
            if cls is DataArguments
            else cls
            for cls in getattr(parser, name)
        ]
        monkeypatch.setattr(parser, name, swapped)


def test_an_extension_subclass_gets_the_p2d_keys_and_keeps_its_own(extension, make_args):
    _, data_args, _, finetuning_args, _ = parse_train_args(
        make_args(p2d_head_ratio=0.5, extension_mode="on", extension_mix=0.25)
    )
    assert type(finetuning_args).__name__ == "P2DExtensionFinetuningArguments"
    assert isinstance(finetuning_args, ExtensionFinetuningArguments) and finetuning_args.extension_mode == "on"
    assert finetuning_args.finetuning_type == "p2d_heads" and finetuning_args.p2d_head_ratio == 0.5
    assert isinstance(data_args, ExtensionDataArguments) and data_args.extension_mix == 0.25
    assert finetuning_args.uses_p2d and open_run() is None  # a run opens in run_sft, not at parse time


def test_the_extension_own_checks_still_run(extension, make_args):
    with pytest.raises(ValueError, match="`extension_mode` must be off or on"):
        parse_train_args(make_args(extension_mode="sideways"))


def test_a_run_of_the_extension_without_p2d_is_left_alone(extension, make_args):
    args = make_args(finetuning_type="lora", extension_mode="on")
    _, _, _, finetuning_args, _ = parse_train_args(args)
    assert finetuning_args.finetuning_type == "lora" and not finetuning_args.uses_p2d
    assert open_run() is None  # the plugin keeps nothing of the run


def test_the_wrappers_pass_through_arguments_without_the_p2d_keys(monkeypatch):
    """Another extension may parse with a class the plugin never saw: its runs go to LLaMA-Factory untouched."""
    from p2d_llamafactory.integration import data, hparams, model, train

    plain = ExtensionFinetuningArguments(finetuning_type="lora")
    seen = []
    original = lambda *args, **kwargs: seen.append(args) or "stock"
    assert open_run() is None
    assert hparams.p2d_args(plain) is None
    assert model.init_adapter(original, None, "model", None, plain, True) == "stock"
    assert train.run_sft(original, None, None, None, plain, None, None) == "stock"
    assert data.get_dataset(original, None, None, None, None, "sft", None) == "stock"
    assert hparams._verify_model_args(original, None, None, plain) == "stock"
    assert len(seen) == 4 and seen[0][3] is plain


def test_an_extension_that_replaces_get_dataset_is_named_for_a_p2d_run(monkeypatch, make_args):
    import llamafactory.train.sft.workflow as workflow

    def extension_get_dataset(template, model_args, data_args, training_args, stage, tokenizer, processor=None):
        raise AssertionError("not reached: the run is refused while parsing")

    monkeypatch.setattr(workflow, "get_dataset", extension_get_dataset)
    with pytest.raises(ValueError) as refused:
        parse_train_args(make_args(p2d_data_selection="random", p2d_data_ratio=0.5))
    assert str(refused.value).startswith(
        "P2D needs LLaMA-Factory's `get_dataset`, but `llamafactory.train.sft.workflow.get_dataset` is replaced by "
        "tests.integration.test_extensions.test_an_extension_that_replaces_get_dataset_is_named_for_a_p2d_run.<locals>."
        "extension_get_dataset. Remove the `p2d_*` keys"
    )
    parse_train_args(make_args(finetuning_type="lora"))  # a run without P2D does not need it


def test_an_extension_that_replaces_run_sft_is_named_too(monkeypatch, make_args):
    import llamafactory.train.tuner as tuner

    def extension_run_sft(model_args, data_args, training_args, finetuning_args, generating_args, callbacks=None):
        raise AssertionError("not reached")

    monkeypatch.setattr(tuner, "run_sft", extension_run_sft)
    with pytest.raises(
        ValueError, match=r"P2D needs LLaMA-Factory's `run_sft`, but `llamafactory.train.tuner.run_sft`"
    ):
        parse_train_args(make_args())


def test_argument_lists_of_runs_p2d_does_not_join_refuse_the_p2d_keys_by_name(monkeypatch, make_args):
    """Megatron Bridge (LLaMA-Factory main), MCA and any later list train through their own workflows: the P2D keys
    parse there only to be refused by name; their runs without P2D are unchanged."""
    from transformers import HfArgumentParser

    from p2d_llamafactory.integration.hparams import extend_argument_lists

    if not hasattr(parser, "_TRAIN_MBRIDGE_ARGS"):  # LLaMA-Factory 0.9.5: the same list shape, as a later one would be
        stock = [FinetuningArguments if issubclass(cls, FinetuningArguments) else cls for cls in parser._TRAIN_ARGS]
        monkeypatch.setattr(parser, "_TRAIN_MBRIDGE_ARGS", stock, raising=False)
    monkeypatch.setattr(parser, "_TRAIN_LATER_ARGS", [FinetuningArguments], raising=False)
    extend_argument_lists(parser)
    finetuning = [cls for cls in parser._TRAIN_MBRIDGE_ARGS if issubclass(cls, FinetuningArguments)]
    args = make_args(p2d_head_ratio=0.5)
    with pytest.raises(ValueError, match=r"P2D does not run under Megatron Bridge \(USE_MEGATRON_BRIDGE=1\); remove"):
        HfArgumentParser(parser._TRAIN_MBRIDGE_ARGS).parse_dict(args, allow_extra_keys=True)
    with pytest.raises(
        ValueError, match="P2D does not run under LLaMA-Factory's `_TRAIN_LATER_ARGS` runs; remove `p2d_"
    ):
        parser._TRAIN_LATER_ARGS[0](p2d_data_selection="random")
    assert parser._TRAIN_LATER_ARGS[0](finetuning_type="lora").finetuning_type == "lora"
    assert len(finetuning) == 1 and finetuning[0].__p2d_refusal__ == "Megatron Bridge (USE_MEGATRON_BRIDGE=1)"
