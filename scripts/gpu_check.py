"""The GPU check (run by scripts/gpu_check.sh): stages I-III through ``llamafactory-cli train`` on a small model in
bf16 against float32, the memory preflight against the measured peak of a 7B-shaped proxy, head-slice vs LoRA vs
full fine-tuning steps at 7B, and probe throughput. Models are random-initialised from configs (no weights travel).
Prints one table; exits 1 on any mismatch. ``--cpu``: the same checks on tiny models on the CPU (CI's dry run).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2d_llamafactory.adapter import apply_head_slices  # noqa: E402
from p2d_llamafactory.heads.layout import find_attention_layout  # noqa: E402
from p2d_llamafactory.heads.proxy import train_proxy  # noqa: E402
from p2d_llamafactory.heads.proxy_memory import proxy_memory  # noqa: E402
from tests.helpers.examples import demo_examples  # noqa: E402
from tests.helpers.tiny import build_tokenizer  # noqa: E402


HEAD_JACCARD = 0.5  # bf16 vs float32 runs: the top heads and the selected examples agree at least this much
SELECTION_OVERLAP = 0.5
MEMORY_RATIO = (0.8, 2.5)  # measured proxy peak / the preflight's estimate (CPU: 1.4-1.5, docs/benchmarks.md)
SHAPES = {
    "small": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                  num_key_value_heads=3, head_dim=64, vocab_size=49152),  # SmolLM2-135M
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, head_dim=128, vocab_size=152064),  # Qwen2.5-7B
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=512),
    "tiny7b": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=8,
                   num_key_value_heads=2, head_dim=16, vocab_size=512),
}  # fmt: skip


def build(folder: Path, shape: str, tokenizer, dtype: torch.dtype, device: str | None = None):
    """A random-initialised Llama-architecture model of ``shape``, saved with ``tokenizer`` (on ``device``)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**SHAPES[shape], tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)  # fmt: skip
    torch.manual_seed(0)
    with torch.device(device or "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if device is None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return model


def _demo_data(root: Path) -> Path:
    """A LLaMA-Factory dataset dir with 64 demo examples (alpaca format), written here: nothing is downloaded."""
    folder = root / "data"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "demo.json").write_text(json.dumps(demo_examples(64)))
    (folder / "dataset_info.json").write_text(json.dumps({"p2d_demo": {"file_name": "demo.json"}}))
    return folder


def train_cli(root: Path, model: Path, name: str, cpu: bool, **precision) -> dict:
    """Stages I-III through llamafactory-cli on the p2d_demo data; the heads, the selection and the timings."""
    out = root / name
    config = {
        "model_name_or_path": str(model), "stage": "sft", "do_train": True, "finetuning_type": "p2d_heads",
        "p2d_head_ratio": 0.1, "p2d_fhi_samples": 16, "p2d_fhi_steps": 3, "p2d_fhi_lr": 1e-3,
        "p2d_fhi_trainable": "attention", "p2d_data_selection": "p2d", "p2d_data_ratio": 0.25,
        "p2d_icl_scoring": "teacher_forced", "dataset": "p2d_demo", "dataset_dir": str(_demo_data(root)),
        "template": "chatml", "cutoff_len": 256, "max_samples": 64, "output_dir": str(out),
        "overwrite_output_dir": True, "per_device_train_batch_size": 4, "learning_rate": 1e-4, "max_steps": 4,
        "logging_steps": 1, "save_steps": 1000, "report_to": "none", "use_cpu": cpu, "seed": 7,
        "preprocessing_num_workers": 1, "dataloader_num_workers": 0, **precision,
    }  # fmt: skip
    (root / f"{name}.yaml").write_text(yaml.safe_dump(config))
    cli = Path(sys.executable).parent / "llamafactory-cli"
    result = subprocess.run([str(cli), "train", str(root / f"{name}.yaml")], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"llamafactory-cli train ({name}) failed:\n{(result.stdout + result.stderr)[-3000:]}")
    heads = json.loads((out / "p2d_heads.json").read_text())
    timings = json.loads((out / "p2d_timings.json").read_text())
    selected = json.loads((out / "p2d_data_scores.json").read_text())["selected"]
    return {"heads": {tuple(h) for h in heads["selected"]}, "selected": set(map(int, selected)), "timings": timings}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(len(a | b), 1)


def proxy_peak(model, device: str, tokens: int) -> tuple[int, int]:
    """(measured, estimated) bytes the attention proxy adds for one micro-batch of ``tokens`` tokens."""
    layout = find_attention_layout(model)
    ids = torch.randint(3, 500, (1, tokens), device=device)
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}]
    estimate = proxy_memory(model, layout, "attention", tokens).total_bytes
    if device == "cpu":
        train_proxy(model, batches, 1, 1e-4, progress=False, trainable="attention", layout=layout)
        return 0, estimate  # RSS cannot isolate it on a tiny model: reported, not checked
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    train_proxy(model, batches, 1, 1e-4, progress=False, trainable="attention", layout=layout)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base, estimate


