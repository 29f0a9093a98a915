"""Gradient traffic per optimizer step under data parallelism: full vs LoRA vs P2D heads, measured and predicted.

Part 1, on SmolLM2-135M-Instruct: per method, ``--world-size`` processes (default 2) train with torch DDP over gloo on
the CPU, each on its own fixed batch of random token ids (``--batch`` x ``--seq-len``), for ``--warmup`` untimed and
``--steps`` timed optimizer steps (zero_grad, forward, backward, AdamW step). A DDP communication hook
(``report.traffic.AllReduceCounter``) counts the bytes of every gradient bucket DDP all-reduces. Beside the measured
bytes per step: the bytes ``report.traffic.predict`` gives from the model's shapes, the ratio to full fine-tuning and
the median step time. Methods:

  full       every parameter (tied embeddings once)
  lora       LoraConfig(r=128, lora_alpha=256, target_modules=q_proj,k_proj,v_proj), the paper's baseline
  p2d_heads  apply_head_slices on 10 % of the heads, select_top(random_scores(layout, seed), k), q rows + o columns

No buffer sync in forward (``forward_sync_buffers=False``; ``broadcast_buffers=False`` before it existed): the model's
only buffers are the constant rotary frequencies, and buffer broadcasts do not pass the hook anyway. Each method runs in
its own freshly spawned process group, one after the other.

Part 2: the same prediction for Qwen2.5-7B, Llama-3-8B and Qwen3-8B from configs built from their published sizes
(meta device, nothing downloaded), with bfloat16 and float32 gradients, beside the paper's ZeRO-2 figures.

    OMP_NUM_THREADS=1 python benchmarks/bench_traffic.py --model-dir models/SmolLM2-135M-Instruct
"""

import argparse
import inspect
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from bench_common import load_model, model_folder

from p2d_llamafactory.experiments.published import PUBLISHED_MODELS, published_config
from p2d_llamafactory.experiments.traffic import (
    HEAD_RATIO,
    METHODS,
    AllReduceCounter,
    MethodSetup,
    meta_model,
    predict,
    prepare,
    trainable_traffic,
)


GB = 1e9
MB = 1e6
PAPER_QWEN_7B = {"full": 30.4 * GB, "p2d_heads": 0.30 * GB}  # Appendix I: 2 x P_train x 2 bytes per GPU and step


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2, help="sequences per rank")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=HEAD_RATIO, help="share of heads for p2d_heads")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random head draw")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--json", default=None, help="also write every number to this file")
    return parser.parse_args()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, method: str, folder: str, port: int, out_dir: str, args: argparse.Namespace) -> None:
    """One DDP rank: set the method up, train, and write what the hook counted to ``out_dir/rank<r>.json``."""
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(args.threads)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=args.world_size)
    try:
        model = load_model(Path(folder))
        model.config.use_cache = False
        total = sum(p.numel() for p in model.parameters())  # of the base model, before any adapter
        setup = MethodSetup(head_ratio=args.ratio, seed=args.seed)
        predicted = predict(model, method, setup=setup)
        model = prepare(model, method, setup).train()
        trainable = trainable_traffic(model, method)
        # no buffer sync in forward (the rotary frequencies are constant): torch 2.14 names it forward_sync_buffers
        no_sync = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
        ddp = DistributedDataParallel(model, **{"forward_sync_buffers" if no_sync else "broadcast_buffers": False})
        counter = AllReduceCounter()
        ddp.register_comm_hook(counter, AllReduceCounter.hook)
        optimizer = torch.optim.AdamW([p for p in ddp.parameters() if p.requires_grad], lr=args.lr)

        generator = torch.Generator().manual_seed(1000 + rank)  # each rank its own data, as data parallelism has
        ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq_len), generator=generator)
        steps = []
        for _ in range(args.warmup + args.steps):
            counter.reset()
            start = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss = ddp(input_ids=ids, labels=ids).loss
            loss.backward()
            optimizer.step()
            steps.append({"seconds": time.perf_counter() - start, "bytes": counter.bytes, "buckets": counter.buckets})
            steps[-1]["loss"] = loss.item()
        record = {
            "method": method,
            "rank": rank,
            "predicted_params": predicted.trainable_params,
            "predicted_bytes": predicted.gradient_bytes,
            "trainable_params": trainable.trainable_params,
            "trainable_bytes": trainable.gradient_bytes,
            "total_params": total,
            "steps": steps,
        }
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


def run_method(method: str, folder: Path, args: argparse.Namespace) -> list[dict]:
    with tempfile.TemporaryDirectory() as out_dir:
        start = time.perf_counter()
        mp.spawn(worker, args=(method, str(folder), _free_port(), out_dir, args), nprocs=args.world_size)
        records = [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(args.world_size)]
    print(f"  {method}: {time.perf_counter() - start:.0f} s (spawn, load, {args.warmup + args.steps} steps)")
    return records


def summarise(records: list[dict], args: argparse.Namespace) -> dict:
    """Per-step bytes (every rank, every step), the median timed step of rank 0 and the slowest rank."""
    first = records[0]
    per_step = {step["bytes"] for record in records for step in record["steps"]}
    timed = [max(r["steps"][i]["seconds"] for r in records) for i in range(args.warmup, args.warmup + args.steps)]
    return {
        "method": first["method"],
        "trainable_params": first["trainable_params"],
        "total_params": first["total_params"],
        "predicted_bytes": first["predicted_bytes"],
        "trainable_bytes": first["trainable_bytes"],
        "measured_bytes": per_step.pop() if len(per_step) == 1 else sorted(per_step),
        "buckets": sorted({step["buckets"] for record in records for step in record["steps"]}),
        "median_step_s": statistics.median(timed),
        "step_s": timed,
        "loss_rank0": [round(step["loss"], 4) for step in first["steps"]],
    }


