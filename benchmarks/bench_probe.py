"""Benchmark P2D's data-selection probing against a Data-Whisperer-style reference on SmolLM2-135M-Instruct.

All three methods score the SAME probe prompts (``plan_prompts`` + ``build_prompt``, so identical token ids):

* ``p2d generate``: ``Prober`` with ``scoring="generate"``: greedy decoding (``--max-new-tokens``) through the
  registered ``p2d_probe`` attention, which sums softmax(q k^T) of the selected heads only, query rows only,
  during the prefill pass. Heads: 10 % of all (27 on SmolLM2), ``select_top(random_scores(layout, 0), 27)`` or
  ``--heads-file``.
* ``p2d teacher_forced``: ``Prober`` with ``scoring="teacher_forced"``: one forward pass over prompt + gold
  answers, no decoding; the query score is the gold answers' geometric-mean token probability.
* ``reference``: written here after Data Whisperer (nothing of it is imported): the model in EAGER attention,
  greedy generation with the same ``--max-new-tokens`` (Data Whisperer itself decodes until EOS or a total
  token budget, ``max_token`` minus the prompt length), then a second full forward pass over the prompt with
  ``output_attentions=True`` (the attention probabilities of all layers and heads are materialised), and the
  attention mass from the query rows to each demonstration, summed over all heads of the middle layer,
  divided by the demonstration's length. (Data Whisperer's own attention pass stops at the middle layer and
  keeps only that layer's map, so this reference's second pass is the heavier, textbook variant.) Generated
  text is scored like the Prober does: the prompt opens the answer format, so ``answer_prefix + text``.

The three run batch by batch, interleaved in a rotating order, so load from other processes hits them alike.
Candidates are the first ``--candidates`` rows of ``train.json`` not longer than ``--max-length`` tokens
(prompt + response, as in the project's selection). Outside the timed regions the script also checks that
the P2D head-restricted sums equal the same heads' sums read off the reference's eager attention maps.

    python benchmarks/bench_probe.py [--dataset gsm8k|dialogsum] [--candidates N] [--heads-file p2d_heads.json]
"""

import argparse
import json
import math
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from bench_common import DATA_DIR, load_model, load_tokenizer, model_folder
from scipy.stats import spearmanr

from p2d_llamafactory.data.metrics import score_answers
from p2d_llamafactory.data.probe import Prober, ProbeSettings, PromptResult, final_scores, plan_prompts
from p2d_llamafactory.data.prompts import ChatFrame, Example, ProbePrompt, TaskStyle, build_prompt, task_style
from p2d_llamafactory.data.select import top_examples
from p2d_llamafactory.heads.headset import HeadSet
from p2d_llamafactory.heads.layout import find_attention_layout
from p2d_llamafactory.heads.scoring import random_scores, select_top
from p2d_llamafactory.hparams import count_for_ratio
from p2d_llamafactory.integration.template import chat_frame
from p2d_llamafactory.tokens import pad_batch


DATASETS = {
    # name: (input field, response field, metric, built-in task style, default candidates)
    "gsm8k": ("question", "answer", "em", "math", 60),
    "dialogsum": ("dialogue", "summary", "rougeL", "summarization", 30),
}
METHODS = ("p2d generate", "p2d teacher_forced", "reference")
Plan = tuple[int, list[int], list[int]]


