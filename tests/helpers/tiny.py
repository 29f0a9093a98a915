"""Tiny random models, a tiny tokenizer and random inputs, built locally so the tests run offline."""

import copy
import json
from pathlib import Path

import torch


CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer(corpus: list[str], vocab_size: int = 400):
    """A byte-level BPE tokenizer trained on ``corpus`` with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


FAMILIES = ("llama", "qwen2", "qwen3", "mistral", "gemma2", "gemma3", "phi3")  # one tiny model per decoder family
LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention"]


def tiny_config(kind: str, vocab_size: int):
    """A 3-layer model of each family, GQA (4 query heads, 2 KV heads) unless named otherwise.

    ``llama``; ``llama_mha``: no GQA; ``llama_quant``: an MLP width bitsandbytes quantizes on the CPU; ``qwen2``: q/k/v biases; ``qwen3``: per-head q/k RMSNorm; ``mistral``: a
    sliding window shorter than the test inputs; ``gemma2``: head_dim 24 != hidden / heads, logit soft-capping
    (strong, so that it matters), sliding-window and full layers; ``gemma3``: the same geometry with per-head q/k
    norms and no soft-cap; ``phi3``: one fused ``qkv_proj``.
    """
    from transformers import (
        Gemma2Config,
        Gemma3TextConfig,
        LlamaConfig,
        MistralConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
    )

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
        pad_token_id=1,
        eos_token_id=3,
        bos_token_id=None,
    )
    gemma = dict(common, head_dim=24, query_pre_attn_scalar=24, sliding_window=8, layer_types=LAYER_TYPES)
    configs = {
        "llama": lambda: LlamaConfig(**common),
        "llama_mha": lambda: LlamaConfig(**{**common, "num_key_value_heads": 4}),
        # bitsandbytes' CPU inference kernel needs every quantized layer's input width a multiple of its 64 block
        "llama_quant": lambda: LlamaConfig(**{**common, "intermediate_size": 128}),
        "qwen2": lambda: Qwen2Config(**common),
        "qwen3": lambda: Qwen3Config(**common),
        "mistral": lambda: MistralConfig(**common, sliding_window=8),
        "gemma2": lambda: Gemma2Config(**gemma, attn_logit_softcapping=2.0, final_logit_softcapping=30.0),
        "gemma3": lambda: Gemma3TextConfig(**gemma),
        "phi3": lambda: Phi3Config(**common),
    }
    if kind not in configs:
        raise ValueError(kind)
    return configs[kind]()


def build_model(kind: str, tokenizer, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind, len(tokenizer)))
    with torch.no_grad():  # larger attention weights than the default init, so head scores differ clearly
        for name, param in model.named_parameters():
            if "self_attn" in name and name.endswith("_proj.weight"):
                param.normal_(0.0, 0.2)
    return model.eval()


def save_model(kind: str, tokenizer, path: Path, seed: int = 0) -> Path:
    model = build_model(kind, tokenizer, seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def perturbed(model, scale: float = 1e-3, seed: int = 1):
    """A copy of ``model`` with seeded Gaussian noise of std ``scale`` added to every attention parameter."""
    other = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in other.named_parameters():
            if "self_attn" in name:
                param.add_(torch.randn(param.shape, generator=gen) * scale)
    return other


def train_like(model, seed: int = 3, scale: float = 0.05) -> None:
    """Give the trainable parameters seeded non-zero values, as training would."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)


def random_ids(tokenizer, shape: tuple[int, ...] = (2, 12), seed: int = 0) -> torch.Tensor:
    """Seeded token ids that avoid the 4 special tokens."""
    return torch.randint(4, len(tokenizer), shape, generator=torch.Generator().manual_seed(seed))


def lm_batch(ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """A causal-LM batch that trains on every token of ``ids``."""
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def left_padded(lengths: list[int], vocab: int, pad_id: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random rows of the given lengths, left padded to the longest: (input_ids, attention_mask)."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad_id)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, width - n :] = torch.randint(4, vocab, (n,), generator=gen)
        mask[b, width - n :] = 1
    return ids, mask


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    """float32 logits of ``model`` on ``ids``, without autograd."""
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


TINY_SHAPE = {"num_layers": 3, "num_heads": 4, "num_kv_heads": 2, "head_dim": 16, "hidden_size": 64}


def write_heads_file(path, shape, selected):
    """A minimal p2d_heads.json (what a hand-edited or foreign file may hold)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"shape": shape, "selected": selected, "model": "tiny"}))
    return path


def quantized_twin(path: Path, bits: int):
    """``path``'s model quantized by bitsandbytes (``bits``: 4 nf4, or 8) and its float32 twin: the same model whose
    quantized weights are replaced by their dequantized values, so both compute the same function."""
    from p2d_llamafactory.models import Quantization, dense_weight, is_quantized_weight, load_causal_lm

    quantized = load_causal_lm(str(path), torch.float32, "cpu", quantization=Quantization(bits))
    twin = load_causal_lm(str(path), torch.float32, "cpu")
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if is_quantized_weight(getattr(module, "weight", None)):
                twin.get_submodule(name).weight.copy_(dense_weight(module).float())
    return quantized, twin
