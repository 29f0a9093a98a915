"""Nuggets selection with and without reusing the candidate's KV cache, next to P2D's teacher-forced probing and
Data Whisperer, on the same pool of SmolLM2-135M-Instruct (the CPU twin's BioInstruct pool by default).

* ``nuggets (prefix reused)``: the plugin's scorer: each candidate's chat turn runs once, its KV cache is copied and
  expanded over each batch of anchors.
* ``nuggets (whole sequences)``: the same golden scores with every (candidate, anchor) sequence run whole, as a
  scorer without the cache would (Nuggets' own code reuses the cache too).
* ``p2d teacher_forced`` and ``data_whisperer``: ``select_examples`` on the same candidates (5 demonstrations and
  3 queries per prompt, every candidate a demonstration once), heads: 10% drawn at random for p2d (any 27 heads cost
  the same), one middle layer for Data Whisperer.

The two Nuggets variants alternate chunk by chunk (same anchors, same candidates), so load hits them alike; the
script checks that they give the same golden scores and log-likelihoods to float tolerance. The anchors (k-means
on mean-pooled hidden states) are timed on their own. Prints seconds per 100 candidates for each method.

    OMP_NUM_THREADS=1 python benchmarks/bench_nuggets.py --candidates 40 --anchors 100
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import load_model, load_tokenizer, model_folder

from p2d_llamafactory.data import nuggets
from p2d_llamafactory.data.prompts import Example, examples_fingerprint
from p2d_llamafactory.data.select import SelectionInputs, select_examples
from p2d_llamafactory.heads.headset import HeadSet
from p2d_llamafactory.heads.layout import find_attention_layout
from p2d_llamafactory.heads.scoring import random_scores, select_top
from p2d_llamafactory.hparams import P2DArguments, count_for_ratio
from p2d_llamafactory.integration.template import chat_frame


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--data", default="data_info/cpu/p2d_bioinstruct_train.json", help="an alpaca-format pool")
    parser.add_argument("--candidates", type=int, default=40)
    parser.add_argument("--anchors", type=int, default=100, help="p2d_nuggets_anchors (anchors come from the pool)")
    parser.add_argument("--pool", type=int, default=400, help="examples the anchors are drawn from")
    parser.add_argument("--batch-size", type=int, default=8, help="p2d_nuggets_batch_size")
    parser.add_argument("--chunk", type=int, default=5, help="candidates per alternation of the two variants")
    parser.add_argument("--instruction", default="biomedical", help="p2d_icl_instruction of the probing methods")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--json", default=None, help="also write every number to this file")
    return parser.parse_args()


def _examples(path: str, n: int) -> list[Example]:
    rows = json.loads(Path(path).read_text())[:n]
    return [
        Example(i, "\n".join(filter(None, [r["instruction"], r.get("input", "")])), r["output"])
        for i, r in enumerate(rows)
    ]


def _frame(tokenizer):
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    return chat_frame(get_template_and_fix_tokenizer(tokenizer, DataArguments(template="smollm2")), tokenizer)


def bench_nuggets(model, tokenizer, frame, pool: list[Example], args) -> dict:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    turns = {ex.index: nuggets.frame_turn(tokenizer, frame, ex) for ex in pool}
    settings = nuggets.NuggetsSettings(args.anchors, "kmeans", args.batch_size, args.seed)
    start = time.perf_counter()
    anchors = nuggets.choose_anchors(model, turns, settings, pad)
    anchor_seconds = time.perf_counter() - start
    anchor_turns = [turns[i] for i in anchors]
    candidates = [ex.index for ex in pool[: args.candidates]]
    seconds = {"reused": 0.0, "whole": 0.0}
    shots = {"reused": {}, "whole": {}}
    for c, first in enumerate(range(0, len(candidates), args.chunk)):
        chunk = candidates[first : first + args.chunk]
        for variant in ("reused", "whole") if c % 2 == 0 else ("whole", "reused"):
            start = time.perf_counter()
            for index in chunk:
                shots[variant][index] = nuggets.one_shot(
                    model, turns[index].ids, anchor_turns, pad, args.batch_size, reuse_prefix=variant == "reused"
                )
            seconds[variant] += time.perf_counter() - start
    start = time.perf_counter()
    base = nuggets.zero_shot(model, anchor_turns, pad, args.batch_size)
    zero_seconds = time.perf_counter() - start
    diff = max(abs(a - b) for i in candidates for a, b in zip(shots["reused"][i], shots["whole"][i]))
    golden = {v: [sum(s > z for s, z in zip(shots[v][i], base)) / len(base) for i in candidates] for v in shots}
    return {
        "anchor_seconds": anchor_seconds,
        "zero_shot_seconds": zero_seconds,
        "seconds": seconds,
        "max_abs_logprob_diff": diff,
        "golden_equal": golden["reused"] == golden["whole"],
        "golden_scores": golden["reused"],
    }


def bench_probing(model, tokenizer, frame, pool: list[Example], args) -> dict:
    examples = pool[: args.candidates]
    layout = find_attention_layout(model)
    heads = select_top(random_scores(layout, args.seed), count_for_ratio(0.1, layout.total_heads))
    head_set = HeadSet("bench", layout.shape(), "random", args.seed, 0.1, [], heads)
    inputs = SelectionInputs(
        examples=examples,
        token_lengths=[len(tokenizer.encode(e.prompt + e.response)) for e in examples],
        max_length=1024,
        tokenizer=tokenizer,
        frame=frame,
        load_model=lambda: model,
        layout=layout,
        head_set=head_set,
        output_dir=None,
        model_name="bench",
        data_fingerprint=examples_fingerprint(examples),
        progress=False,
    )
    seconds = {}
    for method in ("p2d", "data_whisperer"):
        run_args = P2DArguments(
            p2d_data_selection=method,
            p2d_data_ratio=0.5,  # what is kept does not change the scoring cost
            p2d_icl_scoring="teacher_forced",
            p2d_icl_instruction=args.instruction,
            p2d_icl_batch_size=4,
            p2d_seed=args.seed,
        )
        start = time.perf_counter()
        select_examples(inputs, run_args)
        seconds[f"{method} teacher_forced"] = time.perf_counter() - start
    return seconds


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    folder = model_folder(args.model_dir)
    tokenizer, model = load_tokenizer(folder), load_model(folder).eval()
    frame = _frame(tokenizer)
    pool = _examples(args.data, args.pool)
    with torch.no_grad():
        result = bench_nuggets(model, tokenizer, frame, pool, args)
        result["probing_seconds"] = bench_probing(model, tokenizer, frame, pool, args)
    per100 = lambda s: 100.0 * s / args.candidates
    n, a = args.candidates, args.anchors
    print(f"pool {len(pool)}, {n} candidates, {a} anchors, SmolLM2-135M-Instruct, {args.threads} thread(s)")
    print(
        f"anchors (embeddings + k-means over the pool): {result['anchor_seconds']:.1f} s; zero-shot pass: "
        f"{result['zero_shot_seconds']:.1f} s"
    )
    rows = {
        "nuggets (prefix reused)": result["seconds"]["reused"],
        "nuggets (whole sequences)": result["seconds"]["whole"],
        **result["probing_seconds"],
    }
    print("| method | seconds per 100 candidates |\n|---|---|")
    for name, seconds in rows.items():
        print(f"| {name} | {per100(seconds):.1f} |")
    print(
        f"prefix reuse speed-up: {result['seconds']['whole'] / result['seconds']['reused']:.2f}x; "
        f"max |log-likelihood difference| {result['max_abs_logprob_diff']:.2e}; "
        f"golden scores identical: {result['golden_equal']}"
    )
    print(
        f"golden score spread: min {min(result['golden_scores']):.2f}, mean {np.mean(result['golden_scores']):.2f}, "
        f"max {max(result['golden_scores']):.2f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({**result, "args": vars(args)}, indent=1))


if __name__ == "__main__":
    main()
