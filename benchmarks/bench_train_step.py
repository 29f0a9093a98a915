"""Benchmark one training step of SmolLM2-135M-Instruct under full, LoRA, freeze and P2D head tuning.

Every method runs in its own spawned worker process (so ``ru_maxrss`` is that method's own peak memory) on the
same fixed GSM8K batch; the parent steps the workers round-robin, one at a time, so they never compete for the
CPU and slow drifts of the machine hit every method alike. A step is zero_grad + forward + backward +
``torch.optim.AdamW.step``; the first ``--warmup`` steps are not timed.

Methods:
  full           all parameters train
  lora           peft LoRA r=128, alpha=256, q/k/v, dropout 0 (the paper's baseline)
  freeze         LLaMA-Factory's default freeze tuning: all parameters of the last 2 decoder layers
  p2d_heads      apply_head_slices, 10% of the heads chosen by select_top(random_scores(layout, seed=0), k), q+o
  p2d_heads_w1   the same, heads chosen by W1 scoring against a small real FHI proxy (see --w1-proxy-*)
  p2d_heads_top  the same number of heads, drawn at random from the last --top-layers decoder layers only (heads
                 chosen for cost: the backward pass stops above the lowest trained layer)

    python benchmarks/bench_train_step.py
"""

import argparse
import multiprocessing as mp
import os
import resource
import statistics
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

import torch
from bench_common import Batch, load_gsm8k, load_model, load_tokenizer, make_batches, model_folder
from torch import nn
from tqdm.auto import tqdm

from p2d_llamafactory.adapter import apply_head_slices, count_slice_params
from p2d_llamafactory.heads.layout import AttentionLayout, find_attention_layout, layout_from_config
from p2d_llamafactory.heads.proxy import train_proxy
from p2d_llamafactory.heads.scoring import random_scores, select_top, weight_scores
from p2d_llamafactory.hparams import count_for_ratio


METHODS = ("full", "lora", "freeze", "p2d_heads", "p2d_heads_w1", "p2d_heads_top")
HEAD_METHODS = ("p2d_heads", "p2d_heads_w1", "p2d_heads_top")
HEAD_MODULES = ("q", "o")
FREEZE_TRAINABLE_LAYERS = 2  # LLaMA-Factory's default freeze_trainable_layers (freeze_trainable_modules: all)
Heads = list[tuple[int, int]]


@dataclass
class WorkerSpec:
    method: str
    folder: Path
    batch: Batch
    heads: Heads | None
    lr: float
    threads: int


@dataclass
class WorkerError:
    traceback: str


@dataclass
class Result:
    method: str
    trainable: int = 0
    trainable_bytes: int = 0
    expected_trainable: int | None = None  # count_slice_params for the P2D methods
    optimizer_state_bytes: int = 0
    first_loss: float = float("nan")
    step_times: list[float] = field(default_factory=list)
    rss_loaded: int = 0  # bytes: peak RSS once the model is loaded, before the method is set up
    rss_peak: int = 0  # bytes: peak RSS of the whole worker


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=None, help="HF model folder (default: prepare_smollm2()'s folder).")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"Comma-separated subset of {', '.join(METHODS)}."
    )
    parser.add_argument("--batch-size", type=int, default=4, help="Sequences per step.")
    parser.add_argument("--seq-len", type=int, default=128, help="Tokens per sequence.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps per method.")
    parser.add_argument("--steps", type=int, default=10, help="Timed steps per method.")
    parser.add_argument("--lr", type=float, default=1e-5, help="AdamW learning rate.")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every worker.")
    parser.add_argument("--head-ratio", type=float, default=0.1, help="Fraction of heads P2D trains.")
    parser.add_argument("--top-layers", type=int, default=10, help="p2d_heads_top: heads from the last N layers.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the batch sample and of random heads.")
    parser.add_argument("--w1-proxy-steps", type=int, default=3, help="AdamW steps of the W1 proxy (paper: 20).")
    parser.add_argument(
        "--w1-proxy-examples", type=int, default=8, help="GSM8K examples of the W1 proxy (paper: 100)."
    )
    parser.add_argument("--w1-proxy-lr", type=float, default=2e-5, help="Learning rate of the W1 proxy.")
    parser.add_argument("--temperature", type=float, default=0.1, help="Softmax temperature of the W1 scoring.")
    return parser.parse_args()