def print_measured(rows: list[dict], args: argparse.Namespace) -> bool:
    full = next((r for r in rows if r["method"] == "full"), None)
    print(
        f"\nSmolLM2-135M-Instruct, {args.world_size}-process DDP (gloo, CPU, {args.threads} thread(s) each), "
        f"{args.batch} x {args.seq_len} random tokens per rank, {args.warmup} warm-up + {args.steps} timed steps\n"
    )
    print(
        "| method | trainable params | share | buckets per step | measured bytes/step | predicted bytes/step "
        "| measured = predicted | ratio to full | median step s (slowest rank) |"
    )
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|")
    ok = True
    for r in rows:
        measured = r["measured_bytes"]
        same = measured == r["predicted_bytes"] == r["trainable_bytes"]
        ok &= same
        ratio = f"{measured / full['measured_bytes']:.2%}" if full and isinstance(measured, int) else "-"
        print(
            f"| {r['method']} | {r['trainable_params']:,} | {r['trainable_params'] / r['total_params']:.2%} "
            f"| {', '.join(map(str, r['buckets']))} | {_bytes(measured)} | {_bytes(r['predicted_bytes'])} "
            f"| {'yes' if same else 'NO'} | {ratio} | {r['median_step_s']:.2f} |"
        )
    heads = next((r for r in rows if r["method"] == "p2d_heads"), None)
    if full and heads and isinstance(heads["measured_bytes"], int):
        share = heads["measured_bytes"] / full["measured_bytes"]
        print(
            f"\np2d_heads traffic / full fine-tuning: {share:.2%} (target <= 2 %: {'met' if share <= 0.02 else 'NOT met'})"
        )
    for r in rows:
        print(
            f"  {r['method']}: timed steps {', '.join(f'{s:.2f}' for s in r['step_s'])} s; loss (rank 0) {r['loss_rank0']}"
        )
    return ok


def _bytes(value) -> str:
    if isinstance(value, list):
        return "varies: " + ", ".join(f"{v:,}" for v in value)
    return f"{value:,} ({value / MB:,.2f} MB)"


def published_rows() -> list[dict]:
    rows = []
    for name, (_, _, published) in PUBLISHED_MODELS.items():
        model = meta_model(published_config(name))
        total = sum(p.numel() for p in model.parameters())
        for method in METHODS:
            bf16, fp32 = predict(model, method, element_size=2), predict(model, method, element_size=4)
            rows.append(
                {
                    "model": name,
                    "parameters": total,
                    "published_parameters": published,
                    "method": method,
                    "trainable_params": bf16.trainable_params,
                    "bf16_bytes": bf16.gradient_bytes,
                    "fp32_bytes": fp32.gradient_bytes,
                }
            )
    return rows


def print_published(rows: list[dict]) -> None:
    print(
        "\nPredicted per optimizer step, 10 % of heads (q, o) for p2d_heads, LoRA r=128 on q,k,v; GB = 1e9 bytes. "
        "Payload = the gradient all-reduced (or ZeRO-2 reduce-scattered); 2 x payload = reduce-scatter + "
        "all-gather, each rank's ring all-reduce traffic for large N, the paper's '2 x P_train x 2 bytes'.\n"
    )
    print(
        "| model | method | trainable params | share | payload GB, bf16 | payload GB, fp32 | 2 x payload GB, bf16 "
        "| ratio full / method |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        full = next(f for f in rows if f["model"] == r["model"] and f["method"] == "full")
        print(
            f"| {r['model']} | {r['method']} | {r['trainable_params']:,} | {r['trainable_params'] / r['parameters']:.2%} "
            f"| {r['bf16_bytes'] / GB:.3f} | {r['fp32_bytes'] / GB:.3f} | {2 * r['bf16_bytes'] / GB:.3f} "
            f"| {full['bf16_bytes'] / r['bf16_bytes']:.1f}x |"
        )
    qwen = {r["method"]: r for r in rows if r["model"] == "Qwen2.5-7B"}
    print(
        f"\nQwen2.5-7B vs the paper (Appendix I: full {PAPER_QWEN_7B['full'] / GB:.1f} GB, P2D "
        f"{PAPER_QWEN_7B['p2d_heads'] / GB:.2f} GB per step and GPU):"
    )
    for method in ("full", "p2d_heads"):
        r = qwen[method]
        print(
            f"  {method}: 2 x bf16 payload {2 * r['bf16_bytes'] / GB:.3f} GB = fp32 payload {r['fp32_bytes'] / GB:.3f} GB; "
            f"bf16 payload alone {r['bf16_bytes'] / GB:.3f} GB"
        )


def main() -> int:
    args = parse_args()
    folder = model_folder(args.model_dir)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    start = time.perf_counter()
    print(f"torch {torch.__version__}, load average {os.getloadavg()[0]:.2f}")
    rows = [summarise(run_method(method, folder, args), args) for method in methods]
    ok = print_measured(rows, args)
    published = published_rows()
    print_published(published)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}; {time.perf_counter() - start:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps({"measured": rows, "published": published}, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