@dataclass
class Run:
    """What one method produced over all batches."""

    name: str
    seconds: float = 0.0
    batch_seconds: list[float] = field(default_factory=list)
    results: list[PromptResult] = field(default_factory=list)
    texts: dict[int, str] = field(default_factory=dict)  # plan -> generated text (generating methods)
    new_tokens: dict[int, int] = field(default_factory=dict)  # plan -> generated tokens (reference)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=None, help="HF model folder (default: prepare_smollm2()'s folder).")
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="gsm8k", help="Folder under DATA_DIR.")
    parser.add_argument("--candidates", type=int, default=None, help="Candidates (default 60 gsm8k, 30 dialogsum).")
    parser.add_argument("--max-length", type=int, default=512, help="Skip rows with more prompt+response tokens.")
    parser.add_argument("--batch-size", type=int, default=4, help="Probe prompts per batch (all methods).")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="Decoding budget of the generating methods.")
    parser.add_argument("--heads-file", default=None, help="p2d_heads.json to probe (default: 27 random heads).")
    parser.add_argument("--head-ratio", type=float, default=0.1, help="Fraction of heads when no --heads-file.")
    parser.add_argument("--data-ratio", type=float, default=0.1, help="Fraction of candidates in the top set.")
    parser.add_argument("--ref-layer", type=int, default=None, help="Reference layer (default: num_layers // 2).")
    parser.add_argument(
        "--ref-attn-batch",
        type=int,
        default=None,
        help="Prompts per output_attentions forward of the reference (default: --batch-size; lower it for "
        "long prompts, the attention maps of all layers take 4 * 30 * 9 * L^2 bytes per prompt).",
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads.")
    parser.add_argument("--json", default=None, help="Also write the numbers to this JSON file.")
    return parser.parse_args()


# ---------------------------------------------------------------- data


def load_candidates(tokenizer, name: str, count: int, max_length: int) -> tuple[dict[int, Example], int]:
    """The first ``count`` rows of ``train.json`` within ``max_length`` tokens, keyed by row index; and how
    many rows before them were skipped as too long."""
    source, target, *_ = DATASETS[name]
    with open(DATA_DIR / name / "train.json", encoding="utf-8") as f:
        rows = json.load(f)
    encode = lambda text: len(tokenizer.encode(text, add_special_tokens=False))
    examples: dict[int, Example] = {}
    skipped = 0
    for index, row in enumerate(rows):
        if len(examples) == count:
            break
        if encode(row[source]) + encode(row[target]) > max_length:
            skipped += 1
            continue
        examples[index] = Example(index, row[source], row[target])
    if len(examples) < count:
        raise ValueError(f"Only {len(examples)} rows of {name} fit in {max_length} tokens.")
    return examples, skipped


def build_frame(tokenizer) -> ChatFrame:
    """The smollm2 LLaMA-Factory template's frame, as a training run would build it."""
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    template = get_template_and_fix_tokenizer(tokenizer, DataArguments(template="smollm2"))
    return chat_frame(template, tokenizer)


def probe_heads(model, args: argparse.Namespace) -> tuple[dict[int, list[int]], str]:
    layout = find_attention_layout(model)
    if args.heads_file:
        head_set = HeadSet.load(args.heads_file)
        head_set.check_shape(layout)
        return head_set.by_layer(), f"{args.heads_file} ({head_set.method}, {len(head_set.selected)} heads)"
    k = count_for_ratio(args.head_ratio, layout.total_heads)
    heads: dict[int, list[int]] = {}
    for layer, head in select_top(random_scores(layout, 0), k):
        heads.setdefault(layer, []).append(head)
    return heads, f"select_top(random_scores(layout, 0), {k})"


# ---------------------------------------------------------------- reference (Data-Whisperer style)


def demo_mass(attention: torch.Tensor, prompt: ProbePrompt, offset: int, heads: Sequence[int]) -> list[float]:
    """Attention mass from the query rows to each demo over ``heads`` of one layer's (H, L, L) map, / length."""
    rows = torch.tensor(prompt.query_rows) + offset
    columns = attention[list(heads)][:, rows].double().sum(dim=(0, 1))
    return [float(columns[start + offset : end + offset].sum()) / (end - start) for start, end in prompt.demo_spans]


@dataclass
class Reference:
    """Eager generation + a second output_attentions pass; middle layer, all heads."""

    model: Any
    tokenizer: Any
    frame: ChatFrame
    style: TaskStyle
    settings: ProbeSettings
    layer: int
    attn_batch: int
    check_heads: Mapping[int, Sequence[int]]  # P2D heads, re-summed from the eager maps outside the timing
    attention_gib: float = 0.0  # largest attention tuple materialised by one forward
    generate_seconds: float = 0.0  # eager generation + scoring, all batches
    attention_seconds: float = 0.0  # output_attentions passes + middle-layer sums, all batches
    check: dict[int, list[float]] = field(default_factory=dict)  # plan -> P2D-head weights from eager maps

    def run_batch(self, plans: Sequence[Plan], examples: Mapping[int, Example], run: Run) -> float:
        """Score ``plans`` into ``run``; returns the seconds spent on the P2D cross-check (not the method's)."""
        pad_id = (
            self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        )
        prompts = [
            build_prompt(self.tokenizer, self.frame, self.style, [examples[i] for i in d], [examples[i] for i in q])
            for _, d, q in plans
        ]
        ids, mask, offsets = pad_batch([p.input_ids for p in prompts], pad_id, left=True)
        config = self.model.config
        previous = config._attn_implementation
        config._attn_implementation = "eager"
        check_seconds = 0.0
        tick = time.perf_counter()
        try:
            with torch.no_grad():
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=self.settings.max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad_id,
                )
                new = out[:, ids.shape[1] :]
                texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
                texts = [p.answer_prefix + t for t, p in zip(texts, prompts)]  # the prompt opens "Answer 1: "
                scores = [score_answers(t, p.references, self.settings.metric) for t, p in zip(texts, prompts)]
                self.generate_seconds += time.perf_counter() - tick
                tick = time.perf_counter()
                weights: list[list[float]] = []
                for start in range(0, len(prompts), self.attn_batch):
                    stop = min(start + self.attn_batch, len(prompts))
                    attentions = self.model(
                        input_ids=ids[start:stop], attention_mask=mask[start:stop], output_attentions=True
                    ).attentions
                    gib = sum(a.numel() * a.element_size() for a in attentions) / 2**30
                    self.attention_gib = max(self.attention_gib, gib)
                    heads = range(attentions[self.layer].shape[1])
                    for j, b in enumerate(range(start, stop)):
                        weights.append(demo_mass(attentions[self.layer][j], prompts[b], offsets[b], heads))
                    check_start = time.perf_counter()
                    for j, b in enumerate(range(start, stop)):
                        self.check[plans[b][0]] = [
                            sum(ws)
                            for ws in zip(
                                *(
                                    demo_mass(attentions[layer][j], prompts[b], offsets[b], hs)
                                    for layer, hs in self.check_heads.items()
                                )
                            )
                        ]
                    check_seconds += time.perf_counter() - check_start
                    del attentions
                self.attention_seconds += time.perf_counter() - tick - check_seconds
        finally:
            config._attn_implementation = previous
        for b, ((plan, demos, _), text) in enumerate(zip(plans, texts)):
            run.results.append(PromptResult(plan, list(demos), weights[b], scores[b]))
            run.texts[plan] = text
            run.new_tokens[plan] = int((new[b] != pad_id).sum())
        return check_seconds


