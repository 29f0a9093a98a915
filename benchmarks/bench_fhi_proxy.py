"""The FHI proxy both ways: ``p2d_fhi_trainable: all`` (the paper's) against ``attention`` (q/k/v copies only).

Part 1, on SmolLM2-135M-Instruct and the CPU-twin pools: per dataset, the seeded FHI sample that stage I draws
(``p2d_fhi_samples`` examples, ``sample_indices``), tokenized as stage I reads it (``api.tokenize_examples``,
``make_batches``), trains the proxy of each mode with ``train_proxy`` and scores all heads with W1 at tau
(``weight_scores``). Each mode runs in its own fresh spawned process, one after the other. Its memory is the peak RSS
of the proxy training minus the RSS just before it: the peak (``VmHWM``, the ``ru_maxrss`` of ``getrusage``) is reset
through ``/proc/self/clear_refs`` after the model and the batches are ready, so the number is what the proxy added,
not the loading peak. Prints per dataset the agreement of every mode with ``all`` (top-10 % Jaccard, Spearman of all
head scores), the time and the memory of each, beside the preflight's estimate (``proxy_memory``).

Part 2: the preflight's estimate for Qwen2.5-7B, Llama-3-8B and Qwen3-8B in both modes, from configs built here from
their published sizes (meta device: nothing is downloaded), by the same ``proxy_memory_from_config``.

    OMP_NUM_THREADS=1 python benchmarks/bench_fhi_proxy.py --model-dir models/SmolLM2-135M-Instruct
"""

import argparse
import json
import multiprocessing
import os
import re
import resource
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import load_model, load_tokenizer, model_folder
from scipy.stats import spearmanr

from p2d_llamafactory.api import tokenize_examples
from p2d_llamafactory.experiments.published import PUBLISHED_MODELS, published_config
from p2d_llamafactory.heads.layout import find_attention_layout
from p2d_llamafactory.heads.proxy import make_batches, micro_batch_tokens, sample_indices, train_proxy
from p2d_llamafactory.heads.proxy_memory import proxy_memory, proxy_memory_from_config
from p2d_llamafactory.heads.scoring import select_top, weight_scores
from p2d_llamafactory.hparams import count_for_ratio


MiB = 2**20


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--data-dir", default="data_info/cpu", help="holds p2d_<dataset>_train.json (alpaca)")
    parser.add_argument("--datasets", default="gsm8k,dialogsum")
    parser.add_argument(
        "--modes", default="all,attention", help="p2d_fhi_trainable values; the first is the reference"
    )
    parser.add_argument("--samples", type=int, default=20, help="p2d_fhi_samples (the CPU twin's)")
    parser.add_argument("--steps", type=int, default=5, help="p2d_fhi_steps")
    parser.add_argument("--lr", type=float, default=1e-4, help="p2d_fhi_lr")
    parser.add_argument("--tau", type=float, default=0.1, help="p2d_temperature")
    parser.add_argument("--seed", type=int, default=4242, help="p2d_seed")
    parser.add_argument("--ratio", type=float, default=0.1, help="p2d_head_ratio: the top-k of the Jaccard")
    parser.add_argument("--micro-batch", type=int, default=4, help="per_device_train_batch_size")
    parser.add_argument("--max-length", type=int, default=1024, help="cutoff_len")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--large-tokens", type=int, default=4 * 1024, help="micro-batch tokens of part 2")
    parser.add_argument("--json", default=None, help="also write every number to this file")
    return parser.parse_args()


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def _rss() -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) * 1024


def run_mode(folder: str, rows_path: str, mode: str, args: argparse.Namespace) -> dict:
    """One proxy in this (fresh) process: its W1 scores, losses, time, memory and the preflight's estimate."""
    torch.set_num_threads(args.threads)
    tokenizer, model = load_tokenizer(Path(folder)), load_model(Path(folder)).eval()
    from transformers import DataCollatorForSeq2Seq

    rows = json.loads(Path(rows_path).read_text())
    sample = [rows[i] for i in sample_indices(len(rows), args.samples, args.seed)]
    examples = tokenize_examples(tokenizer, sample, args.max_length)
    collate = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True, return_tensors="pt")
    batches = make_batches(examples, collate, args.micro_batch, "cpu")
    layout = find_attention_layout(model)
    tokens = micro_batch_tokens(examples, args.micro_batch)
    estimate = proxy_memory(model, layout, mode, tokens)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS: from here on it is the proxy's
    before = _rss()
    start = time.perf_counter()
    proxy, losses = train_proxy(model, batches, args.steps, args.lr, progress=False, trainable=mode, layout=layout)
    seconds = time.perf_counter() - start
    peak = _peak_rss()
    scores = weight_scores(model, proxy, layout, "w1", args.tau, progress=False)
    return {
        "mode": mode,
        "scores": scores.tolist(),
        "losses": losses,
        "seconds": seconds,
        "peak_added_bytes": peak - before,
        "estimate": {
            "parameters": estimate.parameters,
            "state": estimate.state_bytes,
            "act": estimate.activation_bytes,
        },
        "tokens": tokens,
        "examples": len(examples),
        "label_tokens": sum(sum(t != -100 for t in ex["labels"][1:]) for ex in examples),
    }


