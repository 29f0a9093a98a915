"""Why do W1 heads not beat random heads on SmolLM2? Head scores of one FHI proxy under several temperatures.

Trains one FHI proxy as stage I does (``p2d_fhi_samples`` examples of a CPU-twin pool, ``p2d_fhi_steps``
full-batch AdamW steps at ``p2d_fhi_lr``), then scores every head of base vs proxy with

- W1 at absolute temperatures (the paper's tau = 0.1, and hotter ones),
- W1 at a per-head temperature tau_h = c * std(W_comp_h of the base model) ("std-scaled": the softmax then sees
  z-scores, whatever the magnitude of the head's weights),
- the temperature-free relative change ||W_comp(proxy) - W_comp(base)||_F / ||W_comp(base)||_F.

It prints, per variant, how peaked the base distributions are (effective support exp(H(P)) as a share of
the d_model * d_head entries), the top-k overlap (Jaccard) with tau = 0.1 and with the run's own head set, the
expected Jaccard of two random head sets, and the Spearman correlation of all scores; and writes one
``p2d_heads.json`` per variant (plus ``bottom_w1``: the k lowest-scored heads at tau = 0.1) for training runs
to read through ``p2d_heads_file``, and ``random_s<seed>`` head sets (the seeded uniform draws of
``p2d_head_selection: random``) to measure how much two random choices differ.

With ``--template`` (a tuning YAML), writes ``<out>/<variant>.yaml``: the template training that variant's heads
(``p2d_heads_file``), into ``<out>/runs/<variant>``; data, rate and seed as in the template. ``--collect`` prints
the validation scores of the finished runs (their ``p2d_eval.json``).

    cd benchmarks && python study_head_choice.py --dataset bioinstruct --out ../saves/head_choice/bioinstruct \
        --run-heads ../saves/smollm2-cpu/bioinstruct/tune__p2d_heads__lr0.001/p2d_heads.json \
        --model-dir ../models/SmolLM2-135M-Instruct --data-dir ../data_info/cpu \
        --template ../yaml_examples/smollm2-cpu/bioinstruct/tune/tune__p2d_heads__lr0.003.yaml
    cd .. && for y in saves/head_choice/bioinstruct/*.yaml; do llamafactory-cli train $y && \
        p2d-eval saves/head_choice/bioinstruct/runs/$(basename $y .yaml); done
    cd benchmarks && python study_head_choice.py --out ../saves/head_choice/bioinstruct --collect
"""

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch
from bench_common import load_model, load_tokenizer, model_folder, tokenize_example
from scipy.stats import spearmanr

from p2d_llamafactory.experiments.sweep.stats import bootstrap_interval
from p2d_llamafactory.heads.headset import HeadSet
from p2d_llamafactory.heads.layout import AttentionLayout, find_attention_layout, projection_weights
from p2d_llamafactory.heads.proxy import make_batches, train_proxy
from p2d_llamafactory.heads.scoring import composite_flat, random_scores, select_top, w1_distance
from p2d_llamafactory.hparams import count_for_ratio
from p2d_llamafactory.pipeline import collator


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", default="bioinstruct", help="CPU-twin pool: data_info/cpu/p2d_<dataset>_train.json"
    )
    parser.add_argument("--data-dir", default="data_info/cpu")
    parser.add_argument("--model-dir", default=None)
    parser.add_argument("--out", required=True, help="folder for the per-variant head sets and study.json")
    parser.add_argument("--run-heads", default=None, help="the tuning run's p2d_heads.json, to compare with")
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument(
        "--trainable", default="all", choices=("all", "attention"), help="the proxy's p2d_fhi_trainable"
    )
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--taus", default="0.1,1,10,100", help="absolute temperatures")
    parser.add_argument("--std-scales", default="1,0.1", help="c of the per-head temperature c * std(W_comp_h)")
    parser.add_argument("--random-seeds", default="1,2", help="seeds of extra random head sets")
    parser.add_argument("--template", default=None, help="tuning YAML to write one run YAML per variant from")
    parser.add_argument("--collect", action="store_true", help="only print the scores of the finished runs")
    parser.add_argument("--extra", action="append", default=[], help="with --collect: name=run_dir, another run")
    parser.add_argument("--reference", default=None, help="with --collect: the run the differences are taken to")
    return parser.parse_args()


