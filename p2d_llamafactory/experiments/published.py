"""The paper's models (Qwen2.5-7B-Instruct, Llama-3-8B-Instruct, Qwen3-8B) as transformers configs built from their
published sizes, with no hub access: for estimates made by the project's own code (trainable shares, proxy memory,
traffic), never for loading weights."""

from typing import Any


# name -> (config class in transformers, its arguments, the published parameter count); untied embeddings
PUBLISHED_MODELS: dict[str, tuple[str, dict[str, Any], int]] = {
    "Qwen2.5-7B": (
        "Qwen2Config",
        dict(
            hidden_size=3584,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            intermediate_size=18944,
            vocab_size=152064,
            max_position_embeddings=32768,
        ),
        7_615_616_512,
    ),
    "Llama-3-8B": (
        "LlamaConfig",
        dict(
            hidden_size=4096,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=8,
            intermediate_size=14336,
            vocab_size=128256,
        ),
        8_030_261_248,
    ),
    "Qwen3-8B": (
        "Qwen3Config",
        dict(
            hidden_size=4096,
            num_hidden_layers=36,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=128,
            intermediate_size=12288,
            vocab_size=151936,
        ),
        8_190_735_360,
    ),
}


def published_config(name: str) -> Any:
    """The transformers config of one of :data:`PUBLISHED_MODELS`."""
    import transformers

    class_name, kwargs, _ = PUBLISHED_MODELS[name]
    return getattr(transformers, class_name)(**kwargs, tie_word_embeddings=False)
