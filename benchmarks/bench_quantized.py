"""QLoRA-style P2D: memory and speed on a full-precision base against a bitsandbytes 4-bit (nf4, double
quantization) and 8-bit base, and the estimate for Qwen2.5-7B.

Part 1, on SmolLM2-135M-Instruct: each mode runs in its own fresh spawned process, one after the other. It loads the
model (``load_causal_lm``, float32 compute on this CPU, with the mode's ``Quantization``) and counts the bytes its
weights and scales hold (``weight_bytes``); then stage I's ``attention`` proxy (``train_proxy``, 3 full-batch steps on 8 GSM8K examples) and the
peak RSS it added; then stage III: the head slices (q rows + o columns) of 27 fixed heads (``apply_head_slices``),
``--steps`` AdamW steps on 4 x 256-token GSM8K micro-batches, the peak RSS they added and the median step time. The
peak is reset through ``/proc/self/clear_refs`` before each phase. Beside it, the weight bytes the estimator gives
(``base_memory_from_config``).

Part 2: the estimate for Qwen2.5-7B in bf16 (published sizes, meta device): the base's weights per mode plus the
``attention`` proxy (4,096 tokens, gradient checkpointing) of stage I.

    OMP_NUM_THREADS=2 python benchmarks/bench_quantized.py --model-dir models/SmolLM2-135M-Instruct
"""

import argparse
import multiprocessing
import os
import re
import resource
import statistics
import time
from pathlib import Path

import torch
from bench_common import load_gsm8k, load_tokenizer, make_batches, model_folder

from p2d_llamafactory.adapter import apply_head_slices
from p2d_llamafactory.experiments.published import published_config
from p2d_llamafactory.heads.layout import find_attention_layout
from p2d_llamafactory.heads.proxy import train_proxy
from p2d_llamafactory.heads.proxy_memory import base_memory_from_config, proxy_memory_from_config
from p2d_llamafactory.models import Quantization, load_causal_lm, weight_bytes


MiB = 2**20
MODES = {"float32": None, "8-bit": Quantization(8), "4-bit nf4": Quantization(4)}
HEADS = [(layer, head) for layer in range(0, 30, 3) for head in (0, 3, 6)][:27]  # 27 heads spread over the depth


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--steps", type=int, default=6, help="stage III steps (the first is a warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss() -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def _reset_peak() -> int:
    Path("/proc/self/clear_refs").write_text("5")
    return _rss()


def run_mode(folder: str, mode: str, steps: int, threads: int) -> dict:
    """One mode in this fresh process: what loading, stage I's proxy and stage III's steps add to the RSS."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tokenizer = load_tokenizer(Path(folder))
    examples = load_gsm8k()
    fhi_batches = make_batches(tokenizer, examples, 2, 4, 256, seed=1)
    train_batches = make_batches(tokenizer, examples, steps, 4, 256, seed=2)
    model = load_causal_lm(folder, torch.float32, "cpu", quantization=MODES[mode])
    held = weight_bytes(model)
    layout = find_attention_layout(model)

    before = _reset_peak()
    train_proxy(model, fhi_batches, 3, 1e-4, progress=False, trainable="attention", layout=layout)
    proxy_peak = _peak_rss() - before

    before = _reset_peak()
    peft_model = apply_head_slices(model, layout, HEADS, ("q", "o"))
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    peft_model.train()
    seconds, losses = [], []
    for batch in train_batches:
        start = time.perf_counter()
        loss = peft_model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
        losses.append(float(loss.detach()))
    return {
        "mode": mode,
        "held": held,
        "proxy_peak": proxy_peak,
        "train_peak": _peak_rss() - before,
        "step": statistics.median(seconds[1:]),
        "losses": losses,
    }


def part_one(args: argparse.Namespace) -> None:
    from transformers import AutoConfig

    folder = str(model_folder(args.model_dir))
    config = AutoConfig.from_pretrained(folder)
    context = multiprocessing.get_context("spawn")
    print(
        f"\nSmolLM2-135M-Instruct on this CPU, float32 compute; stage I: attention proxy, 3 steps x 2 micro-batches of "
        f"4 x 256 tokens; stage III: 27 heads (q,o), {args.steps} steps of 4 x 256 tokens (median of the last "
        f"{args.steps - 1})"
    )
    print(
        "| base | weights held MiB (estimate) | stage I proxy peak added MiB | "
        "stage III peak added MiB | s / step | loss first → last |"
    )
    print("|---|---:|---:|---:|---:|---|")
    for mode, quantization in MODES.items():
        with context.Pool(1) as pool:
            row = pool.apply(run_mode, (folder, mode, args.steps, args.threads))
        estimate = base_memory_from_config(config, torch.float32, quantization)
        print(
            f"| {mode} | {row['held'] / MiB:,.1f} ({estimate / MiB:,.1f}) | {row['proxy_peak'] / MiB:,.0f} | "
            f"{row['train_peak'] / MiB:,.0f} | {row['step']:.2f} | {row['losses'][0]:.3f} → {row['losses'][-1]:.3f} |"
        )


def part_two() -> None:
    config = published_config("Qwen2.5-7B")
    proxy = proxy_memory_from_config(config, "attention", 4096, gradient_checkpointing=True)
    print(
        "\nQwen2.5-7B, bf16 compute: the base's weights and stage I's attention proxy (4,096 tokens, GC); GB = 1e9 B"
    )
    print("| base | weights GB | + attention proxy GB | total GB |")
    print("|---|---:|---:|---:|")
    for mode, quantization in {"bf16": None, **{k: v for k, v in MODES.items() if v is not None}}.items():
        weights = base_memory_from_config(config, torch.bfloat16, quantization)
        print(
            f"| {mode} | {weights / 1e9:.2f} | {proxy.total_bytes / 1e9:.2f} | {(weights + proxy.total_bytes) / 1e9:.2f} |"
        )


def main() -> None:
    args = parse_args()
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.2f} before")
    part_one(args)
    part_two()


if __name__ == "__main__":
    main()
