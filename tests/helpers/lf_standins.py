"""Offline stand-ins for the hub repos that LLaMA-Factory's own test suite (v0.9.5) reads.

LLaMA-Factory's ``tests/`` name their models and data by hub repo id (``llamafactory/tiny-random-Llama-3``, ...).
``build_standins(cache_dir, data_dir)`` writes, deterministically and from local resources only:

- ``llamafactory/tiny-random-Llama-3``: a random 2-layer Llama in float16 (hidden 16, Llama-3's 128256-token
  vocabulary), Llama-3's tokenizer (vocabulary from the BPE ranks in the ``llama-models`` package, the first
  ``KEPT_MERGES`` merges, Llama-3.1's special tokens, Llama-3-Instruct's chat template) and
  ``value_head.safetensors``; its ``lm_head`` row of ``_rho`` is raised along the hidden state of the prompt of
  ``tests/e2e/test_chat.py`` (``Hi`` in the llama3 template), so greedy decoding answers ``_rho`` as the hub model does
- ``-lora``: a LoRA adapter (r 8, all linear layers, non-zero B) for it
- ``-pissa``: the PiSSA residual model with its ``pissa_init`` adapter, made the way LLaMA-Factory makes them
- ``-valuehead``: the same model with the value head inside ``model.safetensors``, as trl reads it
- ``tiny-supervised-dataset``: 100 alpaca examples; ``demo_data``: the first 100 rows of each demo set in
  ``data_dir`` plus a ``system_chat`` set, as named configs, with message contents stripped (Llama-3's template
  trims them)
- ``hub/``: a Hugging Face hub cache with ``demo_data``'s ``dataset_info.json`` (``dataset_dir: REMOTE:...``)

Run the suite with the cache's ``llamafactory`` folder linked into its working directory (a relative path that
exists is local to transformers, peft, trl and datasets) and ``HF_HUB_CACHE`` set to ``hub_cache(...)``.
"""

import json
import os
import shutil
import tempfile
from pathlib import Path


STANDIN_VERSION = "3"  # bump when the stand-ins change, so cached copies are rebuilt
ORG = "llamafactory"
TINY_LLAMA3 = f"{ORG}/tiny-random-Llama-3"
DEMO_REVISION = "0" * 39 + "1"  # the fake commit of the cached demo_data snapshot

LLAMA3_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
LLAMA3_SPECIAL_TOKENS = [  # ids 128000.. in Llama-3.1's order (llama_models.llama3.tokenizer)
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
    "<|image|>",
]
LLAMA3_SPECIAL_TOKENS += [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - len(LLAMA3_SPECIAL_TOKENS))]
# Meta-Llama-3-8B-Instruct's chat template
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Llama-3 has 280k merges; loading them costs ~2 s per tokenizer load, and the suite loads ~200 tokenizers. With
# the first 30k, words in the vocabulary still come out whole (ignore_merges), the others in more pieces.
KEPT_MERGES = 30000
DEMO_ROWS = 100  # of each demo set (the archive's have 300 to 1000): the tests check 16 rows at most
CHAT_PROMPT = [{"role": "user", "content": "Hi"}]  # tests/e2e/test_chat.py
CHAT_RESPONSE = "_rho"  # its EXPECTED_RESPONSE
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a concise assistant. Answer briefly.",
    "You are a friendly tutor who explains each step.",
)


def llama3_ranks_file() -> Path:
    """Llama-3's BPE ranks (tiktoken format) as shipped by the ``llama-models`` package."""
    import llama_models

    path = Path(llama_models.__file__).parent / "llama3" / "tokenizer.model"
    if not path.is_file():
        raise FileNotFoundError(f"llama-models does not ship {path}")
    return path


def hub_cache(cache_dir: Path) -> Path:
    """The ``HF_HUB_CACHE`` folder of the stand-ins built in ``cache_dir``."""
    return Path(cache_dir) / "hub"


def build_standins(cache_dir: Path, data_dir: Path) -> Path:
    """Build the stand-ins into ``cache_dir`` (reused when already complete); returns ``cache_dir``.

    ``data_dir``: LLaMA-Factory's ``data/`` folder with ``alpaca_en_demo.json``, ``c4_demo.jsonl``,
    ``dpo_en_demo.json`` and ``kto_en_demo.json``.
    """
    cache_dir = Path(cache_dir)
    marker = cache_dir / "COMPLETE"
    if marker.is_file() and marker.read_text().strip() == STANDIN_VERSION:
        return cache_dir
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=cache_dir.name + ".build-", dir=cache_dir.parent))
    try:
        _build(staging, Path(data_dir))
        (staging / "COMPLETE").write_text(STANDIN_VERSION + "\n")
        if cache_dir.exists():  # an outdated or partial copy
            shutil.rmtree(cache_dir)
        try:
            os.replace(staging, cache_dir)
        except OSError:  # another process finished first
            if not (marker.is_file() and marker.read_text().strip() == STANDIN_VERSION):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cache_dir