# ---------------------------------------------------------------- methods (run inside the workers)


def setup_full(model: nn.Module, spec: WorkerSpec) -> nn.Module:
    model.requires_grad_(True)
    return model


def setup_lora(model: nn.Module, spec: WorkerSpec) -> nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=128,
        lora_alpha=256,
        target_modules=["q_proj", "k_proj", "v_proj"],
        lora_dropout=0.0,
    )
    return get_peft_model(model, config)


def setup_freeze(model: nn.Module, spec: WorkerSpec) -> nn.Module:
    """LLaMA-Factory's rule: a parameter trains when its name contains ``.{i}.`` for one of the last n layers."""
    num_layers = model.config.num_hidden_layers
    markers = [f".{i}." for i in range(num_layers - FREEZE_TRAINABLE_LAYERS, num_layers)]
    for name, param in model.named_parameters():
        param.requires_grad_(any(marker in name for marker in markers))
    return model


def setup_heads(model: nn.Module, spec: WorkerSpec) -> nn.Module:
    return apply_head_slices(model, find_attention_layout(model), spec.heads, HEAD_MODULES)


SETUPS = {
    "full": setup_full,
    "lora": setup_lora,
    "freeze": setup_freeze,
    "p2d_heads": setup_heads,
    "p2d_heads_w1": setup_heads,
    "p2d_heads_top": setup_heads,
}


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of AdamW's exp_avg and exp_avg_sq over all parameters."""
    total = 0
    for state in optimizer.state.values():
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                total += state[key].numel() * state[key].element_size()
    return total


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> tuple[float, float]:
    """(seconds, loss) of zero_grad + forward + backward + optimizer step."""
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start, float(loss.detach())


def worker(spec: WorkerSpec, conn: Connection) -> None:
    """Run one method in this process; a failure goes back to the parent as a traceback string."""
    try:
        run_method(spec, conn)
    except BaseException:
        conn.send(WorkerError(traceback.format_exc()))
        raise
    finally:
        conn.close()


def run_method(spec: WorkerSpec, conn: Connection) -> None:
    """Set up one method, then run a step for every "step" message; answer "stop" with the Result."""
    torch.set_num_threads(spec.threads)
    result = Result(spec.method)
    model = load_model(spec.folder)
    model.config.use_cache = False
    result.rss_loaded = max_rss_bytes()
    model.requires_grad_(False)
    model = SETUPS[spec.method](model, spec)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    result.trainable = sum(p.numel() for p in params)
    result.trainable_bytes = sum(p.numel() * p.element_size() for p in params)
    optimizer = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.1)
    conn.send("ready")
    while conn.recv() == "step":
        seconds, loss = train_step(model, optimizer, spec.batch)
        if not result.step_times:
            result.first_loss = loss
            result.optimizer_state_bytes = optimizer_state_bytes(optimizer)
        result.step_times.append(seconds)
        conn.send(seconds)
    result.rss_peak = max_rss_bytes()
    conn.send(result)


# ---------------------------------------------------------------- head sets (parent side)


def load_model_config(folder: Path) -> object:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder)


def w1_heads_worker(
    folder: Path, batch: Batch, steps: int, lr: float, temperature: float, k: int, threads: int
) -> Heads:
    """Train a small FHI proxy on ``batch`` and return the top-k heads by W1 (runs in its own process)."""
    torch.set_num_threads(threads)
    model = load_model(folder)
    model.config.use_cache = False
    proxy, losses = train_proxy(model, [batch], steps, lr, progress=False)
    layout = find_attention_layout(model)
    return select_top(weight_scores(model, proxy, layout, "w1", temperature, progress=False), k)