def step_costs(model, device: str, tokens: int, steps: int = 3) -> dict[str, tuple[float, int] | None]:
    """Median step time and peak added memory of head slices (10 % of heads, q,o), LoRA r=128 (q,k,v) and full."""
    from peft import LoraConfig, get_peft_model

    layout = find_attention_layout(model)
    heads = [(layer, head) for layer in range(layout.num_layers) for head in range(layout.num_heads)]
    selected = heads[:: max(len(heads) // max(round(0.1 * len(heads)), 1), 1)][: max(round(0.1 * len(heads)), 1)]
    ids = torch.randint(3, 500, (1, tokens), device=device)
    batch = {"input_ids": ids, "labels": ids.clone()}
    results = {}
    for method in ("head slices", "lora", "full"):
        try:
            if method == "head slices":
                wrapped = apply_head_slices(model, layout, selected, ("q", "o"))
            elif method == "lora":
                config = LoraConfig(r=128, lora_alpha=256, target_modules=["q_proj", "k_proj", "v_proj"])
                wrapped = get_peft_model(model, config)
            else:
                wrapped = model.requires_grad_(True)
            results[method] = _time_steps(wrapped, batch, device, steps)
        except torch.OutOfMemoryError:
            results[method] = None
        finally:
            if method != "full":
                model = wrapped.unload() if hasattr(wrapped, "unload") else model
            model.requires_grad_(False)
            if device != "cpu":
                torch.cuda.empty_cache()
    return results


def _time_steps(model, batch, device: str, steps: int) -> tuple[float, int]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    model.train()
    if device != "cpu":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if device != "cpu" else 0
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() - base if device != "cpu" else 0
    del optimizer
    return sorted(times[1:])[len(times[1:]) // 2], peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="tiny models on the CPU (the dry run)")
    parser.add_argument("--work-dir", default="saves/gpu_check")
    args = parser.parse_args()
    cpu = args.cpu or not torch.cuda.is_available()
    if not args.cpu and cpu:
        print("gpu_check: no CUDA device; use --cpu for the dry run", file=sys.stderr)
        return 2
    device = "cpu" if cpu else "cuda"
    root = Path(args.work_dir)
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer([ex["instruction"] + "\n" + ex["output"] for ex in demo_examples(200)])
    rows, failed = [], []

    def row(check: str, value: str, ok: bool | None) -> None:
        rows.append((check, value, "n/a" if ok is None else ("ok" if ok else "MISMATCH")))
        if ok is False:
            failed.append(check)

    small = root / "small"
    build(small, "tiny" if cpu else "small", tokenizer, torch.float32)
    attention = "sdpa"
    if not cpu:
        import importlib.util

        attention = "fa2" if importlib.util.find_spec("flash_attn") else "sdpa"
    fast = train_cli(root, small, "bf16", cpu, bf16=True, flash_attn=attention)
    exact = train_cli(root, small, "fp32", cpu, flash_attn=attention)
    heads_j, sel_j = jaccard(fast["heads"], exact["heads"]), jaccard(fast["selected"], exact["selected"])
    row(f"stages I-III via llamafactory-cli, bf16 + {attention}", "ran: heads, selection, 4 steps", True)
    row("heads bf16 vs float32 (Jaccard)", f"{heads_j:.2f} (>= {HEAD_JACCARD})", heads_j >= HEAD_JACCARD)
    row("selection bf16 vs float32 (Jaccard)", f"{sel_j:.2f} (>= {SELECTION_OVERLAP})", sel_j >= SELECTION_OVERLAP)
    probe = fast["timings"].get("data_scoring_seconds")
    shown = f"{64 / probe:.1f} candidates/s ({probe:.1f} s for 64)" if probe else "not recorded"
    row("probe throughput (stage II, bf16)", shown, None)

    big = build(None, "tiny7b" if cpu else "7b", tokenizer, torch.bfloat16, device)
    big.gradient_checkpointing_enable()
    measured, estimate = proxy_peak(big, device, 256 if cpu else 4096)
    ratio = measured / estimate if measured else None
    ok = None if ratio is None else MEMORY_RATIO[0] <= ratio <= MEMORY_RATIO[1]
    shown = f"{measured / 1e9:.2f} GB / {estimate / 1e9:.2f} GB = {ratio:.2f}" if ratio else f"estimate {estimate:,} B"
    row("7B attention proxy: measured / estimate", shown, ok)
    for method, cost in step_costs(big, device, 256 if cpu else 2048).items():
        value = "did not fit" if cost is None else f"{cost[0]:.3f} s/step, {cost[1] / 1e9:.1f} GB peak added"
        row(f"7B step: {method}", value, None)

    width = max(len(check) for check, _, _ in rows)
    print(f"\nP2D GPU check ({'CPU dry run' if cpu else torch.cuda.get_device_name()}; torch {torch.__version__})")
    print(f"| {'check'.ljust(width)} | value | result |\n|{'-' * (width + 2)}|---|---|")
    for check, value, result in rows:
        print(f"| {check.ljust(width)} | {value} | {result} |")
    if failed:
        print(f"gpu_check: MISMATCH in {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    os.environ.setdefault("DISABLE_VERSION_CHECK", "1")
    sys.exit(main())