def fhi_batches(tokenizer, rows: list[dict], samples: int, seed: int, micro: int = 4) -> list[dict[str, torch.Tensor]]:
    """A seeded sample of the pool, chat-formatted (labels only on the answers), in stage I's micro-batches."""
    chosen = sorted(random.Random(seed).sample(range(len(rows)), min(samples, len(rows))))
    examples = []
    for i in chosen:
        question = "\n".join(part for part in (rows[i]["instruction"], rows[i].get("input", "")) if part)
        ids, labels = tokenize_example(tokenizer, question, rows[i]["output"])
        examples.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return make_batches(examples, collator(tokenizer), micro, "cpu")


def composites(model, layout: AttentionLayout) -> list[torch.Tensor]:
    out = []
    for layer in range(layout.num_layers):
        w = projection_weights(model, layout, layer)
        out.append(composite_flat(w["q"], w["k"], w["v"], layout))
    return out


def w1_scores(base: list[torch.Tensor], proxy: list[torch.Tensor], tau) -> tuple[np.ndarray, float]:
    """W1 per head at temperature ``tau`` (a number, or per layer a (heads, 1) tensor); and the mean effective
    support exp(H(P_base)) as a share of the entries."""
    scores, support = [], []
    for layer, (b, p) in enumerate(zip(base, proxy)):
        t = tau[layer] if isinstance(tau, list) else tau
        pb, pp = torch.softmax(b / t, dim=-1), torch.softmax(p / t, dim=-1)  # float64, as in stage I
        scores.append(w1_distance(pb, pp).numpy())
        entropy = -(pb * torch.log(pb.clamp_min(1e-300))).sum(-1)
        support.append((torch.exp(entropy) / pb.shape[-1]).numpy())
    return np.stack(scores), float(np.mean(support))


def jaccard(a: list, b: list) -> float:
    a, b = set(map(tuple, a)), set(map(tuple, b))
    return len(a & b) / len(a | b)


def collect(out: Path, extra: list[str], reference: str | None) -> None:
    """Validation score of each finished variant run (and of ``extra`` name=run_dir runs): the mean per-example
    score with a 95% bootstrap interval, and the paired bootstrap interval of its difference to ``reference``."""
    study = out / "study.json"  # absent when only ``extra`` runs are compared
    report = json.loads(study.read_text()) if study.is_file() else {"variants": {}}
    runs = {name: out / "runs" / name for name in report["variants"]}
    runs.update({name: Path(path) for name, path in (item.split("=", 1) for item in extra)})
    scores = {}
    for name, run in runs.items():
        result = run / "p2d_eval.json"
        if result.is_file():
            scores[name] = np.array(json.loads(result.read_text())["per_example"]) * 100
    base = scores.get(reference) if reference else None
    print(f"{'run':18} {'J(tau=0.1)':>10} {'score':>7} {'95% CI':>15}  {'minus ' + str(reference):>24}")
    for name, values in scores.items():  # the same resamples of the rows for every run: paired differences
        low, high = bootstrap_interval(values)
        jac = report["variants"].get(name, {}).get("jaccard_tau0.1", float("nan"))
        diff = ""
        if base is not None and name != reference:
            d = values - base
            dl, dh = bootstrap_interval(d)
            diff = f"{d.mean():+6.2f} [{dl:+6.2f}, {dh:+6.2f}]"
        print(f"{name:18} {jac:10.3f} {values.mean():7.2f} [{low:6.2f}, {high:6.2f}]  {diff:>24}")


def write_yamls(out: Path, template: Path, variants: list[str]) -> None:
    import yaml

    config = yaml.safe_load(template.read_text())
    for name in variants:
        heads, run_dir = (out / name / "p2d_heads.json").resolve(), (out / "runs" / name).resolve()
        run = {**config, "p2d_heads_file": str(heads), "output_dir": str(run_dir)}
        run.pop("p2d_head_selection", None)
        (out / f"{name}.yaml").write_text(yaml.safe_dump(run, sort_keys=False))