# ---------------------------------------------------------------- comparison


def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    sa, sb = set(a), set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    pairs = [(a, b) for a, b in zip(x, y) if not (math.isnan(a) or math.isnan(b))]
    if len(pairs) < 3 or len({a for a, _ in pairs}) < 2 or len({b for _, b in pairs}) < 2:
        return float("nan")  # undefined for a constant ranking
    return float(spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic)


def selection_rank(scores: Sequence[float], tie_break: Sequence[float], keys: Sequence[int]) -> list[float]:
    """Position of each key in the order ``top_examples`` ranks by (score, then tie-break w, then index)."""
    order = sorted(keys, key=lambda i: (-scores[i], -tie_break[i], i))
    position = {i: n for n, i in enumerate(order)}
    return [float(position[i]) for i in keys]


def max_rel_diff(a: Mapping[int, list[float]], b: Mapping[int, list[float]]) -> float:
    worst = 0.0
    for plan, xs in a.items():
        for x, y in zip(xs, b[plan]):
            worst = max(worst, abs(x - y) / max(abs(y), 1e-30))
    return worst


def weights_by_plan(run: Run) -> dict[int, list[float]]:
    return {r.plan: r.weights for r in run.results}


# ---------------------------------------------------------------- main


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    _, _, metric, style_name, default_candidates = DATASETS[args.dataset]
    count = args.candidates or default_candidates
    folder = model_folder(args.model_dir)
    tokenizer = load_tokenizer(folder)
    frame = build_frame(tokenizer)
    model = load_model(folder).eval()
    layout = find_attention_layout(model)
    heads, heads_source = probe_heads(model, args)
    layer = args.ref_layer if args.ref_layer is not None else layout.num_layers // 2
    style = task_style(style_name, metric)

    examples, skipped = load_candidates(tokenizer, args.dataset, count, args.max_length)
    candidates = sorted(examples)
    base = ProbeSettings(
        rounds=1,
        seed=42,
        metric=metric,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
    )
    plans = [(i, d, q) for i, (d, q) in enumerate(plan_prompts(candidates, base))]
    batches = [plans[s : s + args.batch_size] for s in range(0, len(plans), args.batch_size)]

    texts: list[str] = []  # what Prober generated, in batch order

    def capturing_score(text: str, references: list[str], name: str) -> list[float]:
        texts.append(text)
        return score_answers(text, references, name)

    gen = Prober(model, tokenizer, frame, style, heads, replace(base, scoring="generate"), capturing_score)
    tf = Prober(model, tokenizer, frame, style, heads, replace(base, scoring="teacher_forced"), score_answers)
    ref = Reference(
        model, tokenizer, frame, style, base, layer, args.ref_attn_batch or args.batch_size, check_heads=heads
    )
    runs = {name: Run(name) for name in METHODS}

    lengths = [
        len(build_prompt(tokenizer, frame, style, [examples[i] for i in d], [examples[i] for i in q]).input_ids)
        for _, d, q in plans
    ]
    tf_lengths = [
        len(build_prompt(tokenizer, frame, style, [examples[i] for i in d], [examples[i] for i in q], True).input_ids)
        for _, d, q in plans
    ]
    print(
        f"dataset {args.dataset} ({metric}, style '{style_name}'): {len(candidates)} candidates = first rows of "
        f"train.json within {args.max_length} tokens ({skipped} longer rows skipped); {len(plans)} prompts of "
        f"{base.num_demos} demos + {base.num_queries} queries, batch {args.batch_size}, {len(batches)} batches"
    )
    print(
        f"prompt tokens: mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)} "
        f"(teacher-forced with gold answers: mean {sum(tf_lengths) / len(tf_lengths):.0f}, max {max(tf_lengths)})"
    )
    print(f"P2D heads: {heads_source}: {sum(len(h) for h in heads.values())} heads in {len(heads)} layers")
    print(f"reference: eager attention, output_attentions=True, layer {layer}, all {layout.num_heads} heads")
    print(f"max_new_tokens {args.max_new_tokens}; torch threads {torch.get_num_threads()}")

    # warm-up (untimed): each attention path once on the first two plans, 2 new tokens
    warm = plans[:2]
    Prober(model, tokenizer, frame, style, heads, replace(base, max_new_tokens=2), score_answers).run_batch(
        warm, examples
    )
    tf.run_batch(warm, examples)
    Reference(model, tokenizer, frame, style, replace(base, max_new_tokens=2), layer, 1, {}).run_batch(
        warm, examples, Run("warm-up")
    )

    print(f"load average before timing (other processes share the CPU): {os.getloadavg()[0]:.2f}")
    wall = time.perf_counter()
    for n, batch in enumerate(batches):
        order = METHODS[n % 3 :] + METHODS[: n % 3]
        for name in order:
            run = runs[name]
            start = time.perf_counter()
            if name == "p2d generate":
                texts.clear()
                results = gen.run_batch(batch, examples)
                run.results += results
                run.texts.update((r.plan, t) for r, t in zip(results, texts))
                extra = 0.0
            elif name == "p2d teacher_forced":
                run.results += tf.run_batch(batch, examples)
                extra = 0.0
            else:
                extra = ref.run_batch(batch, examples, run)
            seconds = time.perf_counter() - start - extra
            run.seconds += seconds
            run.batch_seconds.append(seconds)
        print(
            f"batch {n + 1}/{len(batches)} ({len(batch)} prompts): "
            + ", ".join(f"{name} {runs[name].batch_seconds[-1]:.1f} s" for name in METHODS),
            flush=True,
        )
    wall = time.perf_counter() - wall
    print(f"load average after timing: {os.getloadavg()[0]:.2f} (timed loop {wall:.0f} s wall)")

    # ---------------- scores and agreement
    size = max(candidates) + 1
    k = count_for_ratio(args.data_ratio, len(candidates))
    finals = {}
    for name, run in runs.items():
        scores, uses, attention = final_scores(run.results, size)
        selected = top_examples(scores, k, "p2d", attention)
        finals[name] = (scores, uses, attention, selected)

    # per 100 candidates: each prompt scores num_demos candidates once (rounds=1), so 100 candidates take
    # 100 / num_demos prompts' worth of work. "median" uses the median batch (seconds per prompt), which
    # shrugs off batches that other processes on the shared CPU slowed down.
    per_prompt = len(plans) / len(candidates) * 100
    sizes = [len(batch) for batch in batches]
    per100 = {name: run.seconds / len(candidates) * 100 for name, run in runs.items()}
    per100_median = {
        name: statistics.median(t / n for t, n in zip(run.batch_seconds, sizes)) * per_prompt
        for name, run in runs.items()
    }
    reference = runs["reference"]
    ratio_total = {name: reference.seconds / run.seconds for name, run in runs.items()}
    batch_ratios = {
        name: [r / m for r, m in zip(reference.batch_seconds, run.batch_seconds)] for name, run in runs.items()
    }
    ratio_median = {name: statistics.median(ratios) for name, ratios in batch_ratios.items()}

    print()
    print(
        "| method | what runs per batch | total s | s / 100 candidates | s / 100 candidates, median batch "
        "| reference / method | reference / method, median of per-batch ratios |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    what = {
        "p2d generate": f"greedy generate ({args.max_new_tokens} new), probe on {sum(map(len, heads.values()))} heads",
        "p2d teacher_forced": "1 forward (prompt + gold answers), same probe",
        "reference": f"eager generate ({args.max_new_tokens} new) + forward with output_attentions",
    }
    for name, run in runs.items():
        print(
            f"| {name} | {what[name]} | {run.seconds:.1f} | {per100[name]:.1f} | {per100_median[name]:.1f} "
            f"| {ratio_total[name]:.2f}x | {ratio_median[name]:.2f}x |"
        )
    print()
    for name, target in (("p2d generate", 2), ("p2d teacher_forced", 10)):
        verdict = lambda r, target=target: "met" if r >= target else "NOT met"
        print(
            f"reference / {name} (target >= {target}x): total {ratio_total[name]:.2f}x ({verdict(ratio_total[name])}); "
            f"median of per-batch ratios {ratio_median[name]:.2f}x ({verdict(ratio_median[name])}); per batch "
            + ", ".join(f"{r:.2f}x" for r in batch_ratios[name])
        )
    print(
        f"reference split: eager generate + scoring {ref.generate_seconds:.1f} s, output_attentions passes + "
        f"layer-{layer} sums {ref.attention_seconds:.1f} s"
    )
    print(f"reference: largest attention tuple of one output_attentions forward = {ref.attention_gib:.2f} GiB")

    keys = list(candidates)

    def column(name: str, part: int) -> list[float]:
        return [finals[name][part][i] for i in keys]

    def rank(name: str) -> list[float]:
        return selection_rank(finals[name][0], finals[name][2], keys)

    gen_w, tf_w = weights_by_plan(runs["p2d generate"]), weights_by_plan(runs["p2d teacher_forced"])
    rows = [
        ("top-10% sets: k", str(k)),
        (
            "Jaccard top-k, generate vs teacher_forced",
            f"{jaccard(finals['p2d generate'][3], finals['p2d teacher_forced'][3]):.3f}",
        ),
        (
            "Spearman final scores (Eq. 10), generate vs teacher_forced",
            f"{spearman(column('p2d generate', 0), column('p2d teacher_forced', 0)):.4f}",
        ),
        (
            "Spearman mean attention weight w, generate vs teacher_forced",
            f"{spearman(column('p2d generate', 2), column('p2d teacher_forced', 2)):.6f}",
        ),
        (
            "Spearman of the full selection ranking (s_final, ties by w), generate vs teacher_forced",
            f"{spearman(rank('p2d generate'), rank('p2d teacher_forced')):.4f}",
        ),
        ("max rel. diff of w per (prompt, demo), generate vs teacher_forced", f"{max_rel_diff(tf_w, gen_w):.2e}"),
        (
            "Jaccard top-k, reference vs generate / vs teacher_forced",
            f"{jaccard(finals['reference'][3], finals['p2d generate'][3]):.3f} / "
            f"{jaccard(finals['reference'][3], finals['p2d teacher_forced'][3]):.3f}",
        ),
        (
            "Spearman final scores, reference vs generate / vs teacher_forced",
            f"{spearman(column('reference', 0), column('p2d generate', 0)):.4f} / "
            f"{spearman(column('reference', 0), column('p2d teacher_forced', 0)):.4f}",
        ),
        (
            "Spearman selection ranking, reference vs generate / vs teacher_forced",
            f"{spearman(rank('reference'), rank('p2d generate')):.4f} / "
            f"{spearman(rank('reference'), rank('p2d teacher_forced')):.4f}",
        ),
        (
            "check: P2D probe w vs the same heads summed from the eager maps (max rel. diff)",
            f"{max_rel_diff(gen_w, ref.check):.2e}",
        ),
    ]
    for name in METHODS:
        scored = [r.score for r in runs[name].results]
        rows.append(
            (
                f"{name}: mean prompt score s (Eq. 8); prompts with s > 0",
                f"{sum(scored) / len(scored):.4f}; {sum(s > 0 for s in scored)}/{len(scored)}",
            )
        )
    gen_texts, ref_texts = runs["p2d generate"].texts, runs["reference"].texts
    same_text = sum(gen_texts[p] == ref_texts[p] for p in ref_texts)
    same_scores = sum(
        a.query_scores == b.query_scores
        for a, b in zip(
            sorted(runs["p2d generate"].results, key=lambda r: r.plan),
            sorted(runs["reference"].results, key=lambda r: r.plan),
        )
    )
    new_tokens = list(runs["reference"].new_tokens.values())
    rows += [
        ("generated text identical, p2d generate (SDPA) vs reference (eager)", f"{same_text}/{len(ref_texts)}"),
        ("query scores identical, p2d generate vs reference", f"{same_scores}/{len(ref_texts)}"),
        (
            "reference: new tokens per prompt (mean, min-max)",
            f"{sum(new_tokens) / len(new_tokens):.0f}, {min(new_tokens)}-{max(new_tokens)}",
        ),
    ]
    print()
    print("| agreement | value |")
    print("|---|---|")
    for label, value in rows:
        print(f"| {label} | {value} |")
    print()
    for name in METHODS:
        print(f"top-{k} {name}: {finals[name][3]}")

    if args.json:
        record = {
            "args": vars(args),
            "candidates": len(candidates),
            "prompts": len(plans),
            "seconds": {n: r.seconds for n, r in runs.items()},
            "batch_seconds": {n: r.batch_seconds for n, r in runs.items()},
            "per_100_candidates": per100,
            "per_100_candidates_median_batch": per100_median,
            "ratio_total": ratio_total,
            "ratio_median_batch": ratio_median,
            "agreement": dict(rows),
            "top": {n: finals[n][3] for n in METHODS},
        }
        Path(args.json).write_text(json.dumps(record, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
