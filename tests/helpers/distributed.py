"""Stages I and II on several CPU processes (gloo), in-process: the same scenarios run once per world size, and the
tests compare what each rank got with what one process gets."""

import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq

from p2d_llamafactory.data import probe as probe_module
from p2d_llamafactory.data.select import SelectionInputs, select_examples
from p2d_llamafactory.distributed import all_reduce_sum_, from_rank0, map_sharded, rank, world_size
from p2d_llamafactory.heads.headset import HeadSet
from p2d_llamafactory.heads.identify import FHIInputs, identify_heads
from p2d_llamafactory.heads.layout import find_attention_layout
from p2d_llamafactory.hparams import P2DArguments
from tests.helpers.examples import chatml_frame, probe_examples, tokenized_examples


HEAD_METHODS = {
    "w1": dict(p2d_head_selection="w1"),
    "w1_attention": dict(p2d_head_selection="w1", p2d_fhi_trainable="attention"),
    "gradient": dict(p2d_head_selection="gradient"),
}
SELECTIONS = {
    "p2d": dict(p2d_data_selection="p2d"),
    "data_whisperer": dict(p2d_data_selection="data_whisperer"),
    "ifd": dict(p2d_data_selection="ifd"),
    "nuggets": dict(p2d_data_selection="nuggets", p2d_nuggets_anchors=4, p2d_nuggets_batch_size=3),
    "random": dict(p2d_data_selection="random"),
}


def head_args(method: str) -> P2DArguments:
    return P2DArguments(
        p2d_head_ratio=0.25, p2d_fhi_samples=10, p2d_fhi_steps=2, p2d_fhi_lr=1e-3, p2d_seed=1, **HEAD_METHODS[method]
    )


def selection_args(method: str) -> P2DArguments:
    return P2DArguments(
        p2d_data_ratio=0.25, p2d_icl_scoring="teacher_forced", p2d_icl_batch_size=2, **SELECTIONS[method]
    )


def fhi_inputs(model_dir: Path, output_dir: Path) -> FHIInputs:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return FHIInputs(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
        model_name="tiny-llama",
        examples=tokenized_examples(tokenizer, 12),
        collate=DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding=True, return_tensors="pt"),
        micro_batch_size=2,  # 5 micro-batches of the 10 FHI examples: uneven shares on 2 ranks
        output_dir=str(output_dir),
        progress=False,
    )


def selection_inputs(model_dir: Path, output_dir: Path, num_examples: int = 24) -> SelectionInputs:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    layout = find_attention_layout(model)
    examples = probe_examples(num_examples)
    return SelectionInputs(
        examples=examples,
        token_lengths=[len(tokenizer.encode(e.prompt + e.response)) for e in examples],
        max_length=512,
        tokenizer=tokenizer,
        frame=chatml_frame(tokenizer),
        load_model=lambda: model,
        layout=layout,
        head_set=HeadSet("tiny", layout.shape(), "w1", 0, 0.25, [], [(0, 1), (1, 3), (2, 0)]),
        output_dir=output_dir,
        model_name="tiny",
        data_fingerprint="f" * 16,
        progress=False,
    )


@contextmanager
def patched_probing(die_after: int | None = None) -> Iterator[list[int]]:
    """``Prober.run_batch`` recording the size of every batch this process probes (yielded), and raising
    ``KeyboardInterrupt`` (a kill) once ``die_after`` batches are done; restored on exit."""
    sizes: list[int] = []
    real = probe_module.Prober.run_batch

    def patched(self, plans, examples):
        if die_after is not None and len(sizes) == die_after:
            raise KeyboardInterrupt
        sizes.append(len(plans))
        return real(self, plans, examples)

    probe_module.Prober.run_batch = patched
    try:
        yield sizes
    finally:
        probe_module.Prober.run_batch = real


def selection_record(selection) -> dict[str, Any]:
    return {"selected": selection.selected, "scores": [None if s != s else s for s in selection.scores]}


KILLED_POOL = 40  # 8 probe prompts, 4 batches of 2: two per rank, so each of 2 ranks is killed at its second


def run_scenarios(model_dir: Path, root: Path) -> dict[str, Any]:
    """Stage I with each head method and stage II with each selection method (output dirs ``root/<scenario>``); a
    resume of the p2d checkpoint left in ``root/resume`` beforehand; a p2d run on ``KILLED_POOL`` examples killed at
    each rank's second batch (``root/killed``). Returns what this rank got."""
    got: dict[str, Any] = {"rank": rank(), "world_size": world_size(), "heads": {}, "selection": {}}
    for method in HEAD_METHODS:
        head_set = identify_heads(fhi_inputs(model_dir, root / f"heads_{method}"), head_args(method))
        got["heads"][method] = {"scores": head_set.scores, "selected": [list(h) for h in head_set.selected]}
    for method in SELECTIONS:
        inputs = selection_inputs(model_dir, root / f"select_{method}")
        got["selection"][method] = selection_record(select_examples(inputs, selection_args(method)))
    with patched_probing() as sizes:
        resumed = select_examples(selection_inputs(model_dir, root / "resume"), selection_args("p2d"))
    got["resume"] = {**selection_record(resumed), "probed": sum(sizes)}
    with patched_probing(die_after=1) as sizes:
        try:
            select_examples(selection_inputs(model_dir, root / "killed", KILLED_POOL), selection_args("p2d"))
        except KeyboardInterrupt:
            got["killed"] = sum(sizes)
    return got


def collectives() -> dict[str, Any]:
    """The helpers themselves: bucketed sums of mixed dtypes, a sharded map, rank 0's object."""
    tensors = [torch.full((3,), float(rank() + 1)), torch.arange(70_000, dtype=torch.float64) * (rank() + 1)]
    tensors.append(torch.ones(2, 2, dtype=torch.float32) * (rank() + 1))
    all_reduce_sum_(tensors)
    return {
        "sums": [t.sum().item() for t in tensors],
        "mapped": map_sharded(lambda x: (x * x, rank()), list(range(7))),
        "from_rank0": from_rank0({"rank": rank()}),
    }


def worker(local_rank: int, world: int, port: int, model_dir: str, root: str) -> None:
    """One rank: joins the gloo group, runs the scenarios, writes ``root/rank<r>.json``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=local_rank, world_size=world)
    try:
        got = {**run_scenarios(Path(model_dir), Path(root)), "collectives": collectives()}
        Path(root, f"rank{local_rank}.json").write_text(json.dumps(got))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(world: int, model_dir: Path, root: Path) -> list[dict[str, Any]]:
    """Run :func:`worker` on ``world`` spawned processes; returns each rank's result."""
    torch.multiprocessing.start_processes(
        worker, args=(world, free_port(), str(model_dir), str(root)), nprocs=world, start_method="spawn"
    )
    return [json.loads((root / f"rank{r}.json").read_text()) for r in range(world)]
