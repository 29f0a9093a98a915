"""Gradient traffic per optimizer step (``report.traffic``): the prediction from shapes, the trainable parameters of
the real models, a 2-process DDP count through the communication hook, and the 7B arithmetic of the docs."""

import copy
import json
import os
import socket

import pytest
import torch

from p2d_llamafactory.adapter import count_slice_params
from p2d_llamafactory.experiments.published import published_config
from p2d_llamafactory.experiments.traffic import (
    METHODS,
    AllReduceCounter,
    MethodSetup,
    StepTraffic,
    default_heads,
    gradient_bytes,
    meta_model,
    predict,
    prepare,
    trainable_traffic,
)
from p2d_llamafactory.heads.layout import find_attention_layout
from tests.helpers.tiny import build_model, lm_batch, random_ids


@pytest.fixture(scope="module")
def tiny_llama(tiny_tokenizer):
    return build_model("llama", tiny_tokenizer)


def _trained(model, method, **kwargs):
    return prepare(copy.deepcopy(model), method, MethodSetup(**kwargs))


@pytest.mark.parametrize("method", METHODS)
def test_prediction_equals_the_trainable_parameters_of_the_real_model(tiny_llama, method):
    predicted = predict(tiny_llama, method)
    model = _trained(tiny_llama, method)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert predicted.trainable_params == sum(p.numel() for p in trainable)
    assert predicted.gradient_bytes == sum(p.numel() * p.element_size() for p in trainable)
    assert predicted == trainable_traffic(model, method)
    assert predicted.element_size == 4  # a float32 model


def test_full_counts_every_parameter_and_tied_weights_once(tiny_tokenizer, tiny_llama):
    assert predict(tiny_llama, "full").trainable_params == sum(p.numel() for p in tiny_llama.parameters())
    tied = build_model("llama", tiny_tokenizer)
    tied.lm_head.weight = tied.model.embed_tokens.weight
    assert predict(tied, "full").trainable_params == predict(tiny_llama, "full").trainable_params - (
        tied.lm_head.weight.numel()
    )


def test_p2d_heads_is_the_slice_count_times_the_element_size(tiny_llama):
    layout = find_attention_layout(tiny_llama)
    heads = [(0, 1), (2, 3)]
    for modules in (("q", "o"), ("q", "k", "v", "o")):
        predicted = predict(tiny_llama, "p2d_heads", setup=MethodSetup(heads=tuple(heads), head_modules=modules))
        assert predicted.gradient_bytes == count_slice_params(layout, heads, modules) * 4
        real = _trained(tiny_llama, "p2d_heads", heads=tuple(heads), head_modules=modules)
        assert gradient_bytes(real) == predicted.gradient_bytes  # the frozen one-hot factors are not reduced
        frozen = [n for n, p in real.named_parameters() if "lora_" in n and not p.requires_grad]
        assert frozen  # ... and they exist: one per sliced module
    assert predict(tiny_llama, "p2d_heads").trainable_params == count_slice_params(
        layout, default_heads(layout), ("q", "o")
    )


def test_adapters_on_a_bf16_model_are_float32_as_peft_builds_them(tiny_llama):
    half = copy.deepcopy(tiny_llama).to(torch.bfloat16)
    assert predict(half, "full").element_size == 2
    for method in ("lora", "p2d_heads"):
        predicted = predict(half, method)
        assert predicted.element_size == 4
        assert predicted.gradient_bytes == gradient_bytes(_trained(half, method))
        assert predict(half, method, element_size=2).gradient_bytes * 2 == predicted.gradient_bytes


def test_wire_bytes_of_a_ring_all_reduce():
    traffic = StepTraffic("full", 100, 2, 200)
    assert traffic.wire_bytes_per_rank(2) == 200
    assert traffic.wire_bytes_per_rank(8) == 350


def test_qwen25_7b_arithmetic_of_the_docs():
    """docs/benchmarks.md section 5: the paper's 30.4 GB is 2 x the bf16 payload (= the fp32 payload)."""
    model = meta_model(published_config("Qwen2.5-7B"))
    full = predict(model, "full", element_size=2)
    heads = predict(model, "p2d_heads", element_size=2)
    lora = predict(model, "lora", element_size=2)
    assert full.trainable_params == 7_615_616_512
    assert full.gradient_bytes == 15_231_233_024
    assert predict(model, "full", element_size=4).gradient_bytes == 2 * full.gradient_bytes == 30_462_466_048
    assert heads.trainable_params == 78 * 2 * 128 * 3584 == 71_565_312  # 78 of 784 heads, q rows + o columns
    assert 2 * heads.gradient_bytes == 286_261_248
    assert round(heads.trainable_params / full.trainable_params, 4) == 0.0094  # the paper's 0.94 %
    assert round(full.gradient_bytes / heads.gradient_bytes, 1) == 106.4
    assert lora.trainable_params == 28 * 128 * (2 * 3584 + 2 * (3584 + 512)) == 55_050_240


def test_unknown_method():
    with pytest.raises(ValueError, match="Unknown method"):
        predict(torch.nn.Linear(2, 2), "freeze")


# ------------------------------------------------------------------ 2-process DDP, gloo, through the comm hook


def _ddp_worker(rank: int, tokenizer, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        result = {}
        for method in METHODS:
            model = build_model("llama", tokenizer).train()
            predicted = predict(model, method)
            ddp = DistributedDataParallel(prepare(model, method))
            counter = AllReduceCounter()
            ddp.register_comm_hook(counter, AllReduceCounter.hook)
            optimizer = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=1e-3)
            measured = []
            for step in range(2):
                counter.reset()
                optimizer.zero_grad(set_to_none=True)
                ddp(**lm_batch(random_ids(tokenizer, (2, 8), seed=10 * rank + step))).loss.backward()
                optimizer.step()
                measured.append(counter.bytes)
            result[method] = {"predicted": predicted.gradient_bytes, "measured": measured}
        if rank == 0:
            with open(out, "w") as f:
                json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_all_reduces_the_predicted_bytes(tiny_tokenizer, tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "traffic.json"
    mp.spawn(_ddp_worker, args=(tiny_tokenizer, port, str(out)), nprocs=2)
    result = json.loads(out.read_text())
    for method in METHODS:
        assert result[method]["measured"] == [result[method]["predicted"]] * 2, method
    assert result["p2d_heads"]["predicted"] < result["lora"]["predicted"] < result["full"]["predicted"]
