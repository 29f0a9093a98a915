"""Stages I and II with 1 process against 2 processes sharing them (gloo on this CPU, one thread per process: each
process stands for one device), on SmolLM2-135M-Instruct and the CPU twin's BioInstruct pool.

Each configuration runs stage I (W1, the paper's proxy: ``--fhi-samples`` examples, ``--fhi-steps`` full-batch steps)
and stage II (P2D teacher-forced probing of ``--pool`` examples with the heads stage I found) through the Python API,
which calls the same code as ``llamafactory-cli train``. The configurations run one after another in one invocation;
the script checks that every one finds the same heads and selects the same examples, and prints the wall time of each
stage and the speed-up of 2 processes over 1. ``1 process x 2 threads`` is shown for reference: on a CPU the two
cores can also serve one process's kernels.

    python benchmarks/bench_distributed_stages.py --pool 80 --fhi-samples 16 --fhi-steps 2
"""

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from bench_common import model_folder


CONFIGS = (("1 process x 1 thread", 1, 1), ("2 processes x 1 thread", 2, 1), ("1 process x 2 threads", 1, 2))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--data", default="data_info/cpu/p2d_bioinstruct_train.json", help="an alpaca-format pool")
    parser.add_argument("--pool", type=int, default=80, help="examples probed in stage II (5 per prompt)")
    parser.add_argument("--fhi-samples", type=int, default=16)
    parser.add_argument("--fhi-steps", type=int, default=2)
    parser.add_argument("--micro-batch", type=int, default=4, help="stage I micro-batch (per process)")
    parser.add_argument("--batch-size", type=int, default=4, help="p2d_icl_batch_size")
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--json", default=None, help="also write every number to this file")
    return parser.parse_args()


def run_stages(args: argparse.Namespace) -> dict:
    """Stage I then stage II through the API, timed; every rank runs this together."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from p2d_llamafactory import api

    folder = model_folder(args.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    examples = json.loads(Path(args.data).read_text())[: args.pool]
    common = dict(progress=False, max_length=1024, p2d_seed=args.seed)
    start = time.perf_counter()
    heads = api.identify_heads(
        model,
        tokenizer,
        examples,
        micro_batch_size=args.micro_batch,
        p2d_head_ratio=0.1,
        p2d_fhi_samples=args.fhi_samples,
        p2d_fhi_steps=args.fhi_steps,
        p2d_fhi_lr=1e-4,
        **common,
    )
    middle = time.perf_counter()
    selection = api.select_data(
        model,
        tokenizer,
        examples,
        heads=heads,
        p2d_data_ratio=0.1,
        p2d_icl_scoring="teacher_forced",
        p2d_icl_batch_size=args.batch_size,
        p2d_icl_instruction="biomedical",
        p2d_data_ppl_samples=0,
        **common,
    )
    end = time.perf_counter()
    return {
        "stage_1_seconds": middle - start,
        "stage_2_seconds": end - middle,
        "heads": [list(h) for h in heads.selected],
        "selected": selection.selected,
    }


def worker(rank: int, world: int, threads: int, port: int, args: argparse.Namespace, out: str) -> None:
    torch.set_num_threads(threads)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = run_stages(args)
        if rank == 0:
            Path(out).write_text(json.dumps(result))
    finally:
        if world > 1:
            dist.destroy_process_group()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    args = parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, world, threads in CONFIGS:
            out = str(Path(tmp) / f"{world}x{threads}.json")
            wall = time.perf_counter()
            torch.multiprocessing.start_processes(
                worker, args=(world, threads, _port(), args, out), nprocs=world, start_method="spawn"
            )
            results[name] = {**json.loads(Path(out).read_text()), "wall_seconds": time.perf_counter() - wall}
    reference = results[CONFIGS[0][0]]
    print(f"{args.fhi_samples} FHI examples x {args.fhi_steps} steps; {args.pool} examples probed (teacher-forced)")
    print(f"{'configuration':<26}{'stage I s':>11}{'stage II s':>12}{'I + II s':>10}{'speed-up':>10}  same result")
    for name, r in results.items():
        total = r["stage_1_seconds"] + r["stage_2_seconds"]
        speedup = (reference["stage_1_seconds"] + reference["stage_2_seconds"]) / total
        same = r["heads"] == reference["heads"] and r["selected"] == reference["selected"]
        r.update(total_seconds=total, speedup=speedup, same_result=same)
        print(
            f"{name:<26}{r['stage_1_seconds']:>11.1f}{r['stage_2_seconds']:>12.1f}{total:>10.1f}{speedup:>9.2f}x  {same}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))


if __name__ == "__main__":
    main()
