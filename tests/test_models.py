"""The model loader and what the stages read of a bitsandbytes-quantized base (bitsandbytes runs on this CPU)."""

import pytest
import torch

from p2d_llamafactory.heads.layout import find_attention_layout, projection_weights
from p2d_llamafactory.models import (
    Quantization,
    dense_weight,
    is_quantized,
    is_quantized_weight,
    load_causal_lm,
    parameter_count,
)


pytest.importorskip("bitsandbytes")

# worst absolute error of a dequantized weight relative to its row's largest entry: nf4/fp4 have 16 levels per
# 64-value block (absmax-scaled), int8 has 255 per row
QUANTIZATION_ERROR = {4: 0.25, 8: 1 / 127}


def test_quantization_settings_are_checked_by_name():
    with pytest.raises(ValueError, match=r"`quantization_bit` must be 4 or 8 \(bitsandbytes\); got 3"):
        Quantization(3)
    with pytest.raises(ValueError, match=r"`quantization_type` must be nf4 or fp4; got 'int4'"):
        Quantization(4, "int4")
    config = Quantization(4, "fp4", double_quantization=False).config(torch.bfloat16)
    assert config.load_in_4bit and config.bnb_4bit_quant_type == "fp4" and not config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16 and config.bnb_4bit_quant_storage == torch.bfloat16
    assert Quantization(8).config(torch.float32).load_in_8bit


@pytest.mark.parametrize("bits", [4, 8])
def test_a_quantized_base_counts_and_reads_its_full_weights(tiny_models, bits):
    path = tiny_models["llama_quant"]
    full = load_causal_lm(str(path), torch.float32, "cpu")
    quantized = load_causal_lm(str(path), torch.float32, "cpu", quantization=Quantization(bits))
    assert is_quantized(quantized) and not is_quantized(full)
    q_proj = quantized.model.layers[0].self_attn.q_proj
    assert is_quantized_weight(q_proj.weight)
    assert parameter_count(q_proj.weight) == q_proj.in_features * q_proj.out_features
    assert sum(map(parameter_count, quantized.parameters())) == sum(p.numel() for p in full.parameters())
    if bits == 4:  # the storage packs several 4-bit values into one element
        assert q_proj.weight.numel() < q_proj.in_features * q_proj.out_features

    layout = find_attention_layout(full)
    for layer in range(layout.num_layers):
        exact, read = projection_weights(full, layout, layer), projection_weights(quantized, layout, layer)
        for name in ("q", "k", "v", "o"):
            assert read[name].shape == exact[name].shape and read[name].dtype.is_floating_point
            error = (read[name].float() - exact[name]).detach().abs().amax(dim=1)
            scale = exact[name].detach().abs().amax(dim=1)
            assert bool((error <= QUANTIZATION_ERROR[bits] * scale + 1e-6).all()), (layer, name)
            assert float(error.max()) > 0  # it is quantized: not the full-precision weight
    linear = full.model.layers[0].self_attn.q_proj
    assert dense_weight(linear) is linear.weight  # an unquantized weight is read as it is


def test_dense_weights_survive_the_cpu_kernels_repacking(tiny_models, tiny_tokenizer):
    """bitsandbytes' CPU inference kernel repacks 4-bit weights in place on the first forward without gradients; the
    weights read afterwards are the same, up to the bfloat16 block scales of that layout, and reading them changes
    nothing."""
    from tests.helpers.tiny import random_ids

    model = load_causal_lm(str(tiny_models["llama_quant"]), torch.float32, "cpu", quantization=Quantization(4))
    q_proj = model.model.layers[0].self_attn.q_proj
    before = dense_weight(q_proj).clone()
    with torch.no_grad():
        model(input_ids=random_ids(tiny_tokenizer))
    packed = getattr(q_proj.weight.quant_state, "packing_format_for_cpu", False)
    if not packed:
        pytest.skip("this CPU's bitsandbytes kernel does not repack (no AVX512-BF16)")
    after = dense_weight(q_proj)
    assert getattr(q_proj.weight.quant_state, "packing_format_for_cpu", False)  # left as the kernel needs it
    torch.testing.assert_close(after.float(), before.float(), rtol=1e-2, atol=1e-3)
    assert not torch.equal(after.float(), torch.zeros_like(after.float()))
