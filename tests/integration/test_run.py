"""The run context: opened by run_sft for its duration only, the integration points in their stated order."""

from types import SimpleNamespace

import llamafactory.hparams  # noqa: F401  (loaded first: the plugin patches it as it loads)
import pytest

from p2d_llamafactory.integration import model, train
from p2d_llamafactory.integration.hparams import P2DFinetuningArguments
from p2d_llamafactory.integration.run import PHASES, P2DRun, open_run, opened


def _run() -> P2DRun:
    return P2DRun(None, None, SimpleNamespace(), P2DFinetuningArguments(finetuning_type="p2d_heads"))


def test_the_points_run_in_the_stated_order_or_are_refused():
    run = _run()
    assert PHASES == ("opened", "data", "adapter")
    with pytest.raises(RuntimeError, match=r"reached `adapter` after `opened`; P2D expects the order opened -> data"):
        run.enter("adapter")  # init_adapter before get_dataset: stage III would miss the training split
    run.enter("data")
    with pytest.raises(RuntimeError, match="reached `data` after `data`"):
        run.enter("data")
    run.enter("adapter")
    assert run.phase == "adapter"


def test_a_run_is_open_only_inside_its_block_also_when_it_fails():
    outer, inner = _run(), _run()
    assert open_run() is None
    with opened(outer):
        with pytest.raises(ValueError), opened(inner):
            assert open_run() is inner
            raise ValueError("a failing stage")
        assert open_run() is outer
    assert open_run() is None


def _training_args(tmp_path):
    return SimpleNamespace(process_index=1, output_dir=str(tmp_path), num_train_epochs=1.0, learning_rate=1e-4)


def test_run_sft_opens_the_run_for_a_p2d_run_and_none_for_a_stock_one(tmp_path):
    seen = []
    original = lambda *args: seen.append((open_run(), args[-1])) or "trained"
    p2d = P2DFinetuningArguments(finetuning_type="lora", p2d_data_selection="random")
    assert train.run_sft(original, "model", "data", _training_args(tmp_path), p2d, "gen") == "trained"
    run, callbacks = seen[-1]
    assert run.finetuning_args is p2d and run.model_args == "model" and run.phase == "opened"
    assert [type(c).__name__ for c in callbacks] == ["P2DTimingCallback"]
    assert open_run() is None  # closed with the run

    stock = P2DFinetuningArguments(finetuning_type="lora")
    train.run_sft(original, "model", "data", _training_args(tmp_path), stock, "gen", None)
    assert seen[-1] == (None, None)  # nothing opened, no callback added


def test_head_slices_outside_run_sft_are_refused_by_name():
    args = P2DFinetuningArguments(finetuning_type="p2d_heads")
    with pytest.raises(
        RuntimeError, match="launch it with `llamafactory-cli train` \\(init_adapter ran outside run_sft\\)"
    ):
        model.init_adapter(lambda *a: None, None, object(), SimpleNamespace(), args, True)