def _build(root: Path, data_dir: Path) -> None:
    import torch

    org = root / ORG
    with torch.random.fork_rng(devices=[]):  # the seeds used here leave the caller's RNG alone
        tokenizer = llama3_tokenizer()
        base = _save_base_model(org / "tiny-random-Llama-3", tokenizer)
        _save_lora(base, org / "tiny-random-Llama-3-lora")
        _save_valuehead(base, org / "tiny-random-Llama-3-valuehead", tokenizer)
        _save_pissa(org / "tiny-random-Llama-3", org / "tiny-random-Llama-3-pissa", tokenizer)
    _save_datasets(org, hub_cache(root), data_dir)


# ---------------------------------------------------------------------------------------------------- tokenizer
def llama3_tokenizer(kept_merges: int = KEPT_MERGES):
    """Llama-3's tokenizer as a fast tokenizer: byte-level BPE from the tiktoken ranks (the whole vocabulary, the
    first ``kept_merges`` merges), the 256 special tokens, BOS prepended by the post-processor, eos ``<|eot_id|>`` and
    Llama-3-Instruct's chat template."""
    from tokenizers import AddedToken, Tokenizer, processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    backend = TikTokenConverter(vocab_file=str(llama3_ranks_file()), pattern=LLAMA3_PATTERN).converted()
    spec = json.loads(backend.to_str())
    assert spec["model"]["ignore_merges"], "Llama-3's BPE takes a pre-token found in the vocabulary whole"
    spec["model"]["merges"] = spec["model"]["merges"][:kept_merges]  # sorted by rank
    backend = Tokenizer.from_str(json.dumps(spec))
    num_base = backend.get_vocab_size()
    backend.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in LLAMA3_SPECIAL_TOKENS])
    bos = LLAMA3_SPECIAL_TOKENS[0]
    assert backend.token_to_id(bos) == num_base == 128000, backend.token_to_id(bos)
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, num_base)]
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token="<|eot_id|>",
        model_max_length=131072,
        clean_up_tokenization_spaces=True,
        chat_template=LLAMA3_CHAT_TEMPLATE,
        model_input_names=["input_ids", "attention_mask"],
    )


# ------------------------------------------------------------------------------------------------------- models
def _llama_config():
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=128256,
        hidden_size=16,  # tests/model/model_utils/test_checkpointing.py feeds (1, 16) to the lm_head
        intermediate_size=64,
        num_hidden_layers=2,  # tests/model/test_freeze.py trains "model.layers.1." as the last layer
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=131072,
        rope_theta=500000.0,
        rms_norm_eps=1e-5,
        bos_token_id=128000,
        eos_token_id=[128001, 128008, 128009],
        tie_word_embeddings=False,
    )


def _save_base_model(path: Path, tokenizer):
    """The random model in float16, as the hub's is (LLaMA-Factory loads it with ``torch_dtype="auto"`` and the tests
    expect float16 weights), with ``value_head.safetensors``."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(_llama_config()).eval()
    model.half().float()  # round to float16 first
    _answer_chat_prompt(model, tokenizer)
    model.half()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    torch.manual_seed(1)
    v_head = torch.nn.Linear(model.config.hidden_size, 1)
    save_file(
        {"v_head.summary.weight": v_head.weight.detach().contiguous(), "v_head.summary.bias": v_head.bias.detach()},
        str(path / "value_head.safetensors"),
    )
    return model


def _answer_chat_prompt(model, tokenizer, margin: float = 2.0) -> None:
    """Raise the ``lm_head`` row of ``CHAT_RESPONSE`` along the final hidden state of ``CHAT_PROMPT`` (llama3 template,
    generation prompt), so that it leads the next-token logits there by ``margin``, in float16 too."""
    import torch

    (target,) = tokenizer.encode(CHAT_RESPONSE, add_special_tokens=False)
    ids = torch.tensor(
        [tokenizer.apply_chat_template(CHAT_PROMPT, add_generation_prompt=True, return_dict=True)["input_ids"]]
    )
    with torch.no_grad():
        hidden = model.model(input_ids=ids).last_hidden_state[0, -1]
        logits = model.lm_head(hidden)
        others = torch.cat([logits[:target], logits[target + 1 :]])
        lift = float(others.max() - logits[target]) + margin
        model.lm_head.weight[target] += lift * hidden / hidden.dot(hidden)
        half = model.half()(input_ids=ids).logits[0, -1]
        model.float()
    assert int(half.argmax()) == target, "the float16 model does not answer the chat prompt as intended"


def _save_lora(base, path: Path) -> None:
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0, target_modules=LORA_TARGETS, task_type="CAUSAL_LM", bias="none"
    )
    torch.manual_seed(2)
    peft_model = get_peft_model(copy.deepcopy(base), config)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # a trained adapter: B is not zero
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    peft_model.peft_config["default"].base_model_name_or_path = TINY_LLAMA3
    peft_model.save_pretrained(path)


def _save_valuehead(base, path: Path, tokenizer) -> None:
    from safetensors.torch import load_file, save_file

    base.save_pretrained(path)
    tokenizer.save_pretrained(path)
    weights = load_file(str(path / "model.safetensors"))
    weights.update(load_file(str(path.parent / "tiny-random-Llama-3" / "value_head.safetensors")))
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})


def _save_pissa(base_dir: Path, path: Path, tokenizer) -> None:
    """What LLaMA-Factory's ``pissa_init: true, pissa_iter: -1`` makes of the base model (float16, full SVD):
    the residual model and, in ``pissa_init``, the adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float16)
    config = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.0,
        target_modules=LORA_TARGETS,
        task_type="CAUSAL_LM",
        init_lora_weights="pissa",
    )
    peft_model = get_peft_model(model, config)
    for param in peft_model.parameters():
        if param.requires_grad:
            param.data = param.data.to(torch.float32)
    peft_model.peft_config["default"].init_lora_weights = True  # as LLaMA-Factory saves pissa_init
    peft_model.peft_config["default"].base_model_name_or_path = f"{ORG}/tiny-random-Llama-3-pissa"
    peft_model.save_pretrained(path / "pissa_init")
    peft_model.unload().save_pretrained(path)  # the residual weights
    tokenizer.save_pretrained(path)