def head_sets(args: argparse.Namespace, folder: Path, methods: list[str], layout: AttentionLayout) -> dict[str, Heads]:
    k = count_for_ratio(args.head_ratio, layout.total_heads)
    scores = random_scores(layout, seed=args.seed)
    heads = {"p2d_heads": select_top(scores, k)}
    top = scores.clone()
    top[: layout.num_layers - args.top_layers] = -1.0  # below every uniform draw: the k come from the top layers
    heads["p2d_heads_top"] = select_top(top, k)
    if "p2d_heads_w1" in methods:
        tokenizer = load_tokenizer(folder)
        examples = load_gsm8k()
        proxy_batch = make_batches(tokenizer, examples, 1, args.w1_proxy_examples, args.seq_len, args.seed + 1)[0]
        print(
            f"W1 heads: training a proxy ({args.w1_proxy_steps} AdamW steps on {args.w1_proxy_examples} GSM8K ", end=""
        )
        print(f"examples x {args.seq_len} tokens, lr {args.w1_proxy_lr}) in a separate process ...", flush=True)
        start = time.perf_counter()
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            call = (folder, proxy_batch, args.w1_proxy_steps, args.w1_proxy_lr, args.temperature, k, args.threads)
            heads["p2d_heads_w1"] = pool.submit(w1_heads_worker, *call).result()
        print(f"W1 heads ready in {time.perf_counter() - start:.0f} s")
    return heads


def describe_heads(name: str, heads: Heads, layout: AttentionLayout) -> None:
    per_layer = [0] * layout.num_layers
    for layer, _ in heads:
        per_layer[layer] += 1
    print(f"{name}: {len(heads)} heads, lowest layer {min(layer for layer, _ in heads)}; heads per layer {per_layer}")


# ---------------------------------------------------------------- orchestration


def start_workers(specs: list[WorkerSpec]) -> dict[str, tuple[mp.Process, Connection]]:
    """Start the workers one after the other (each loads its model alone), wait until each is ready."""
    context = mp.get_context("spawn")
    workers = {}
    for spec in tqdm(specs, desc="starting workers"):
        parent, child = context.Pipe()
        process = context.Process(target=worker, args=(spec, child), name=f"bench-{spec.method}")
        process.start()
        child.close()
        workers[spec.method] = (process, parent)
        receive(workers, spec.method)
    return workers


def receive(workers: dict[str, tuple[mp.Process, Connection]], name: str) -> object:
    """The next message of a worker; raise (and stop every worker) when it failed or died."""
    process, conn = workers[name]
    while not conn.poll(1.0):
        if not process.is_alive():
            stop_all(workers)
            raise RuntimeError(f"worker {name} died with exit code {process.exitcode}")
    message = conn.recv()
    if isinstance(message, WorkerError):
        stop_all(workers)
        raise RuntimeError(f"worker {name} failed:\n{message.traceback}")
    return message


def stop_all(workers: dict[str, tuple[mp.Process, Connection]]) -> None:
    for process, _ in workers.values():
        if process.is_alive():
            process.terminate()
        process.join()


def round_robin(workers: dict[str, tuple[mp.Process, Connection]], rounds: int) -> None:
    """One step per method per round, one worker at a time; the order rotates every round."""
    names = list(workers)
    for r in tqdm(range(rounds), desc="round-robin steps"):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            workers[name][1].send("step")
            receive(workers, name)


def collect(workers: dict[str, tuple[mp.Process, Connection]], warmup: int) -> dict[str, Result]:
    results = {}
    for name, (process, conn) in workers.items():
        conn.send("stop")
        result = receive(workers, name)
        result.step_times = result.step_times[warmup:]
        results[name] = result
        process.join()
    return results


# ---------------------------------------------------------------- report


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


