"""Benchmark P2D's W1 head scoring against a scipy reference on SmolLM2-135M-Instruct.

Ours: ``weight_scores(base, proxy, layout, "w1", tau)`` (float64 W_comp, softmax, O(n) CDF-gap W1).
Reference: the same distributions built independently in numpy, head by head, then
``scipy.stats.wasserstein_distance(x, x, p, q)`` with ``x = arange(n)``.
Kernel: ``w1_distance`` against the scipy loop on the very same (project-built) distributions.

The proxy is a copy of the model whose q/k/v weights get a seeded +-noise perturbation (default, seconds),
or, with ``--proxy-steps N``, a real FHI proxy: N full-batch AdamW steps on GSM8K training examples.

    python benchmarks/bench_head_scoring.py [--proxy-steps 3]

Exits with status 1 when the top-k head rankings of ours and the reference differ.
"""

import argparse
import copy
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import scipy
import torch
from bench_common import load_gsm8k, load_model, load_tokenizer, make_batches, model_folder
from scipy.stats import spearmanr, wasserstein_distance
from torch import nn
from tqdm.auto import tqdm

from p2d_llamafactory.heads.layout import AttentionLayout, find_attention_layout, projection_weights
from p2d_llamafactory.heads.proxy import train_proxy
from p2d_llamafactory.heads.scoring import composite_flat, head_distributions, select_top, w1_distance, weight_scores
from p2d_llamafactory.hparams import count_for_ratio


T = TypeVar("T")
Pairs = list[tuple[np.ndarray, np.ndarray]]  # per layer: (P_base, P_proxy), each (num_heads, n)
SCORE_FLOORS = (0.0, 1e-9, 1e-6, 1e-3)  # relative to the largest score


@dataclass
class Timed:
    seconds: float  # median over the timed runs
    scores: np.ndarray  # (num_layers, num_heads)
    best: float = float("nan")  # fastest timed run: the least disturbed by other processes on the CPU


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=None, help="HF model folder (default: prepare_smollm2()'s folder).")
    parser.add_argument("--temperature", type=float, default=0.1, help="Softmax temperature tau.")
    parser.add_argument("--ratio", type=float, default=0.1, help="Fraction of heads whose ranking must agree.")
    parser.add_argument("--repeats", type=int, default=7, help="Timed runs of ours (the median is reported).")
    parser.add_argument("--ref-repeats", type=int, default=3, help="Timed runs of the scipy reference (median).")
    parser.add_argument("--noise", type=float, default=1e-3, help="Size of the +-noise added to q/k/v weights.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the perturbation / of the GSM8K sample.")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (scipy is single-threaded).")
    parser.add_argument(
        "--synthetic-n",
        type=int,
        default=0,
        help="Also time W1 alone on random distributions of this size (e.g. 458752 = Qwen2.5-7B's 3584 x 128).",
    )
    parser.add_argument("--synthetic-heads", type=int, default=16, help="Heads of the --synthetic-n comparison.")
    parser.add_argument(
        "--proxy-steps", type=int, default=0, help="Train a real proxy for N AdamW steps (0: perturb)."
    )
    parser.add_argument("--proxy-examples", type=int, default=8, help="GSM8K examples of the real proxy (one batch).")
    parser.add_argument("--proxy-seq-len", type=int, default=128, help="Tokens per example of the real proxy.")
    parser.add_argument("--proxy-lr", type=float, default=2e-5, help="AdamW learning rate of the real proxy.")
    return parser.parse_args()


# ---------------------------------------------------------------- proxies


def perturbed_proxy(base: nn.Module, layout: AttentionLayout, noise: float, seed: int) -> nn.Module:
    """Copy of ``base`` with w + noise * (+-1) on every q/k/v weight, signs from a seeded generator."""
    proxy = copy.deepcopy(base)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in layout.attention_modules:
            attention = proxy.get_submodule(name)
            for proj in (attention.q_proj, attention.k_proj, attention.v_proj):
                signs = torch.randint(0, 2, proj.weight.shape, generator=generator).to(proj.weight.dtype) * 2 - 1
                proj.weight.add_(noise * signs)
    return proxy


