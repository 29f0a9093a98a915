"""Activation through the .pth file: lazy, switchable off, inactive on an unsupported llamafactory."""

import sys
import warnings

import pytest

from p2d_llamafactory import _autoload
from tests.helpers.cli import run_python


def test_interpreter_start_imports_neither_torch_nor_llamafactory():
    out = run_python(
        "import sys; print(sorted(m for m in ('torch', 'transformers', 'llamafactory', 'peft') if m in sys.modules));"
        "print(any(type(f).__name__ == 'P2DFinder' for f in sys.meta_path))"
    )
    assert out.splitlines() == ["[]", "True"]


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


def test_unsupported_llamafactory_version_warns_and_stays_inactive(monkeypatch):
    monkeypatch.setattr(_autoload.metadata, "version", lambda name: "0.9.4")
    with pytest.warns(
        RuntimeWarning, match=r"supports llamafactory 0.9.5, found 0.9.4; the P2D extensions stay inactive"
    ):
        assert _autoload._supported_version() is None
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, _autoload.P2DFinder)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert _autoload.install() is False
    assert not any(isinstance(f, _autoload.P2DFinder) for f in sys.meta_path)


@pytest.mark.parametrize(
    "first", ["llamafactory.model.adapter", "llamafactory.data.loader", "llamafactory.train.tuner"]
)
def test_any_llamafactory_module_can_be_imported_first(first):
    out = run_python(
        f"import {first}; from llamafactory.model import loader; print(hasattr(loader.init_adapter, '__p2d_original__'))"
    )
    assert out.splitlines()[-1] == "True"
