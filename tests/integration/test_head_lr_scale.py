"""The head slices' learning rate: ``learning_rate × p2d_head_lr_scale``, a warning where heads cannot move."""

import pytest

from p2d_llamafactory.hparams import HEAD_LR_SCALE
from tests.helpers.cli import parse_train_args


@pytest.fixture
def parse(make_args):
    def run(**overrides):
        _, _, training_args, finetuning_args, _ = parse_train_args(make_args(**overrides))
        return training_args, finetuning_args

    return run


def test_heads_train_at_the_scaled_rate(parse, p2d_log):
    training_args, finetuning_args = parse(learning_rate=1e-4)
    caplog = p2d_log
    assert finetuning_args.p2d_head_lr_scale == HEAD_LR_SCALE == 10.0
    assert training_args.learning_rate == pytest.approx(1e-3)
    assert "learning_rate 0.0001 x p2d_head_lr_scale 10 = 0.001" in caplog.text
    assert "barely move" not in caplog.text
    training_args, _ = parse(learning_rate=3e-4, p2d_head_lr_scale=2.5)
    assert training_args.learning_rate == pytest.approx(7.5e-4)


def test_scale_one_keeps_the_given_rate_and_other_methods_are_untouched(parse):
    training_args, _ = parse(learning_rate=1e-3, p2d_head_lr_scale=1)
    assert training_args.learning_rate == pytest.approx(1e-3)
    training_args, _ = parse(learning_rate=1e-4, finetuning_type="lora")  # the key does nothing for LoRA
    assert training_args.learning_rate == pytest.approx(1e-4)


def test_a_rate_tuned_for_full_fine_tuning_warns(parse, p2d_log):
    training_args, _ = parse(learning_rate=2e-5, p2d_head_lr_scale=1)
    caplog = p2d_log
    assert training_args.learning_rate == pytest.approx(2e-5)
    assert "the head slices train at 2e-05, a rate at which ~1% of the weights barely move" in caplog.text
    assert "`p2d_head_lr_scale`" in caplog.text


@pytest.mark.parametrize("value", [0, -1, float("inf"), float("nan")])
def test_bad_scales_fail_at_parse_time_naming_the_key(parse, value, tmp_path):
    with pytest.raises(ValueError, match=r"`p2d_head_lr_scale` must be a finite number"):
        parse(p2d_head_lr_scale=value)
    assert not (tmp_path / "out").exists()
