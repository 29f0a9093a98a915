"""The patch points the plugin needs from LLaMA-Factory: checked by what they are, not by the version string."""

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from p2d_llamafactory.integration import compat


def _installed_llamafactory() -> Path:
    import importlib.util

    return Path(importlib.util.find_spec("llamafactory").submodule_search_locations[0])


@pytest.fixture
def llamafactory_copy(tmp_path) -> Path:
    """A copy of the installed LLaMA-Factory's source, to break one patch point in."""
    site = tmp_path / "site"
    shutil.copytree(_installed_llamafactory(), site / "llamafactory", ignore=shutil.ignore_patterns("__pycache__"))
    return site


def _edit(site: Path, module: str, old: str, new: str, after: str = "") -> None:
    """Replace the first ``old`` after ``after`` in ``module``'s source."""
    path = site.joinpath(*module.split(".")).with_suffix(".py")
    text = path.read_text(encoding="utf-8")
    head, anchor, tail = text.partition(after) if after else ("", "", text)
    assert old in tail
    path.write_text(head + anchor + tail.replace(old, new, 1), encoding="utf-8")


def test_the_installed_llamafactory_has_every_patch_point():
    package = _installed_llamafactory()
    assert [compat._problem(point, package) for point in compat.PATCH_POINTS] == [None] * len(compat.PATCH_POINTS)


def test_a_missing_or_changed_patch_point_is_named(llamafactory_copy):
    package = llamafactory_copy / "llamafactory"
    _edit(llamafactory_copy, "llamafactory.hparams.parser", "def _verify_model_args(", "def _check_model_args(")
    _edit(
        llamafactory_copy,
        "llamafactory.model.adapter",
        "    is_trainable: bool",
        "    trainable: bool",
        after="def init_adapter(",
    )
    _edit(
        llamafactory_copy,
        "llamafactory.hparams.parser",
        "FinetuningArguments,",
        "",
        after="_INFER_ARGS =",
    )
    problems = {point.symbol: compat._problem(point, package) for point in compat.PATCH_POINTS}
    assert problems.pop("llamafactory.hparams.parser._verify_model_args") == (
        "`llamafactory.hparams.parser._verify_model_args` is not defined"
    )
    assert problems.pop("llamafactory.model.adapter.init_adapter") == (
        "`llamafactory.model.adapter.init_adapter` takes (config, model, model_args, finetuning_args, trainable); "
        "the plugin passes (config, model, model_args, finetuning_args, is_trainable)"
    )
    assert problems.pop("llamafactory.hparams.parser._INFER_ARGS") == (
        "`llamafactory.hparams.parser._INFER_ARGS` is not a list holding FinetuningArguments"
    )
    assert set(problems.values()) == {None}


def test_an_imported_function_is_checked_where_it_is_defined(llamafactory_copy):
    package = llamafactory_copy / "llamafactory"
    _edit(llamafactory_copy, "llamafactory.train.sft.workflow", "    callbacks:", "    callback_list:")
    (point,) = [p for p in compat.PATCH_POINTS if p.name == "run_sft"]
    assert "`llamafactory.train.sft.workflow.run_sft` takes (model_args, data_args, training_args" in compat._problem(
        point, package
    )
    _edit(llamafactory_copy, "llamafactory.train.tuner", "from .sft import run_sft", "from .sft import run_sft as sft")
    assert (
        compat._problem(point, package)
        == "`llamafactory.train.tuner.run_sft` is not imported in `llamafactory.train.tuner`"
    )


def test_a_broken_llamafactory_is_refused_before_any_patch(llamafactory_copy):
    """In a process: the first LLaMA-Factory module to load raises naming the point, and nothing is patched."""
    _edit(llamafactory_copy, "llamafactory.model.adapter", "def init_adapter(", "def build_adapter(")
    code = (
        "import sys\n"
        "for name in ('llamafactory.hparams', 'llamafactory.extras.constants'):\n"
        "    try:\n"
        "        __import__(name)\n"
        "    except Exception as err:\n"
        "        print(type(err).__name__, err)\n"
        "modules = [m for n, m in list(sys.modules.items()) if n.startswith('llamafactory')]\n"
        "print(sum(hasattr(v, '__p2d_original__') for m in modules for v in vars(m).values()), len(modules) > 5)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(llamafactory_copy)},
    )
    *errors, patched = result.stdout.strip().splitlines()[-3:]
    assert errors[0] == errors[1]  # every later LLaMA-Factory import is refused the same way
    error = errors[0]
    assert error.startswith("IncompatibleLlamaFactoryError p2d-llamafactory cannot extend this LLaMA-Factory")
    assert "`llamafactory.model.adapter.init_adapter` is not defined" in error
    assert "Nothing was patched" in error and "P2D_LLAMAFACTORY_DISABLE=1" in error and compat.TESTED in error
    assert str(llamafactory_copy) in error
    assert patched == "0 True"  # LLaMA-Factory's modules loaded before the refusal carry no P2D wrapper


@pytest.mark.parametrize(("version", "warns"), [("0.9.5", 0), ("0.9.6.dev0", 0), ("0.9.9", 0), ("0.10.0", 1)])
def test_outside_the_declared_range_it_warns_but_runs_on_what_it_checked(monkeypatch, version, warns):
    monkeypatch.setattr(compat, "installed_version", lambda: version)
    compat.verify.cache_clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compat.verify(str(_installed_llamafactory()))
    compat.verify.cache_clear()
    expected = f"found llamafactory {version}. Every patch point checked out, so the P2D extensions are active."
    assert sum(expected in str(warning.message) for warning in caught) == warns
