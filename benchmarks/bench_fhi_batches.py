"""Stage I's micro-batches grouped by length against all padded to the longest example, side by side.

Takes stage I's seeded FHI sample of a CPU-twin pool (``sample_indices``, ``api.tokenize_examples``), builds its
micro-batches both ways (``make_batches(..., by_length=True)``, the default, and ``by_length=False``) and times one
full-batch proxy step (``train_proxy``, ``--steps`` steps) of each, alternating ``--rounds`` times on the same
loaded model (after one untimed warm-up step; the order flips each round). Prints the padded and real tokens of each
layout, the median step time, the ratio, and the loss of each (the same full-batch loss, up to float32 rounding).

    python benchmarks/bench_fhi_batches.py --model-dir models/SmolLM2-135M-Instruct --dataset bioinstruct \
        --samples 100 --rounds 2
"""

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from bench_common import load_model, load_tokenizer, model_folder

from p2d_llamafactory.api import tokenize_examples
from p2d_llamafactory.heads.proxy import make_batches, sample_indices, train_proxy
from p2d_llamafactory.pipeline import collator


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--data-dir", default="data_info/cpu")
    parser.add_argument("--dataset", default="bioinstruct", help="CPU-twin pool: <data-dir>/p2d_<dataset>_train.json")
    parser.add_argument("--samples", type=int, default=100, help="p2d_fhi_samples")
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--trainable", default="attention", choices=("all", "attention"))
    parser.add_argument("--steps", type=int, default=1, help="proxy steps per timing")
    parser.add_argument("--rounds", type=int, default=2)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    folder = model_folder(args.model_dir)
    tokenizer, model = load_tokenizer(folder), load_model(folder).eval()
    rows = json.loads((Path(args.data_dir) / f"p2d_{args.dataset}_train.json").read_text())
    sample = [rows[i] for i in sample_indices(len(rows), args.samples, args.seed)]
    examples = tokenize_examples(tokenizer, sample, args.max_length)
    layouts = {
        name: make_batches(examples, collator(tokenizer), args.micro_batch, "cpu", by_length)
        for name, by_length in (("by length", True), ("longest", False))
    }
    real = sum(len(ex["input_ids"]) for ex in examples)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.2f}")
    print(f"{args.dataset}: {len(examples)} examples, {real} tokens, micro-batches of {args.micro_batch}")
    times: dict[str, list[float]] = {name: [] for name in layouts}
    losses: dict[str, list[float]] = {}
    train_proxy(model, layouts["by length"][:1], 1, 2e-5, False, args.trainable)  # warm-up, untimed
    for round_index in range(args.rounds):
        names = list(layouts) if round_index % 2 == 0 else list(reversed(layouts))
        for name in names:
            batches = layouts[name]
            start = time.perf_counter()
            _, losses[name] = train_proxy(model, batches, args.steps, 2e-5, False, args.trainable)
            times[name].append(time.perf_counter() - start)
    print("\n| micro-batches | padded tokens | padding share | s per step (median) | loss per step |")
    print("|---|---:|---:|---:|---|")
    for name, batches in layouts.items():
        padded = sum(b["input_ids"].numel() for b in batches)
        step = statistics.median(times[name]) / args.steps
        loss = ", ".join(f"{x:.5f}" for x in losses[name])
        print(f"| {name} | {padded} | {1 - real / padded:.1%} | {step:.1f} | {loss} |")
    ratio = statistics.median(times["longest"]) / statistics.median(times["by length"])
    print(f"\ngrouped by length: {ratio:.2f}x faster per step; load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
