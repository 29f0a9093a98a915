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


def test_a_failure_after_the_last_step_is_raised_only_after_the_model_is_saved(tmp_path):
    """The AER reference vanished during training: the trainer still saves, then the run fails naming the cause."""
    reference = tmp_path / "reference"
    reference.mkdir()
    p2d = P2DFinetuningArguments(finetuning_type="lora", p2d_aer_reference=str(reference))
    training_args = _training_args(tmp_path / "out")
    training_args.process_index = 0
    state = SimpleNamespace(is_world_process_zero=True, global_step=2, log_history=[], max_steps=2)

    def trainer(model_args, data_args, training_args, finetuning_args, generating_args, callbacks):
        timing = next(c for c in callbacks if type(c).__name__ == "P2DTimingCallback")
        timing.on_train_begin(training_args, state, None)
        timing.on_train_end(training_args, state, None)  # the reference has no training time: fails here
        (tmp_path / "out" / "adapter_model.safetensors").write_text("saved")  # LLaMA-Factory saves after train()
        return "trained"

    with pytest.raises(RuntimeError, match="the model is saved, but recording the training time or the AER failed"):
        train.run_sft(trainer, "model", "data", training_args, p2d, "gen")
    assert (tmp_path / "out" / "adapter_model.safetensors").read_text() == "saved"
    assert open_run() is None


def test_a_diverged_head_run_stops_naming_its_rate():
    from p2d_llamafactory.report.timing import FiniteLossGuard

    guard = FiniteLossGuard(train._rate_note(P2DFinetuningArguments(finetuning_type="p2d_heads"), 1e-3))
    state = SimpleNamespace(global_step=5)
    guard.on_log(None, state, None, logs={"loss": 2.5})  # finite: nothing happens
    with pytest.raises(
        FloatingPointError,
        match=r"loss is nan at step 5: .* at 0.001 \(`learning_rate` 0.0001 x `p2d_head_lr_scale` 10\)",
    ):
        guard.on_log(None, state, None, logs={"loss": float("nan")})
