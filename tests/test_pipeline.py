"""The stages written once: what the pipeline itself decides (resumes, the dtype rule)."""

import pytest
import torch

from p2d_llamafactory.files import HEADS_FILE
from p2d_llamafactory.heads.headset import HeadSet
from p2d_llamafactory.heads.layout import find_attention_layout
from p2d_llamafactory.hparams import P2DArguments
from p2d_llamafactory.pipeline import Output, adapt_heads, check_resumed_heads
from tests.helpers.tiny import build_model


def _checkpoint(tiny_tokenizer, tmp_path, selected, modules="q,o"):
    model = build_model("llama", tiny_tokenizer)
    layout = find_attention_layout(model)
    head_set = HeadSet("tiny", layout.shape(), "given", 0, len(selected) / layout.total_heads, [], selected)
    args = P2DArguments(p2d_head_modules=modules)
    peft_model = adapt_heads(model, layout, head_set, args, Output(None), None)
    peft_model.save_pretrained(tmp_path / "checkpoint-2")
    return layout, head_set


def test_a_resume_must_train_the_heads_and_slices_its_checkpoint_trained(tiny_tokenizer, tmp_path):
    layout, head_set = _checkpoint(tiny_tokenizer, tmp_path, [(0, 1), (2, 3)])
    checkpoint = tmp_path / "checkpoint-2"
    check_resumed_heads(checkpoint, head_set, HEADS_FILE, layout, ("q", "o"))  # the same run: resumes
    check_resumed_heads(None, head_set, HEADS_FILE)  # no resume: nothing to check
    other = HeadSet("tiny", layout.shape(), "given", 0, 0.25, [], [(0, 1), (1, 0)])
    with pytest.raises(
        ValueError,
        match=r"trained other heads than this run selects \(only there: \[\[2, 3\]\]; only now: \[\[1, 0\]\]\)",
    ):
        check_resumed_heads(checkpoint, other, HEADS_FILE, layout, ("q", "o"))
    with pytest.raises(ValueError, match=r"trained other slices than `p2d_head_modules` q,k,v,o"):
        check_resumed_heads(checkpoint, head_set, HEADS_FILE, layout, ("q", "k", "v", "o"))
    (checkpoint / HEADS_FILE).unlink()
    with pytest.raises(ValueError, match=r"has no p2d_heads.json"):
        check_resumed_heads(checkpoint, head_set, HEADS_FILE, layout, ("q", "o"))


@pytest.mark.parametrize("pure_bf16", [False, True])
def test_one_dtype_rule_for_the_trainable_parameters(pure_bf16):
    """As LLaMA-Factory does for LoRA: trainable parameters in float32 unless the run trains in pure bf16; frozen
    ones are left as they are."""
    from p2d_llamafactory.pipeline import train_in_float32

    model = torch.nn.Linear(4, 4).to(torch.bfloat16)
    model.bias.requires_grad_(False)
    train_in_float32(model, pure_bf16)
    assert model.weight.dtype == (torch.bfloat16 if pure_bf16 else torch.float32)
    assert model.bias.dtype == torch.bfloat16