def trained_proxy(base: nn.Module, args: argparse.Namespace) -> nn.Module:
    """A real FHI proxy: ``--proxy-steps`` full-batch AdamW steps on a seeded GSM8K sample."""
    tokenizer = load_tokenizer(model_folder(args.model_dir))
    batches = make_batches(tokenizer, load_gsm8k(), 1, args.proxy_examples, args.proxy_seq_len, args.seed)
    proxy, losses = train_proxy(base, batches, args.proxy_steps, args.proxy_lr)
    print(f"proxy losses: {', '.join(f'{loss:.4f}' for loss in losses)}")
    return proxy


# ---------------------------------------------------------------- reference


def numpy_distributions(model: nn.Module, layout: AttentionLayout, layer: int, tau: float) -> np.ndarray:
    """Softmax(Flatten(Wq_h Wk_g^T Wv_g) / tau) per query head, built head by head in numpy float64."""
    attention = model.get_submodule(layout.attention_modules[layer])
    q, k, v = (getattr(attention, p).weight.detach().double().numpy() for p in ("q_proj", "k_proj", "v_proj"))
    d = layout.head_dim
    rows = []
    for head in range(layout.num_heads):
        g = head // layout.group_size
        wq, wk, wv = q[head * d : (head + 1) * d].T, k[g * d : (g + 1) * d].T, v[g * d : (g + 1) * d].T
        z = (wq @ (wk.T @ wv)).ravel() / tau  # d_model x d_head, row-major flatten
        z = np.exp(z - z.max())
        rows.append(z / z.sum())
    return np.stack(rows)


def scipy_w1(pairs: Pairs) -> np.ndarray:
    """scipy.stats.wasserstein_distance per head on the support 0..n-1."""
    scores = np.zeros((len(pairs), pairs[0][0].shape[0]))
    support = np.arange(pairs[0][0].shape[1], dtype=np.float64)
    for layer, (p, q) in enumerate(pairs):
        for head in range(p.shape[0]):
            scores[layer, head] = wasserstein_distance(support, support, p[head], q[head])
    return scores


def reference(base: nn.Module, proxy: nn.Module, layout: AttentionLayout, tau: float) -> tuple[float, Timed]:
    """(seconds to build the numpy distributions, scipy W1 timed on them)."""
    start = time.perf_counter()
    pairs = [
        (numpy_distributions(base, layout, layer, tau), numpy_distributions(proxy, layout, layer, tau))
        for layer in tqdm(range(layout.num_layers), desc="reference distributions (numpy)", leave=False)
    ]
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    scores = scipy_w1(pairs)
    return build_s, Timed(time.perf_counter() - start, scores)


def project_pairs(
    base: nn.Module, proxy: nn.Module, layout: AttentionLayout, tau: float
) -> list[tuple[torch.Tensor, ...]]:
    """The project's own distributions (composite_flat + head_distributions) for every layer."""
    pairs = []
    for layer in range(layout.num_layers):
        dists = []
        for model in (base, proxy):
            w = projection_weights(model, layout, layer)
            dists.append(head_distributions(composite_flat(w["q"], w["k"], w["v"], layout), tau))
        pairs.append(tuple(dists))
    return pairs


# ---------------------------------------------------------------- timing and report


def timed_runs(fn: Callable[[], T], repeats: int) -> tuple[list[float], T]:
    """(seconds of ``repeats`` calls after one warm-up call, result of the last call)."""
    result = fn()
    times = []
    for _ in tqdm(range(repeats), desc="timing ours", leave=False):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return times, result


def boundary_gap(scores: np.ndarray, k: int) -> float:
    """Relative gap between the k-th and (k+1)-th highest score: how close the top-k cut is to a tie."""
    ordered = np.sort(scores.ravel())[::-1]
    return float((ordered[k - 1] - ordered[k]) / ordered[k - 1])


def same_top(a: np.ndarray, b: np.ndarray, k: int) -> tuple[bool, int]:
    """(identical top-k head sets, number of shared heads)."""
    top_a, top_b = select_top(torch.from_numpy(a), k), select_top(torch.from_numpy(b), k)
    return top_a == top_b, len(set(top_a) & set(top_b))


