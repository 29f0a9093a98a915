"""Tiny random models and a tiny tokenizer, built locally so the tests run offline."""

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


def tiny_config(kind: str, vocab_size: int):
    """``llama``: GQA (4 query heads, 2 KV heads); ``qwen2``: q/k/v biases, GQA; ``llama_mha``: no GQA."""
    from transformers import LlamaConfig, Qwen2Config

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
    if kind == "llama":
        return LlamaConfig(**common)
    if kind == "llama_mha":
        return LlamaConfig(**{**common, "num_key_value_heads": 4})
    if kind == "qwen2":
        return Qwen2Config(**common)
    raise ValueError(kind)


def build_model(kind: str, tokenizer, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(kind, len(tokenizer)))
    with torch.no_grad():  # larger attention weights than the default init, so head scores differ clearly
        for name, param in model.named_parameters():
            if "self_attn" in name and name.endswith("weight"):
                param.normal_(0.0, 0.2)
    return model.eval()


def save_model(kind: str, tokenizer, path: Path, seed: int = 0) -> Path:
    model = build_model(kind, tokenizer, seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