def print_table(results: dict[str, Result], tokens: int) -> None:
    full = results.get("full")
    print("\n| method | trainable params | % of full | trainable MiB | AdamW state MiB | state % of full |", end="")
    print(" step s, median (min-max) | tokens/s | peak RSS MiB | RSS after load MiB | peak - load MiB |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for name, r in results.items():
        median = statistics.median(r.step_times)
        share = f"{100 * r.trainable / full.trainable:.2f}%" if full else "-"
        state = f"{100 * r.optimizer_state_bytes / full.optimizer_state_bytes:.2f}%" if full else "-"
        print(
            f"| {name} | {r.trainable:,} | {share} | {mib(r.trainable_bytes)} | {mib(r.optimizer_state_bytes)} | {state} |",
            end="",
        )
        print(f" {median:.3f} ({min(r.step_times):.3f}-{max(r.step_times):.3f}) | {tokens / median:.0f} |", end="")
        print(f" {mib(r.rss_peak)} | {mib(r.rss_loaded)} | {mib(r.rss_peak - r.rss_loaded)} |")


def print_targets(results: dict[str, Result]) -> None:
    def step(name: str) -> float:
        return statistics.median(results[name].step_times)

    print()
    for name in HEAD_METHODS:
        if name not in results:
            continue
        r = results[name]
        if r.expected_trainable is not None and r.expected_trainable != r.trainable:
            print(
                f"WARNING: {name} trains {r.trainable:,} parameters, count_slice_params says {r.expected_trainable:,}"
            )
        if "lora" in results:
            ratio = step(name) / step("lora")
            print(
                f"{name} step time / lora step time = {ratio:.3f} (target <= 1.0: {'met' if ratio <= 1 else 'NOT met'})"
            )
        if "full" in results:
            ratio = r.optimizer_state_bytes / results["full"].optimizer_state_bytes
            print(f"{name} optimizer state / full optimizer state = {100 * ratio:.2f}% ", end="")
            print(f"(target <= 2%: {'met' if ratio <= 0.02 else 'NOT met'})")
    losses = {name: round(r.first_loss, 5) for name, r in results.items()}
    print(f"first-step loss per method (same batch, same start => should agree): {losses}")


def fixed_batch(args: argparse.Namespace, folder: Path) -> Batch:
    """The one batch every method trains on; prints its shape and the run settings."""
    batch = make_batches(load_tokenizer(folder), load_gsm8k(), 1, args.batch_size, args.seq_len, args.seed)[0]
    tokens, labels = int(batch["attention_mask"].sum()), int((batch["labels"] != -100).sum())
    print(f"model: {folder}")
    print(
        f"batch: {args.batch_size} x {args.seq_len} = {tokens} tokens of GSM8K train ({labels} answer tokens as labels)"
    )
    print(f"steps: {args.warmup} warm-up + {args.steps} timed per method, round-robin; torch threads {args.threads}")
    print(f"torch {torch.__version__}; CPU cores {os.cpu_count()}; load average {os.getloadavg()[0]:.2f}")
    return batch


def report(results: dict[str, Result], tokens: int) -> None:
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print_table(results, tokens)
    print("\ntimed step seconds, in round order (outliers = other processes taking the CPU):")
    for name, r in results.items():
        print(f"  {name}: {' '.join(f'{t:.2f}' for t in r.step_times)}")
    print_targets(results)


def main() -> None:
    args = parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    torch.set_num_threads(args.threads)
    folder = model_folder(args.model_dir)
    batch = fixed_batch(args, folder)
    layout = layout_from_config(load_model_config(folder))
    heads = head_sets(args, folder, methods, layout)
    sources = {
        "p2d_heads": f"random_scores(seed={args.seed})",
        "p2d_heads_w1": "W1 vs a small FHI proxy",
        "p2d_heads_top": f"random_scores(seed={args.seed}) in the last {args.top_layers} layers",
    }
    for name in HEAD_METHODS:
        if name in methods:
            source = sources[name]
            describe_heads(f"{name} [{source}]", heads[name], layout)

    workers = start_workers([WorkerSpec(m, folder, batch, heads.get(m), args.lr, args.threads) for m in methods])
    round_robin(workers, args.warmup + args.steps)
    results = collect(workers, args.warmup)
    for name in HEAD_METHODS:
        if name in results:
            results[name].expected_trainable = count_slice_params(layout, heads[name], HEAD_MODULES)
    report(results, int(batch["attention_mask"].sum()))


if __name__ == "__main__":
    main()