def accuracy_rows(name: str, ours: np.ndarray, ref: np.ndarray, k: int) -> list[str]:
    rel = np.abs(ours - ref) / np.abs(ref)
    top = ref.max()
    rows = [f"| {name}: max abs difference / largest score | {np.abs(ours - ref).max() / top:.2e} |"]
    for floor in SCORE_FLOORS:
        mask = ref > floor * top
        label = "all heads" if floor == 0 else f"heads with score > {floor:g} x largest"
        rows.append(f"| {name}: max relative difference, {label} ({mask.sum()}) | {rel[mask].max():.2e} |")
    same, shared = same_top(ours, ref, k)
    rows.append(f"| {name}: top-{k} heads identical | {same} ({shared}/{k} shared) |")
    rows.append(
        f"| {name}: Spearman rank correlation, all heads | {spearmanr(ours.ravel(), ref.ravel()).statistic:.8f} |"
    )
    return rows


def print_tables(ours: Timed, ref_build_s: float, ref: Timed, kernel: Timed, scipy_kernel: Timed, k: int) -> None:
    ref_total = ref_build_s + ref.seconds
    print("\n| timing (2 CPU threads) | ours | reference | speed-up | target |")
    print("|---|---|---|---|---|")
    speedup = ref_total / ours.seconds
    verdict = "met" if speedup >= 50 else "NOT met"
    print(f"| end to end: distributions + W1, 270 heads | {ours.seconds:.4f} s (weight_scores, median) | ", end="")
    print(f"{ref_total:.4f} s (numpy + scipy, median) | {speedup:.1f}x | >= 50x: {verdict} |")
    print(
        f"| end to end, fastest run of each | {ours.best:.4f} s | {ref.best:.4f} s | {ref.best / ours.best:.1f}x | |"
    )
    print(f"| distributions only (W_comp + softmax) | (inside the above) | {ref_build_s:.4f} s (numpy) | | |")
    print(f"| W1 only, same distributions | {kernel.seconds:.4f} s (w1_distance, median) | ", end="")
    print(f"{scipy_kernel.seconds:.4f} s (scipy loop, one run) | {scipy_kernel.seconds / kernel.seconds:.1f}x | |")
    print("\n| accuracy and ranking | value |")
    print("|---|---|")
    for row in accuracy_rows("end to end", ours.scores, ref.scores, k):
        print(row)
    for row in accuracy_rows("W1 only", kernel.scores, scipy_kernel.scores, k):
        print(row)
    print(f"| score range (end-to-end reference) | {ref.scores.min():.2e} .. {ref.scores.max():.2e} |")
    print(f"| relative gap between the {k}th and {k + 1}th score | {boundary_gap(ref.scores, k):.2e} |")


def describe_distributions(pairs: list[tuple[torch.Tensor, ...]]) -> None:
    """How peaked the base distributions are: their effective support 1 / sum(p^2) out of n."""
    base = torch.cat([p for p, _ in pairs])
    effective = (1.0 / (base**2).sum(dim=-1)).numpy()
    n = base.shape[1]
    print(f"base distributions: n={n} entries per head; effective support 1/sum(p^2): ", end="")
    print(
        f"median {np.median(effective):.2f}, max {effective.max():.1f}; max p: median {base.max(-1).values.median():.3f}"
    )


def build_proxy(base: nn.Module, layout: AttentionLayout, args: argparse.Namespace) -> tuple[nn.Module, str]:
    if args.proxy_steps > 0:
        return trained_proxy(base, args), f"real proxy: {args.proxy_steps} AdamW steps, lr {args.proxy_lr}"
    return perturbed_proxy(base, layout, args.noise, args.seed), f"q/k/v +-{args.noise:g} perturbation"


def time_ours(base: nn.Module, proxy: nn.Module, layout: AttentionLayout, args: argparse.Namespace) -> Timed:
    def run() -> torch.Tensor:
        return weight_scores(base, proxy, layout, "w1", args.temperature, progress=False)

    times, scores = timed_runs(run, args.repeats)
    return Timed(statistics.median(times), scores.numpy(), min(times))


