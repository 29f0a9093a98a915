"""Tight head budgets: head sets of k = round(rho_P x heads) from one scored head set, and one run YAML per
(budget, head set, learning rate), on the tuning protocol (validation split).

From a ``p2d_heads.json`` that holds every head's score (stage I of a run), for each ``--ratios`` budget it writes
``w1`` (the k highest scores), ``bottom_w1`` (the k lowest) and ``random_s<seed>`` (``p2d_head_selection: random``'s
seeded uniform draws) as head files, and, from ``--template`` (a tuning YAML), ``<out>/rho<ratio>/<set>__lr<rate>.yaml``
training that head set (``p2d_heads_file``) at each ``--rates`` rate into ``<out>/rho<ratio>/runs/...``; data, steps and
seed as in the template (``--suffix`` names runs from several templates apart, e.g. the test-split cells' seeds). ``p2d-sweep <yamls>`` trains and scores them (resumable: finished runs are skipped), and
``--collect`` prints the validation ROUGE-L of every finished run. ``--overlap name=p2d_heads.json ...`` prints the
Jaccard index of every pair's top-k heads (``--ks``) from the files' own scores, e.g. a task model's against FHI's.

    python benchmarks/study_head_budget.py --heads docs/results/runs/smollm2-cpu/bioinstruct/p2d__p2d_heads/p2d_heads.json \
        --template yaml_examples/smollm2-cpu/bioinstruct/tune/tune__p2d_heads__lr0.003.yaml \
        --out saves/head_budget/bioinstruct --ratios 0.01,0.03 --rates 0.003,0.01,0.03 --sets w1
    p2d-sweep saves/head_budget/bioinstruct/rho0.01/w1__lr*.yaml --report-dir saves/head_budget/report
    python benchmarks/study_head_budget.py --out saves/head_budget/bioinstruct --collect
    python benchmarks/study_head_budget.py --ks 3,8,27 \
        --overlap task_model=saves/head_budget/bioinstruct/rho0.01/runs/task_model__lr0.01/p2d_heads.json \
        w1=docs/results/runs/smollm2-cpu/bioinstruct/p2d__p2d_heads/p2d_heads.json
"""

import argparse
import json
import re
from pathlib import Path

import torch

from p2d_llamafactory.experiments.sweep.stability import jaccard
from p2d_llamafactory.heads.headset import HeadSet
from p2d_llamafactory.heads.layout import AttentionLayout
from p2d_llamafactory.heads.scoring import random_scores, select_top
from p2d_llamafactory.hparams import count_for_ratio


def _in_top_layers(scores: torch.Tensor, top_layers: int) -> torch.Tensor:
    """``scores`` with every head below the last ``top_layers`` layers pushed under the lowest score: their top k is
    the top k of those layers (the file's own scores then agree with its selection)."""
    masked = scores.clone()
    masked[: scores.shape[0] - top_layers] = scores.min() - 1.0
    return masked


def head_sets(
    source: HeadSet, ratio: float, random_seeds: list[int], label: str = "w1", top_layers: int | None = None
) -> dict[str, HeadSet]:
    scores = torch.tensor(source.scores, dtype=torch.float64)
    layers, heads = scores.shape
    k = count_for_ratio(ratio, layers * heads)
    layout = AttentionLayout(
        tuple(map(str, range(layers))), num_heads=heads, num_kv_heads=heads, head_dim=1, hidden_size=1
    )
    found = {
        label: (scores, source.method),
        f"bottom_{label}": (-scores, source.method),  # scored by the same method; its lowest k
        **{f"random_s{seed}": (random_scores(layout, seed), "random") for seed in random_seeds},
    }
    if top_layers:  # heads chosen for cost: only from the last top_layers layers
        found[f"{label}_top{top_layers}"] = (_in_top_layers(scores, top_layers), source.method)
        for seed in random_seeds:
            found[f"random_top{top_layers}_s{seed}"] = (
                _in_top_layers(random_scores(layout, seed), top_layers),
                "random",
            )
    return {
        name: HeadSet(
            model=source.model,
            shape=source.shape,
            method=method,
            seed=source.seed,
            ratio=ratio,
            scores=values.tolist(),
            selected=select_top(values, k),
        )
        for name, (values, method) in found.items()
    }