def jaccard(a: list, b: list) -> float:
    a, b = set(map(tuple, a)), set(map(tuple, b))
    return len(a & b) / len(a | b)


def compare(results: list[dict], k: int) -> list[dict]:
    reference = np.array(results[0]["scores"])
    top = select_top(torch.from_numpy(reference), k)
    rows = []
    for result in results:
        scores = np.array(result["scores"])
        rows.append(
            {
                "mode": result["mode"],
                "jaccard": jaccard(select_top(torch.from_numpy(scores), k), top),
                "spearman": float(spearmanr(scores.ravel(), reference.ravel()).statistic),
                **{key: result[key] for key in ("seconds", "peak_added_bytes", "estimate", "losses")},
            }
        )
    return rows


def part_one(args: argparse.Namespace) -> dict:
    folder = str(model_folder(args.model_dir))
    modes = args.modes.split(",")
    context = multiprocessing.get_context("spawn")
    report = {}
    for dataset in args.datasets.split(","):
        rows_path = str(Path(args.data_dir) / f"p2d_{dataset}_train.json")
        results = []
        for mode in modes:
            with context.Pool(1) as pool:  # a fresh process per mode: its own peak memory, no shared allocator
                results.append(pool.apply(run_mode, (folder, rows_path, mode, args)))
        first = results[0]
        num_heads = len(first["scores"]) * len(first["scores"][0])
        k = count_for_ratio(args.ratio, num_heads)
        rows = compare(results, k)
        print(
            f"\n{dataset}: {first['examples']} examples ({first['label_tokens']} response tokens), micro-batches of "
            f"{args.micro_batch} x {first['tokens'] // args.micro_batch} tokens, {args.steps} steps at lr {args.lr:g}, "
            f"tau {args.tau:g}; top-{k} of {num_heads} heads; reference {modes[0]}"
        )
        print(
            "| mode | top-10% Jaccard | Spearman (all heads) | proxy s | peak added MiB | estimate MiB "
            "(state + activations) | loss per step |"
        )
        print("|---|---:|---:|---:|---:|---|---|")
        for row in rows:
            est = row["estimate"]
            print(
                f"| {row['mode']} | {row['jaccard']:.3f} | {row['spearman']:.4f} | {row['seconds']:.1f} | "
                f"{row['peak_added_bytes'] / MiB:,.0f} | {(est['state'] + est['act']) / MiB:,.0f} "
                f"({est['state'] / MiB:,.0f} + {est['act'] / MiB:,.0f}) | "
                f"{', '.join(f'{x:.4f}' for x in row['losses'])} |"
            )
        report[dataset] = rows
    return report


def part_two(args: argparse.Namespace) -> dict:

    tokens = args.large_tokens
    print(
        f"\nProxy memory estimate (bf16 base; activations for one micro-batch of {tokens} tokens, without and with "
        "gradient checkpointing); GB = 1e9 bytes"
    )
    print(
        "| model | parameters | bf16 base GB | p2d_fhi_trainable | trained parameters | weights+grads+AdamW GB "
        "| activations GB (no GC / GC) | proxy + base GB (no GC / GC) |"
    )
    print("|---|---:|---:|---|---:|---:|---|---|")
    report = {}
    for name in PUBLISHED_MODELS:
        config = published_config(name)
        full = proxy_memory_from_config(config, "all", 0)
        base = 2 * full.parameters
        for mode in ("all", "attention"):
            plain = proxy_memory_from_config(config, mode, tokens)
            checkpointed = proxy_memory_from_config(config, mode, tokens, gradient_checkpointing=True)
            print(
                f"| {name} | {full.parameters:,} | {base / 1e9:.1f} | {mode} | {plain.parameters:,} | "
                f"{plain.state_bytes / 1e9:.1f} | {plain.activation_bytes / 1e9:.1f} / "
                f"{checkpointed.activation_bytes / 1e9:.1f} | {(plain.total_bytes + base) / 1e9:.1f} / "
                f"{(checkpointed.total_bytes + base) / 1e9:.1f} |"
            )
            report[f"{name}/{mode}"] = {
                "parameters": plain.parameters,
                "state": plain.state_bytes,
                "act": plain.activation_bytes,
                "act_gc": checkpointed.activation_bytes,
                "base": base,
            }
    return report


def main() -> None:
    args = parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {os.getloadavg()[0]:.2f}")
    start = time.perf_counter()
    report = {"smollm2": part_one(args), "large": part_two(args)}
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}; {time.perf_counter() - start:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