def main() -> None:
    args = parse_args()
    if args.collect:
        return collect(Path(args.out), args.extra, args.reference)
    torch.manual_seed(args.seed)
    folder = model_folder(args.model_dir)
    tokenizer, base = load_tokenizer(folder), load_model(folder).eval()
    layout = find_attention_layout(base)
    k = count_for_ratio(args.ratio, layout.total_heads)
    rows = json.loads((Path(args.data_dir) / f"p2d_{args.dataset}_train.json").read_text())
    batches = fhi_batches(tokenizer, rows, args.samples, args.seed)
    proxy, losses = train_proxy(base, batches, args.steps, args.lr, trainable=args.trainable, layout=layout)
    print(f"proxy loss per step: {', '.join(f'{x:.3f}' for x in losses)}")
    with torch.no_grad():
        comp_b, comp_p = composites(base, layout), composites(proxy, layout)
    variants: dict[str, np.ndarray] = {}
    support: dict[str, float] = {}
    for tau in (float(t) for t in args.taus.split(",")):
        variants[f"w1_tau{tau:g}"], support[f"w1_tau{tau:g}"] = w1_scores(comp_b, comp_p, tau)
    for c in (float(x) for x in args.std_scales.split(",") if x):
        per_head = [c * b.std(dim=-1, keepdim=True) for b in comp_b]
        variants[f"w1_std{c:g}"], support[f"w1_std{c:g}"] = w1_scores(comp_b, comp_p, per_head)
    variants["rel_frobenius"] = np.stack(
        [((p - b).norm(dim=-1) / b.norm(dim=-1)).numpy() for b, p in zip(comp_b, comp_p)]
    )
    reference = select_top(torch.from_numpy(variants["w1_tau0.1"]), k)
    run_heads = HeadSet.load(args.run_heads).selected if args.run_heads else None
    n = layout.total_heads
    expected_random = sum(  # E[Jaccard] of two independent uniform k-subsets of n heads
        (i / (2 * k - i)) * _hypergeom(i, n, k) for i in range(k + 1)
    )
    out = Path(args.out)
    report = {
        "k": k,
        "total_heads": n,
        "proxy_loss": losses,
        "expected_random_jaccard": expected_random,
        "variants": {},
    }
    print(f"\n{k} of {n} heads; two random head sets share Jaccard {expected_random:.3f} on average")
    print(f"{'variant':16} {'support':>9} {'J(tau=0.1)':>10} {'J(run)':>7} {'rho(tau=0.1)':>12}  top-3 layers")
    for name, scores in variants.items():
        top = select_top(torch.from_numpy(scores), k)
        rho = float(spearmanr(scores.ravel(), variants["w1_tau0.1"].ravel()).statistic)
        j_run = jaccard(top, run_heads) if run_heads else float("nan")
        layers = np.bincount([layer for layer, _ in top], minlength=layout.num_layers)
        busiest = ", ".join(f"{i}:{layers[i]}" for i in np.argsort(-layers)[:3])
        sup = support.get(name, float("nan"))
        print(f"{name:16} {sup:9.2e} {jaccard(top, reference):10.3f} {j_run:7.3f} {rho:12.3f}  {busiest}")
        report["variants"][name] = {
            "support": sup,
            "jaccard_tau0.1": jaccard(top, reference),
            "jaccard_run": j_run,
            "spearman_tau0.1": rho,
            "selected": top,
        }
        _save(out / name, layout, scores, top, name, args)
    extra = {"bottom_w1": -variants["w1_tau0.1"]}
    for seed in (int(x) for x in args.random_seeds.split(",") if x):
        extra[f"random_s{seed}"] = random_scores(layout, seed).numpy()
    for name, scores in extra.items():
        top = select_top(torch.from_numpy(scores), k)
        _save(out / name, layout, scores, top, name, args)
        report["variants"][name] = {"selected": top, "jaccard_tau0.1": jaccard(top, reference)}
    (out / "study.json").write_text(json.dumps(report, indent=1))
    if args.template:
        write_yamls(out, Path(args.template), list(report["variants"]))
    print(f"head sets written under {out}/<variant>/p2d_heads.json")


def _hypergeom(i: int, n: int, k: int) -> float:
    from math import comb

    return comb(k, i) * comb(n - k, k - i) / comb(n, k)


def _save(folder: Path, layout: AttentionLayout, scores: np.ndarray, top, name: str, args) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    settings = {
        "study": name,
        "dataset": args.dataset,
        "fhi": [args.samples, args.steps, args.lr, args.trainable],
        "seed": args.seed,
    }
    HeadSet("SmolLM2-135M-Instruct", layout.shape(), "w1", args.seed, args.ratio, scores.tolist(), top, settings).save(
        folder / "p2d_heads.json"
    )


if __name__ == "__main__":
    main()