def write_yaml(template: str, head_set: HeadSet, heads_file: Path, rate: float, output_dir: Path, path: Path) -> None:
    text = re.sub(r"(?m)^p2d_heads_file: .*$", f"p2d_heads_file: {heads_file}", template)
    text = re.sub(r"(?m)^p2d_head_ratio: .*$", f"p2d_head_ratio: {head_set.ratio}", text)
    text = re.sub(r"(?m)^learning_rate: .*$", f"learning_rate: {rate}", text)
    text = re.sub(r"(?m)^output_dir: .*$", f"output_dir: {output_dir}", text)
    path.write_text(text, encoding="utf-8")


def collect(out: Path) -> None:
    rows = []
    for record in sorted(out.glob("rho*/runs/*/p2d_eval.json")):
        run = record.parent
        score = json.loads(record.read_text())["score"]
        rows.append((run.parent.parent.name, run.name, score))
    print(f"{'budget':<10} {'run':<28} {'ROUGE-L':>8}")
    for budget, name, score in rows:
        print(f"{budget:<10} {name:<28} {score:>8.2f}")


def top_k_overlaps(sources: dict[str, HeadSet], ks: list[int]) -> list[tuple[int, str, str, float]]:
    """(k, a, b, Jaccard of the top-k heads of a and b by their own scores) for every pair and every k."""
    tops = {
        name: {k: frozenset(select_top(torch.tensor(head_set.scores, dtype=torch.float64), k)) for k in ks}
        for name, head_set in sources.items()
    }
    names = list(sources)
    return [
        (k, a, b, jaccard(tops[a][k], tops[b][k])) for k in ks for i, a in enumerate(names) for b in names[i + 1 :]
    ]


def overlap(specs: list[str], ks: list[int]) -> None:
    sources = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--overlap takes name=p2d_heads.json entries; got {spec!r}.")
        sources[name] = HeadSet.load(path)
    print(f"{'k':>4} {'a':<20} {'b':<20} {'Jaccard':>8}")
    for k, a, b, value in top_k_overlaps(sources, ks):
        print(f"{k:>4} {a:<20} {b:<20} {value:>8.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", help="a p2d_heads.json with every head's score")
    parser.add_argument("--template", help="the tuning YAML the runs start from")
    parser.add_argument("--out")
    parser.add_argument("--ratios", default="0.01,0.03")
    parser.add_argument("--rates", default="0.003,0.01,0.03")
    parser.add_argument("--sets", default="w1,bottom_w1,random_s4242,random_s1,random_s2")
    parser.add_argument("--random-seeds", default="4242,1,2")
    parser.add_argument("--label", default="w1", help="name of the top-k set (and of bottom_<label>), e.g. gradient")
    parser.add_argument(
        "--suffix", default="", help="appended to each run's name, e.g. __test_s4343 for a test-split cell"
    )
    parser.add_argument(
        "--top-layers",
        type=int,
        default=None,
        help="also <label>_top<N> and random_top<N>_s<seed>: heads from the last N layers",
    )
    parser.add_argument("--collect", action="store_true")
    parser.add_argument("--overlap", nargs="+", metavar="NAME=HEADS_JSON", help="Jaccard of the files' top-k heads")
    parser.add_argument("--ks", default="3,8,27", help="the k of --overlap")
    args = parser.parse_args()
    if args.overlap:
        overlap(args.overlap, [int(k) for k in args.ks.split(",")])
        return
    if args.out is None:
        parser.error("--out is required, except with --overlap")
    out = Path(args.out)
    if args.collect:
        collect(out)
        return
    source = HeadSet.load(args.heads)
    template = Path(args.template).read_text(encoding="utf-8")
    wanted = args.sets.split(",")
    seeds = [int(seed) for seed in args.random_seeds.split(",")]
    for ratio in [float(r) for r in args.ratios.split(",")]:
        folder = out / f"rho{ratio:g}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, head_set in head_sets(source, ratio, seeds, args.label, args.top_layers).items():
            heads_file = head_set.save(folder / f"{name}.json")
            if name not in wanted:
                continue
            for rate in args.rates.split(","):
                run = f"{name}__lr{rate}{args.suffix}"
                write_yaml(template, head_set, heads_file, float(rate), folder / "runs" / run, folder / f"{run}.yaml")
            print(f"rho_P {ratio:g}: {name} = {head_set.selected}")


if __name__ == "__main__":
    main()