def time_reference(
    base: nn.Module, proxy: nn.Module, layout: AttentionLayout, args: argparse.Namespace
) -> tuple[float, Timed]:
    """(median numpy build seconds, scipy W1 with median seconds and the fastest end-to-end run)."""
    runs = [reference(base, proxy, layout, args.temperature) for _ in range(args.ref_repeats)]
    ref = runs[-1][1]
    ref.seconds = statistics.median(r[1].seconds for r in runs)
    ref.best = min(r[0] + r[1].seconds for r in runs)
    return statistics.median(r[0] for r in runs), ref


def time_kernels(
    base: nn.Module, proxy: nn.Module, layout: AttentionLayout, args: argparse.Namespace
) -> tuple[Timed, Timed]:
    """w1_distance and the scipy loop on the same, project-built distributions."""
    pairs = project_pairs(base, proxy, layout, args.temperature)
    describe_distributions(pairs)
    times, kernel = timed_runs(lambda: torch.stack([w1_distance(p, q) for p, q in pairs]), args.repeats)
    numpy_pairs = [(p.numpy(), q.numpy()) for p, q in pairs]
    start = time.perf_counter()
    scipy_kernel = Timed(0.0, scipy_w1(numpy_pairs))
    scipy_kernel.seconds = scipy_kernel.best = time.perf_counter() - start
    return Timed(statistics.median(times), kernel.numpy(), min(times)), scipy_kernel


def synthetic_kernels(n: int, heads: int, repeats: int, seed: int) -> None:
    """W1 alone, ours vs scipy, on random near-uniform distributions with n entries per head."""
    generator = torch.Generator().manual_seed(seed)
    p, q = (torch.softmax(torch.randn(heads, n, generator=generator, dtype=torch.float64), -1) for _ in range(2))
    times, ours = timed_runs(lambda: w1_distance(p, q), repeats)
    start = time.perf_counter()
    ref = scipy_w1([(p.numpy(), q.numpy())])[0]
    scipy_s = time.perf_counter() - start
    rel = float(np.max(np.abs(ours.numpy() - ref) / ref))
    print(f"\n| W1 only, synthetic: {heads} heads x n={n} | ours (median) | scipy loop | speed-up | max rel. diff |")
    print("|---|---|---|---|---|")
    ours_s = statistics.median(times)
    print(f"| random softmax(randn) pairs | {ours_s:.4f} s | {scipy_s:.4f} s | {scipy_s / ours_s:.1f}x | {rel:.1e} |")


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    folder = model_folder(args.model_dir)
    base = load_model(folder).eval()
    layout = find_attention_layout(base)
    k = count_for_ratio(args.ratio, layout.total_heads)
    proxy, kind = build_proxy(base, layout, args)
    print(f"model: {folder} ({layout.num_layers} layers x {layout.num_heads} heads, {layout.num_kv_heads} KV heads)")
    print(f"proxy: {kind}; tau={args.temperature}; top-k k={k}; torch threads={torch.get_num_threads()}")
    print(f"torch {torch.__version__}, numpy {np.__version__}, scipy {scipy.__version__}; CPU cores {os.cpu_count()}")
    print(f"load average before timing (other processes share the CPU): {os.getloadavg()[0]:.2f}")

    ours = time_ours(base, proxy, layout, args)
    ref_build_s, ref = time_reference(base, proxy, layout, args)
    kernel, scipy_kernel = time_kernels(base, proxy, layout, args)
    print(f"load average after timing: {os.getloadavg()[0]:.2f}")
    print_tables(ours, ref_build_s, ref, kernel, scipy_kernel, k)
    if args.synthetic_n > 0:
        synthetic_kernels(args.synthetic_n, args.synthetic_heads, args.repeats, args.seed)
    same = same_top(ours.scores, ref.scores, k)[0] and same_top(kernel.scores, scipy_kernel.scores, k)[0]
    if not same:
        print(f"FAIL: the top-{k} head rankings differ.", file=sys.stderr)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