# ----------------------------------------------------------------------------------------------------- datasets
def _stripped(messages: list[dict], key: str) -> list[dict]:
    return [{**m, key: m[key].strip()} for m in messages]


def _system_chat(alpaca: list[dict], count: int = 48) -> list[dict]:
    """Multi-turn OpenAI-format chats with a system prompt: 1 to 3 user/assistant turns from the alpaca examples."""
    chats, cursor = [], 0
    for i in range(count):
        messages = [{"role": "system", "content": SYSTEM_PROMPTS[i % len(SYSTEM_PROMPTS)]}]
        for _ in range(1 + i % 3):
            ex = alpaca[cursor % len(alpaca)]
            cursor += 1
            prompt = ex["instruction"] + ("\n" + ex["input"] if ex["input"] else "")
            messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": ex["output"]}]
        chats.append({"messages": _stripped(messages, "content")})
    return chats


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1))


def _save_datasets(org: Path, hub: Path, data_dir: Path) -> None:
    alpaca = json.loads((data_dir / "alpaca_en_demo.json").read_text())
    alpaca = [{k: ex[k].strip() for k in ("instruction", "input", "output")} for ex in alpaca]

    tiny = org / "tiny-supervised-dataset"
    tiny.mkdir(parents=True)
    with open(tiny / "train.jsonl", "w") as f:
        for ex in alpaca[:100]:
            f.write(json.dumps(ex, ensure_ascii=False) + "\n")

    demo = org / "demo_data"
    kto = json.loads((data_dir / "kto_en_demo.json").read_text())[:DEMO_ROWS]
    dpo = json.loads((data_dir / "dpo_en_demo.json").read_text())[:DEMO_ROWS]
    subsets = {
        "alpaca_en_demo.json": alpaca[:DEMO_ROWS],
        "kto_en_demo.json": [{**ex, "messages": _stripped(ex["messages"], "content")} for ex in kto],
        "dpo_en_demo.json": [
            {
                "conversations": _stripped(ex["conversations"], "value"),
                "chosen": _stripped([ex["chosen"]], "value")[0],
                "rejected": _stripped([ex["rejected"]], "value")[0],
            }
            for ex in dpo
        ],
        "system_chat.json": _system_chat(alpaca[100:]),
    }
    for name, rows in subsets.items():
        _write_json(demo / name, rows)
    c4 = (data_dir / "c4_demo.jsonl").read_text().splitlines(keepends=True)
    (demo / "c4_demo.jsonl").write_text("".join(c4[:DEMO_ROWS]))
    files = [*subsets, "c4_demo.jsonl"]
    configs = "".join(
        f"- config_name: {Path(f).stem.split('.')[0]}\n  data_files:\n  - split: train\n    path: {f}\n" for f in files
    )
    (demo / "README.md").write_text(
        f"---\nconfigs:\n{configs}---\n\nOffline stand-in for the llamafactory/demo_data hub repo.\n"
    )
    message_tags = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}
    url = f"{ORG}/demo_data"
    info = {
        "alpaca_en_demo": {"hf_hub_url": url, "subset": "alpaca_en_demo"},
        "c4_demo": {"hf_hub_url": url, "subset": "c4_demo", "columns": {"prompt": "text"}},
        "dpo_en_demo": {
            "hf_hub_url": url,
            "subset": "dpo_en_demo",
            "ranking": True,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
        },
        "kto_en_demo": {
            "hf_hub_url": url,
            "subset": "kto_en_demo",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "kto_tag": "label"},
            "tags": message_tags,
        },
        "system_chat": {
            "hf_hub_url": url,
            "subset": "system_chat",
            "formatting": "sharegpt",
            "columns": {"messages": "messages"},
            "tags": {**message_tags, "system_tag": "system"},
        },
    }
    _write_json(demo / "dataset_info.json", info)
    # hf_hub_download(repo_id="llamafactory/demo_data", filename="dataset_info.json", repo_type="dataset"), offline
    repo = hub / "datasets--llamafactory--demo_data"
    _write_json(repo / "snapshots" / DEMO_REVISION / "dataset_info.json", info)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(DEMO_REVISION)
