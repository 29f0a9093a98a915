"""Activation through the .pth file: lazy, cheap at interpreter start, switchable off."""

import pytest

from tests.helpers.cli import run_python


HEAVY = ("torch", "transformers", "llamafactory", "peft", "importlib.metadata", "email", "importlib.abc")


@pytest.mark.parametrize("disabled", ["", "1"])
def test_interpreter_start_imports_nothing_heavy(disabled):
    """The hook runs at every Python start in the environment: it imports no torch, no llamafactory and none of
    importlib.metadata's modules (41-60 ms together), whether the plugin is on or off."""
    out = run_python(
        f"import sys; print(sorted(m for m in {HEAVY!r} if m in sys.modules));"
        "print(any(type(f).__name__ == 'P2DFinder' for f in sys.meta_path))",
        P2D_LLAMAFACTORY_DISABLE=disabled,
    )
    assert out.splitlines() == ["[]", str(not disabled)]


def test_llamafactory_import_applies_every_patch():
    out = run_python(
        "from llamafactory.hparams import parser, get_train_args; from llamafactory.model import adapter, loader;"
        "from llamafactory.data import loader as data_loader, get_dataset; import llamafactory.train.tuner as tuner;"
        "print(parser._TRAIN_ARGS[3].__name__, parser._INFER_ARGS[2].__name__, parser._EVAL_ARGS[3].__name__);"
        "print(hasattr(tuner.get_train_args, '__p2d_original__'), hasattr(loader.init_adapter, '__p2d_original__'),"
        "hasattr(get_dataset, '__p2d_original__'), hasattr(parser._verify_model_args, '__p2d_original__'))"
    )
    assert out.splitlines()[-2:] == [
        "P2DFinetuningArguments P2DFinetuningArguments P2DFinetuningArguments",
        "True True True True",
    ]


def test_environment_variable_switches_it_off():
    out = run_python(
        "import sys; from llamafactory.hparams import parser; from llamafactory.model import loader;"
        "print(parser._TRAIN_ARGS[3].__name__, hasattr(loader.init_adapter, '__p2d_original__'),"
        "any(type(f).__name__ == 'P2DFinder' for f in sys.meta_path))",
        P2D_LLAMAFACTORY_DISABLE="1",
    )
    assert out.splitlines()[-1] == "FinetuningArguments False False"


def test_switched_off_the_p2d_keys_are_unknown_to_llamafactory():
    out = run_python(
        "from llamafactory.hparams import parser\n"
        "try:\n"
        "    parser._parse_train_args({'model_name_or_path': 'm', 'stage': 'sft', 'p2d_head_ratio': 0.1,"
        " 'output_dir': 'x'})\n"
        "except ValueError as err:\n"
        "    print(err)",
        P2D_LLAMAFACTORY_DISABLE="1",
    )
    assert "Some keys are not used by the HfArgumentParser: ['p2d_head_ratio']" in out


@pytest.mark.parametrize(
    "first", ["llamafactory.model.adapter", "llamafactory.data.loader", "llamafactory.train.tuner"]
)
def test_any_llamafactory_module_can_be_imported_first(first):
    out = run_python(
        f"import {first}; from llamafactory.model import loader; print(hasattr(loader.init_adapter, '__p2d_original__'))"
    )
    assert out.splitlines()[-1] == "True"
