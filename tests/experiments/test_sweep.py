"""p2d-sweep: resume, ordering, failures, and the paper-format report (offline: a stub replaces
llamafactory-cli and p2d-eval, so nothing trains)."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from p2d_llamafactory.experiments import grid
from p2d_llamafactory.experiments.sweep import build_report, load_runs, main
from p2d_llamafactory.experiments.sweep.paired import paired_rows
from p2d_llamafactory.experiments.sweep.stats import bootstrap_interval


SPEC = Path(__file__).resolve().parents[2] / "yaml_examples" / "grid.yaml"


def _calls(project: Path) -> list[tuple[str, str]]:
    lines = (project / "calls.log").read_text().splitlines()
    return [
        (line.split()[0], Path(line.split()[1]).stem if line.startswith("train") else Path(line.split()[1]).name)
        for line in lines
    ]


def _mini_grid(project: Path, selections=("full_data", "ifd", "p2d"), adaptations=("full", "lora", "p2d_heads")):
    """The repository's spec cut down to the CPU twin, GSM8K and a few cells, generated into runs/."""
    data = yaml.safe_load(SPEC.read_text())
    data["models"] = {"smollm2-cpu": data["models"]["smollm2-cpu"]}
    data["datasets"] = {"gsm8k": data["datasets"]["gsm8k"]}
    twin = data["models"]["smollm2-cpu"]
    twin["datasets"] = {"gsm8k": twin["datasets"]["gsm8k"]}
    twin["seeds"] = twin["seeds"][:1]  # one seed; the tests add the later seeds' runs by hand
    twin["dataset"]["dataset_dir"] = "data_info"  # the toy data set of the `project` fixture
    data["selections"] = {name: data["selections"][name] for name in selections}
    data["adaptations"] = {name: data["adaptations"][name] for name in adaptations}
    data["ratio_ablations"], data["lock_and_key"], data["notes"] = [], [], {}
    data.pop("tuning", None)
    spec = project / "grid.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    assert grid.main(["--spec", str(spec), "--output-dir", "runs"]) == 0
    return project / "runs" / "smollm2-cpu" / "gsm8k"


def _finish(out: Path, score: float | None = 50.0, aer: float | None = 0.5, metric: str = "em", **extra) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if score is not None:
        record = {"metric": metric, "score": score, "num_predictions": 10, **extra}
        (out / "p2d_eval.json").write_text(json.dumps(record))
    if aer is not None:
        (out / "p2d_aer.json").write_text(json.dumps({"aer": aer, "mode": "measured"}))


def _write_run(path: Path, **keys) -> Path:
    config = {
        "model_name_or_path": "models/tiny",
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "dataset": "gsm8k_local",
        "dataset_dir": "data_info",
        "eval_dataset": "gsm8k_local_test",
        "do_predict": True,
        "predict_with_generate": True,
        "output_dir": f"saves/tiny/gsm8k/{path.stem}",
        **keys,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_resume_skips_finished_runs_and_orders_dependencies(project, capfd):
    runs = _mini_grid(project)
    saves = project / "saves" / "smollm2-cpu" / "gsm8k"
    _finish(saves / "ifd__lora")
    _finish(saves / "ifd__full")

    assert main([str(runs), "--report-dir", "report"]) == 0
    calls = _calls(project)
    trained = [name for mode, name in calls if mode == "train"]
    assert sorted(trained) == sorted(
        [
            "full_data__full",
            "full_data__lora",
            "full_data__p2d_heads",
            "ifd__p2d_heads",
            "p2d__full",
            "p2d__lora",
            "p2d__p2d_heads",
        ]
    )
    # t_FFT reference first; the P2D heads before the runs that read them
    assert trained[0] == "full_data__full"
    assert trained.index("p2d__p2d_heads") < min(
        trained.index(n) for n in ("p2d__full", "p2d__lora", "ifd__p2d_heads")
    )
    assert [name for mode, name in calls if mode == "eval"] == trained  # each trained run is scored right after
    output = capfd.readouterr().out
    assert "stub: training p2d__lora" in output and "stub: scored p2d__lora" in output  # children stream through
    assert "ifd__lora" in output and "finished, skipped" in output
    assert "7 trained" in output and "2 already finished" in output
    assert "FORCE_TORCHRUN=1" not in (project / "calls.log").read_text()  # the CPU twin has no DeepSpeed

    # the reference run writes no p2d_aer.json (plain full fine-tuning): AER 1 by definition, and finished
    assert not (saves / "full_data__full" / "p2d_aer.json").exists()
    (project / "calls.log").write_text("")
    assert main([str(runs), "--report-dir", "report"]) == 0
    assert _calls(project) == []
    assert "| + full parameters | 100% | 100% | 50.00 | 1.00 |" in (project / "report" / "results.md").read_text()


def test_evaluate_only_when_predictions_exist(project):
    path = _write_run(project / "runs" / "lora_run.yaml", finetuning_type="lora", p2d_data_selection="random")
    out = project / "saves" / "tiny" / "gsm8k" / "lora_run"
    _finish(out, score=None)
    (out / "generated_predictions.jsonl").write_text("{}\n")
    assert main([str(path), "--report-dir", "report"]) == 0
    assert _calls(project) == [("eval", "lora_run")]
    assert (out / "p2d_eval.json").is_file()


def test_default_report_dir_is_not_a_committed_folder(project):
    """Without --report-dir the report goes under saves/ (ignored by git), so a sweep of one cell cannot replace
    the committed docs/results report with a one-cell report."""
    runs = _mini_grid(project, selections=("full_data", "p2d"), adaptations=("full", "p2d_heads"))
    assert main([str(runs), "--collect-only"]) == 0
    assert (project / "saves" / "p2d_sweep_report" / "results.md").is_file()
    assert not (project / "docs").exists()


def test_dry_run_and_collect_only_launch_nothing(project, capsys):
    runs = _mini_grid(project, selections=("full_data", "p2d"), adaptations=("full", "p2d_heads"))
    _finish(project / "saves" / "smollm2-cpu" / "gsm8k" / "full_data__p2d_heads")

    assert main([str(runs), "--dry-run", "--report-dir", "report"]) == 0
    output = capsys.readouterr().out
    assert "full_data__p2d_heads" in output and "finished, skipped" in output
    assert "would train and evaluate" in output and "train " + str(runs / "p2d__full.yaml") in output
    assert "dry run: 1 finished, 3 to run, 0 blocked, of 4." in output
    assert _calls(project) == [] and not (project / "report").exists()

    assert main([str(runs), "--collect-only", "--report-dir", "report"]) == 0
    assert _calls(project) == []
    assert {p.name for p in (project / "report").iterdir()} == {
        "results.md",
        "results.csv",
        "aer_vs_perf.png",
        "stability.md",
    }


def test_failure_stops_the_sweep_and_names_the_run(project, monkeypatch, capfd):
    runs = _mini_grid(project, selections=("full_data", "p2d"), adaptations=("full", "p2d_heads"))
    monkeypatch.setenv("STUB_FAIL", "p2d__p2d_heads")
    assert main([str(runs), "--report-dir", "report"]) == 1
    err = capfd.readouterr().err
    assert f"run {runs / 'p2d__p2d_heads.yaml'} failed: llamafactory-cli train exited with 3" in err
    trained = [name for mode, name in _calls(project) if mode == "train"]
    assert trained[-1] == "p2d__p2d_heads" and "p2d__full" not in trained
    assert (project / "report" / "results.md").is_file()  # what finished is still reported

    (project / "calls.log").write_text("")
    assert main([str(runs), "--keep-going", "--report-dir", "report"]) == 1
    output = capfd.readouterr()
    trained = [name for mode, name in _calls(project) if mode == "train"]
    assert trained == ["p2d__p2d_heads"]  # the finished runs are skipped; p2d__full needs the failed heads
    assert "p2d__full" in output.out and "skipped: needs saves/smollm2-cpu/gsm8k/p2d__p2d_heads" in output.out


def test_runs_that_cannot_start_are_named(project, capsys):
    heads = _write_run(
        project / "runs" / "needs_heads.yaml",
        p2d_data_selection="p2d",
        p2d_heads_file="saves/elsewhere/p2d_heads.json",
    )
    assert main([str(heads), "--report-dir", "report"]) == 1
    assert "p2d_heads_file saves/elsewhere/p2d_heads.json does not exist and no run of this sweep writes it" in (
        capsys.readouterr().err
    )
    unregistered = _write_run(project / "runs" / "hub.yaml", eval_dataset="gsm8k_test")
    assert main([str(unregistered), "--report-dir", "report"]) == 1
    assert "eval_dataset 'gsm8k_test' is not registered in data_info/dataset_info.json" in capsys.readouterr().err
    assert _calls(project) == []


def test_deepspeed_runs_get_torchrun(project):
    path = _write_run(project / "runs" / "ds.yaml", deepspeed="ds_z2_config.json")
    assert main([str(path), "--report-dir", "report"]) == 0
    assert "FORCE_TORCHRUN=1" in (project / "calls.log").read_text()


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        (
            {"p2d_data_selection": "less"},
            "unknown p2d_data_selection 'less'; allowed: none, ifd, nuggets, data_whisperer, random, p2d",
        ),
        (
            {"finetuning_type": "freeze"},
            "finetuning_type 'freeze' is not in the paper's tables; allowed: full, p2d_heads, lora",
        ),
        (
            {"finetuning_type": "p2d_heads", "p2d_head_selection": "magnitude"},
            "unknown p2d_head_selection 'magnitude'; allowed: w1, random, cosine, gradient",
        ),
    ],
)
def test_unknown_method_names_fail_before_anything_runs(project, capsys, keys, message):
    good = _write_run(project / "runs" / "a_good.yaml")
    bad = _write_run(project / "runs" / "b_bad.yaml", **keys)
    assert main([str(project / "runs"), "--report-dir", "report"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and message in err
    assert _calls(project) == [] and good.is_file() and not (project / "report").exists()


def test_bad_paths(project, capsys):
    assert main(["nowhere.yaml"]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["runs/*.yaml"]) == 2
    assert "matches no file" in capsys.readouterr().err
    (project / "spec.yaml").write_text("models: {}\n")
    assert main(["spec.yaml"]) == 2
    assert "not a LLaMA-Factory training YAML" in capsys.readouterr().err


def test_report_tables_and_figure(project):
    runs = _mini_grid(
        project, selections=("full_data", "ifd", "p2d"), adaptations=("full", "random_heads", "lora", "p2d_heads")
    )
    extra = project / "runs" / "smollm2-cpu" / "gsm8k"
    _write_run(  # a second seed of p2d__p2d_heads: mean ± std with the first
        extra / "p2d__p2d_heads__s4343.yaml",
        finetuning_type="p2d_heads",
        p2d_data_selection="p2d",
        p2d_data_ratio=0.1,
        p2d_head_ratio=0.1,
        seed=4343,
        output_dir="saves/smollm2-cpu/gsm8k/p2d__p2d_heads__s4343",
    )
    _write_run(  # a second seed of ifd__p2d_heads that has not finished: listed, never averaged in
        extra / "ifd__p2d_heads__s4343.yaml",
        finetuning_type="p2d_heads",
        p2d_data_selection="ifd",
        p2d_data_ratio=0.1,
        p2d_head_ratio=0.1,
        seed=4343,
        output_dir="saves/smollm2-cpu/gsm8k/ifd__p2d_heads__s4343",
    )
    _write_run(  # LoFiT on P2D's data: its row at its head budget, like the head adaptations
        extra / "p2d__lofit.yaml",
        finetuning_type="lofit",
        p2d_data_selection="p2d",
        p2d_data_ratio=0.1,
        p2d_head_ratio=0.1,
        output_dir="saves/smollm2-cpu/gsm8k/p2d__lofit",
    )
    _write_run(  # Table 3: rho_D 0.3
        extra / "p2d__p2d_heads__rhoD0.3.yaml",
        finetuning_type="p2d_heads",
        p2d_data_selection="p2d",
        p2d_data_ratio=0.3,
        output_dir="saves/smollm2-cpu/gsm8k/p2d__p2d_heads__rhoD0.3",
    )
    saves = project / "saves" / "smollm2-cpu" / "gsm8k"
    _finish(saves / "full_data__full", score=81.55, aer=None)
    (saves / "full_data__full" / "train_results.json").write_text(json.dumps({"train_runtime": 1000.0}))
    _finish(saves / "p2d__p2d_heads", score=80.0, aer=0.30)
    _finish(saves / "p2d__p2d_heads__s4343", score=90.0, aer=0.40)
    _finish(saves / "p2d__random_heads", score=67.13, aer=0.27, format_adoption=92.0)
    _finish(saves / "ifd__p2d_heads", score=71.42, aer=0.80)
    _finish(saves / "ifd__lora", score=None, aer=0.87)  # AER known, no predictions scored yet
    _finish(saves / "p2d__p2d_heads__rhoD0.3", score=82.2, aer=0.4)
    _finish(saves / "p2d__lofit", score=77.5, aer=0.33)

    assert main([str(runs), "--collect-only", "--report-dir", "report"]) == 0
    md = (project / "report" / "results.md").read_text()
    assert "## smollm2-cpu" in md and "GSM8K (EM) Perf. | GSM8K (EM) AER | Avg. Perf." in md
    blocks = [line for line in md.splitlines() if line.startswith("| **")]
    assert [b.split("**")[1] for b in blocks[:6]] == [
        "Full (full dataset)",
        "IFD",
        "Nuggets",
        "Data Whisperer",
        "Random",
        "P2D (Ours)",
    ]
    assert "| + full parameters | 100% | 100% | 81.55 | 1.00 | 81.55 |" in md  # one seed: the value alone
    # two seeds: mean ± sample std (n - 1): std(80, 90) = 7.07, std(0.30, 0.40) = 0.07
    assert "| + P2D | 10% | 10% | 85.00 ± 7.07 | 0.35 ± 0.07 | 85.00 |" in md
    assert "| + random | 10% | 10% | 67.13 [fmt 92%] | 0.27 | 67.13 |" in md  # GSM8K's format adoption
    assert "| + LoRA | 10% | r=128 | – | 0.87 | – |" in md
    assert "| + LoFiT | 10% | 10% | 77.50 | 0.33 | 77.50 |" in md
    # one of the two seeds finished: its value, marked n=1; the other seed is listed, not averaged as zero
    assert "| + P2D | 10% | 10% | 71.42 (n=1) | 0.80 (n=1) | 71.42 |" in md
    assert "| + full parameters | 10% | 100% | – | – | – |" in md  # missing cells
    # Table 3 (rho_D), Table 4 (rho_P), Table 21 (lock and key)
    assert "| 30% | 82.20 | 0.40 |" in md and "| 100% (full dataset) | – | – |" in md
    assert "| 100% (full parameters) | – | – |" in md and "| 10% | 85.00 ± 7.07 | 0.35 ± 0.07 |" in md
    assert "| P2D | Random | 67.13 [fmt 92%] |" in md and "| IFD | P2D | 71.42 (n=1) |" in md
    assert "| P2D | P2D | 85.00 ± 7.07 |" in md and "| Nuggets | P2D | – |" in md
    missing = md.split("## Missing runs")[1]
    assert f"- `{extra / 'ifd__p2d_heads__s4343.yaml'}` (seed 4343): no generated_predictions.jsonl" in missing
    assert "saves/smollm2-cpu/gsm8k/ifd__p2d_heads__s4343" in missing
    assert "ifd__p2d_heads.yaml`" not in missing and "p2d__p2d_heads__s4343" not in missing  # those finished
    assert "## Stability across seeds (Table 8)" in md

    with open(project / "report" / "results.csv", newline="") as f:
        rows = list(csv.reader(f))
    per_dataset = ["perf_mean", "perf_std", "aer_mean", "aer_std", "n_seeds", "per_seed"]
    assert rows[0] == ["model", "block", "method", "rho_D", "rho_P"] + [f"gsm8k_{k}" for k in per_dataset] + [
        "avg_perf"
    ]
    p2d = ["smollm2-cpu", "P2D (Ours)", "+ P2D", "10%", "10%"]
    assert p2d + ["85.0000", "7.0711", "0.3500", "0.0707", "2", "4242:80.0000;4343:90.0000", "85.0000"] in rows
    ifd = ["smollm2-cpu", "IFD", "+ P2D", "10%", "10%"]
    assert ifd + ["71.4200", "–", "0.8000", "–", "1", "4242:71.4200", "71.4200"] in rows
    assert ["smollm2-cpu", "Data Whisperer", "+ LoRA", "10%", "–", "–", "–", "–", "–", "0", "", "–"] in rows
    assert len(rows) == 1 + 6 * 5  # 6 selection blocks x Table 1's adaptations (LoFiT's rows empty here)

    png = (project / "report" / "aer_vs_perf.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    # Fig. 1's points carry the stds: error bars where a cell has two or more seeds
    _, _, figure = build_report(load_runs([str(runs)])[0], 0.1, 0.1)
    points = {(p[0], p[1]): p for p in figure["points"][("smollm2-cpu", "gsm8k")]}
    aer, perf, aer_std, perf_std = points[("p2d", "p2d_heads")][2:]
    assert (aer, perf) == pytest.approx((0.35, 85.0)) and (aer_std, perf_std) == pytest.approx((0.0707107, 7.0710678))
    assert points[("ifd", "p2d_heads")][4:] == (None, None)


def test_offline_tools_do_not_import_torch():
    code = (
        "import sys\n"
        "import p2d_llamafactory.experiments.evaluate, p2d_llamafactory.experiments.grid\n"
        "import p2d_llamafactory.experiments.sweep\n"
        "print(sorted(name for name in ('torch', 'llamafactory', 'transformers') if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stderr


def test_stability_across_seeds(project):
    """Mean pairwise Jaccard of the selected heads (own file or p2d_heads_file) and examples, per cell."""
    runs = project / "runs"
    saves = project / "saves" / "tiny" / "gsm8k"
    heads = [[[0, 1], [1, 2], [2, 3]], [[0, 1], [1, 2], [3, 3]], [[0, 1], [1, 2], [2, 3]]]
    examples = [[1, 2, 3, 4], [3, 4, 5, 6], [1, 2, 3, 4]]
    for i, seed in enumerate((4242, 4343, 4444)):
        name = "p2d__p2d_heads" + ("" if i == 0 else f"__s{seed}")
        _write_run(runs / f"{name}.yaml", finetuning_type="p2d_heads", p2d_data_selection="p2d", seed=seed)
        _finish(saves / name)
        (saves / name / "p2d_heads.json").write_text(json.dumps({"method": "w1", "selected": heads[i]}))
        (saves / name / "p2d_data_scores.json").write_text(json.dumps({"selected": examples[i]}))
    for i, seed in enumerate((4242, 4343)):  # LoRA on P2D data: the heads come from the file it reads
        name = "p2d__lora" + ("" if i == 0 else f"__s{seed}")
        heads_file = project / "heads" / f"{seed}.json"
        heads_file.parent.mkdir(exist_ok=True)
        heads_file.write_text(json.dumps({"method": "w1", "selected": heads[i]}))
        _write_run(
            runs / f"{name}.yaml",
            finetuning_type="lora",
            p2d_data_selection="p2d",
            p2d_heads_file=str(heads_file),
            seed=seed,
        )
        _finish(saves / name)
    _write_run(runs / "full.yaml", seed=4242)  # one seed only: no stability row
    _finish(saves / "full", aer=None)
    (saves / "full" / "train_results.json").write_text(json.dumps({"train_runtime": 10.0}))

    assert main([str(runs), "--collect-only", "--report-dir", "report"]) == 0
    stability = (project / "report" / "stability.md").read_text()
    # heads: J(a, b) = 2/4, J(a, c) = 1, J(b, c) = 2/4 -> 0.67; examples: 2/6, 1, 2/6 -> 0.56
    assert "| tiny | GSM8K | P2D (Ours) + P2D | 10% | 10% | 4242, 4343, 4444 | 0.67 | 0.56 |" in stability
    assert "| tiny | GSM8K | P2D (Ours) + LoRA | 10% | r=8 | 4242, 4343 | 0.50 | – |" in stability
    assert "+ full parameters" not in stability
    assert stability.split("\n", 1)[1] in (project / "report" / "results.md").read_text()  # also in results.md


def _interval(low: float, high: float) -> str:
    return f"[{low:+.2f}, {high:+.2f}]".replace("-", "−")


def test_paired_differences_across_seeds(project):
    """Per-seed differences of the issue's questions: paired on common seeds, unpaired seeds listed, the one-seed
    ceiling subtracted from every seed, no row without both cells; the bootstrap interval over test rows of the
    per-row differences averaged over the paired seeds, a dash where a run has no per-row scores."""
    runs = project / "runs"
    saves = project / "saves" / "tiny" / "gsm8k"
    rows_of = {("p2d__p2d_heads", 4242): [0.1, 0.5, 0.3, 0.3]}  # the other runs: every row at the run's score
    cells = {  # name -> (keys, {seed: (score, aer)})
        "p2d__p2d_heads": (
            {"finetuning_type": "p2d_heads", "p2d_data_selection": "p2d"},
            {4242: (30.0, 0.3), 4343: (32.0, 0.5), 4444: (31.0, 0.4)},
        ),
        "p2d__random_heads": (
            {"finetuning_type": "p2d_heads", "p2d_head_selection": "random", "p2d_data_selection": "p2d"},
            {4242: (31.0, 0.2), 4343: (29.0, 0.2), 4444: (28.0, 0.2)},
        ),
        "random__p2d_heads": (  # seed 4444 not run: unpaired
            {"finetuning_type": "p2d_heads", "p2d_data_selection": "random"},
            {4242: (30.5, 0.1), 4343: (31.0, 0.1)},
        ),
        "full_data__full": ({"finetuning_type": "full"}, {4242: (40.0, None), 4343: (None, None)}),
    }
    for name, (keys, seeds) in cells.items():
        for i, (seed, (score, aer)) in enumerate(seeds.items()):
            run = name + ("" if i == 0 else f"__s{seed}")
            _write_run(runs / f"{run}.yaml", seed=seed, **keys)
            rows = rows_of.get((name, seed), [(score or 0) / 100] * 4)
            _finish(saves / run, score=score, aer=aer, **({} if name == "full_data__full" else {"per_example": rows}))
    (saves / "full_data__full" / "train_results.json").write_text(json.dumps({"train_runtime": 10.0}))

    assert main([str(runs), "--collect-only", "--report-dir", "report"]) == 0
    report = (project / "report" / "results.md").read_text()
    section = report.split("## Paired differences across seeds", 1)[1].split("\n## ", 1)[0]
    rows = {line.split(" | ")[2]: line for line in section.splitlines() if line.startswith("| tiny")}
    # W1 - random heads: -1, +3, +3 -> mean 1.67, sample std sqrt(((-2.67)^2 + 2 * 1.33^2) / 2) = 2.31; per row,
    # seed 4242's rows (10, 50, 30, 30) - 31 and +3, +3: averaged over the seeds -5, +8.33, +1.67, +1.67
    low, high = bootstrap_interval([-5.0, 25.0 / 3, 5.0 / 3, 5.0 / 3])
    assert low < -2 < 1.67 < 5 < high  # four rows: the interval is wide
    assert rows["W1 heads − random heads (P2D data)"] == (
        "| tiny | GSM8K | W1 heads − random heads (P2D data) | −1.00 (4242), +3.00 (4343), +3.00 (4444) "
        f"| +1.67 ± 2.31 | {_interval(low, high)} | 2 of 3 | 0.40 / 0.20 |"
    )
    # per row, seed 4242: (10, 50, 30, 30) - 30.5, seed 4343: +1.00 -> averaged -9.75, +10.25, +0.25, +0.25
    low, high = bootstrap_interval([-9.75, 10.25, 0.25, 0.25])
    assert rows["P2D data − random data (P2D heads)"] == (
        "| tiny | GSM8K | P2D data − random data (P2D heads) | −0.50 (4242), +1.00 (4343); unpaired: 4444 "
        f"| +0.25 ± 1.06 | {_interval(low, high)} | 1 of 2 | 0.40 / 0.10 |"
    )
    assert rows["P2D + P2D heads − full data + full fine-tuning"] == (  # the ceiling has no per-row scores
        "| tiny | GSM8K | P2D + P2D heads − full data + full fine-tuning | −10.00 (4242), −8.00 (4343), −9.00 (4444); "
        "against its one run (seed 4242) | −9.00 ± 1.00 | – | 0 of 3 | 0.40 / 1.00 |"
    )
    assert set(rows) == {  # no Data Whisperer, LoRA or full cells on 10%: no row for them
        "W1 heads − random heads (P2D data)",
        "P2D data − random data (P2D heads)",
        "P2D + P2D heads − full data + full fine-tuning",
    }


def test_paired_differences_of_the_lofit_baseline(project):
    """LoFiT's cells answer two questions: P2D's data against random data under LoFiT, and the P2D head slices
    against LoFiT on the same random data."""
    runs = project / "runs"
    cells = {  # name -> (keys, {seed: score})
        "p2d__lofit": ({"finetuning_type": "lofit", "p2d_data_selection": "p2d"}, {4242: 2.0, 4343: 4.0}),
        "random__lofit": ({"finetuning_type": "lofit", "p2d_data_selection": "random"}, {4242: 1.0, 4343: 1.0}),
        "random__p2d_heads": ({"finetuning_type": "p2d_heads", "p2d_data_selection": "random"}, {4242: 3.0}),
    }
    for name, (keys, seeds) in cells.items():
        for i, (seed, score) in enumerate(seeds.items()):
            run = name + ("" if i == 0 else f"__s{seed}")
            _write_run(runs / f"{run}.yaml", seed=seed, **keys)
            _finish(project / "saves" / "tiny" / "gsm8k" / run, score=score, aer=0.1, per_example=[score / 100] * 4)

    assert main([str(runs), "--collect-only", "--report-dir", "report"]) == 0
    report = (project / "report" / "results.md").read_text()
    section = report.split("## Paired differences across seeds", 1)[1].split("\n## ", 1)[0]
    rows = {line.split(" | ")[2]: line for line in section.splitlines() if line.startswith("| tiny")}
    assert "| +1.00 (4242), +3.00 (4343) | +2.00 ± 1.41 |" in rows["P2D data − random data (LoFiT)"]
    assert "| +2.00 (4242); unpaired: 4343 | +2.00 |" in rows["P2D heads − LoFiT (random data)"]
    assert set(rows) == {"P2D data − random data (LoFiT)", "P2D heads − LoFiT (random data)"}


def test_paired_differences_on_format_adoption(project):
    """Exact match gets a second paired table on format adoption: per-seed differences of the adoption, the
    interval from the runs' per-row adoption, a dash where a run's record has no per-row adoption; a ROUGE-L data
    set (no adoption) adds no row to it."""
    runs = project / "runs"
    cells = {  # name -> (keys, {seed: (score, adoption, per-row adoption)})
        "p2d__p2d_heads": (
            {"finetuning_type": "p2d_heads", "p2d_data_selection": "p2d"},
            {4242: (2.0, 75.0, [1, 1, 1, 0]), 4343: (0.0, 50.0, [1, 0, 1, 0])},
        ),
        "p2d__random_heads": (
            {"finetuning_type": "p2d_heads", "p2d_head_selection": "random", "p2d_data_selection": "p2d"},
            {4242: (2.0, 25.0, [0, 0, 1, 0]), 4343: (1.0, 75.0, None)},
        ),
    }
    for name, (keys, seeds) in cells.items():
        for i, (seed, (score, adoption, per_row)) in enumerate(seeds.items()):
            run = name + ("" if i == 0 else f"__s{seed}")
            extra = {"format_adoption": adoption} | ({"per_example_format": per_row} if per_row else {})
            _write_run(runs / f"{run}.yaml", seed=seed, **keys)
            _finish(project / "saves" / "tiny" / "gsm8k" / run, score=score, aer=0.2, **extra)
            dialogsum = {"dataset": "dialogsum_local", "eval_dataset": "dialogsum_local_test"}
            out = f"saves/tiny/dialogsum/{run}"
            _write_run(runs / f"dialogsum_{run}.yaml", seed=seed, output_dir=out, **dialogsum, **keys)
            _finish(project / out, score=score + 20, aer=0.2, metric="rougeL")

    assert main([str(runs), "--collect-only", "--report-dir", "report"]) == 0
    report = (project / "report" / "results.md").read_text()
    scores, adoption = report.split("## Paired differences across seeds", 1)[1].split("### Format adoption", 1)
    adoption = adoption.split("\n## ", 1)[0]
    assert "| tiny | GSM8K | W1 heads − random heads (P2D data) | +0.00 (4242), −1.00 (4343) | −0.50 ± 0.71" in scores
    assert "| tiny | DialogSum | W1 heads − random heads (P2D data) |" in scores
    rows = [line for line in adoption.splitlines() if line.startswith("| tiny")]
    assert rows == [  # seed 4343's random-heads run has no per-row adoption: no interval
        "| tiny | GSM8K | W1 heads − random heads (P2D data) | +50.00 (4242), −25.00 (4343) | +12.50 ± 53.03 | – "
        "| 1 of 2 | 0.20 / 0.20 |"
    ]
    (project / "saves" / "tiny" / "gsm8k" / "p2d__random_heads__s4343" / "p2d_eval.json").write_text(
        json.dumps({"metric": "em", "score": 1.0, "format_adoption": 75.0, "per_example_format": [1, 1, 0, 1]})
    )
    assert main([str(runs), "--collect-only", "--report-dir", "report"]) == 0
    report = (project / "report" / "results.md").read_text()
    row = next(line for line in report.split("### Format adoption", 1)[1].splitlines() if line.startswith("| tiny"))
    # per row: seed 4242 (100, 100, 0, 0), seed 4343 (0, -100, 100, -100), averaged (50, 0, 50, -50)
    low, high = bootstrap_interval([50.0, 0.0, 50.0, -50.0])
    assert f"| +12.50 ± 53.03 | {_interval(low, high)} | 1 of 2 |" in row
    with pytest.raises(ValueError, match="measure must be one of score, format; got 'fmt'"):
        paired_rows({}, ["tiny"], ["gsm8k"], 0.1, 0.1, measure="fmt")


def test_bootstrap_interval_matches_scipy_and_is_paired():
    """The percentile bootstrap of a mean agrees with scipy's (other resamples: within a tenth of the width); the
    resamples depend on the number of rows only, so the interval of a shifted copy is the shifted interval; a
    constant has a point interval; nothing to resample is refused."""
    from scipy.stats import bootstrap

    values = np.random.default_rng(5).random(125) * 100
    low, high = bootstrap_interval(values)
    reference = bootstrap((values,), np.mean, method="percentile", n_resamples=10_000, random_state=1)
    width = high - low
    assert abs(low - reference.confidence_interval.low) < 0.1 * width
    assert abs(high - reference.confidence_interval.high) < 0.1 * width
    assert low < values.mean() < high
    shifted = bootstrap_interval(values + 7.0)
    assert shifted == pytest.approx((low + 7.0, high + 7.0))
    assert bootstrap_interval([3.0] * 10) == (3.0, 3.0)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_interval([])


def _tuning_grid(project: Path, val_rows: int = 40, rates=None) -> Path:
    """The repository's spec cut down to the CPU twin on GSM8K, with its tuning section on GSM8K only."""
    data = yaml.safe_load(SPEC.read_text())
    data["models"] = {"smollm2-cpu": data["models"]["smollm2-cpu"]}
    data["datasets"] = {"gsm8k": data["datasets"]["gsm8k"]}
    twin = data["models"]["smollm2-cpu"]
    twin["datasets"] = {"gsm8k": twin["datasets"]["gsm8k"]}
    twin["seeds"] = twin["seeds"][:1]  # one seed; the tests add the later seeds' runs by hand
    twin["dataset"]["dataset_dir"] = "data_info"
    data["selections"] = {name: data["selections"][name] for name in ("full_data", "random", "p2d")}
    data["adaptations"] = {name: data["adaptations"][name] for name in ("full", "p2d_heads")}
    data["ratio_ablations"], data["lock_and_key"], data["notes"] = [], [], {}
    data["tuning"]["datasets"] = ["gsm8k"]
    data["tuning"]["learning_rates"] = rates or {"p2d_heads": [1.0e-3, 1.0e-2], "full": [1.0e-5, 3.0e-5]}
    spec = project / "grid.yaml"
    spec.write_text(yaml.safe_dump(data, sort_keys=False))
    info = json.loads((project / "data_info" / "dataset_info.json").read_text())
    info["gsm8k_local_val"] = {"file_name": "val.json"}
    (project / "data_info" / "dataset_info.json").write_text(json.dumps(info))
    rows = [{"instruction": f"q{i}", "output": "#### 1"} for i in range(val_rows)]
    (project / "data_info" / "val.json").write_text(json.dumps(rows))
    assert grid.main(["--spec", str(spec), "--output-dir", "runs"]) == 0
    return project / "runs" / "smollm2-cpu" / "gsm8k"


def test_tuning_runs_are_finished_by_their_score_and_get_their_own_report(project, capfd):
    runs = _tuning_grid(project)
    tune = runs / "tune"
    saves = project / "saves" / "smollm2-cpu" / "gsm8k"
    _finish(saves / "tune__full__lr3e-05", score=30.0, aer=None, metric="rougeL")  # a score, no AER: finished
    assert main([str(tune), "--report-dir", "report"]) == 0
    trained = [name for mode, name in _calls(project) if mode == "train"]
    assert sorted(trained) == ["tune__full__lr1e-05", "tune__p2d_heads__lr0.001", "tune__p2d_heads__lr0.01"]
    assert trained.index("tune__p2d_heads__lr0.001") < trained.index("tune__p2d_heads__lr0.01")  # its heads first
    assert "1 already finished" in capfd.readouterr().out
    # a sweep of tuning runs only writes the tuning report
    assert {p.name for p in (project / "report").iterdir()} == {"tuning.md", "tuning.csv", "tuning.png"}

    for name, score in (
        ("tune__full__lr1e-05", 20.0),
        ("tune__full__lr3e-05", 30.0),
        ("tune__p2d_heads__lr0.001", 45.0),
    ):
        (saves / name / "p2d_eval.json").write_text(
            json.dumps({"metric": "rougeL", "score": score, "num_predictions": 40})
        )
    (saves / "tune__p2d_heads__lr0.01" / "p2d_eval.json").unlink()  # not finished (again)
    assert main([str(tune), "--collect-only", "--report-dir", "report"]) == 0
    md = (project / "report" / "tuning.md").read_text()
    assert "## smollm2-cpu · GSM8K" in md and "`gsm8k_local_val`: 40 rows. Metric: ROUGE-L. Data: Random" in md
    assert "| Method | lr 1e-05 | lr 3e-05 | lr 0.001 | lr 0.01 | Best lr |" in md
    assert "| full params | 20.00 | **30.00** |  |  | 3e-05 |" in md
    assert "| P2D heads |  |  | **45.00** | – | 0.001 |" in md
    assert "## Missing runs" in md and "tune__p2d_heads__lr0.01.yaml` (seed 4242): no " in md
    with open(project / "report" / "tuning.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["model", "dataset", "adaptation", "lr", "score", "metric", "val_rows"]
    by_lr = {(row["adaptation"], row["lr"]): row for row in rows}
    assert by_lr[("full", "3e-05")] == {
        "model": "smollm2-cpu",
        "dataset": "gsm8k",
        "adaptation": "full",
        "lr": "3e-05",
        "score": "30.0000",
        "metric": "rougeL",
        "val_rows": "40",  # the score's own prediction count (p2d_eval.json)
    }
    unfinished = by_lr[("p2d_heads", "0.01")]
    assert (unfinished["score"], unfinished["val_rows"]) == ("–", "40")  # rows counted in the split's file
    png = (project / "report" / "tuning.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_tuning_runs_stay_out_of_the_paper_tables(project):
    runs = _tuning_grid(project)
    saves = project / "saves" / "smollm2-cpu" / "gsm8k"
    _finish(saves / "random__full", score=40.0, aer=0.2)
    _finish(saves / "tune__full__lr1e-05", score=99.0, aer=0.1)
    # a hand-written run evaluated on a validation split is a tuning run too, whatever its name
    _write_run(project / "runs" / "mine.yaml", eval_dataset="gsm8k_local_val", output_dir="saves/tiny/gsm8k/mine")
    _finish(project / "saves" / "tiny" / "gsm8k" / "mine", score=77.0, aer=None)
    assert main([str(runs), str(project / "runs" / "mine.yaml"), "--collect-only", "--report-dir", "report"]) == 0
    md = (project / "report" / "results.md").read_text()
    assert "| + full parameters | 10% | 100% | 40.00 | 0.20 | 40.00 |" in md
    assert "99.00" not in md and "77.00" not in md and "## tiny" not in md
    assert "tune__" not in md  # nor among the missing runs
    assert "5 tuning run(s) (validation split) are left out of these tables: see `tuning.md`." in md
    tuning = (project / "report" / "tuning.md").read_text()
    assert "**99.00**" in tuning and "## tiny · GSM8K" in tuning and "**77.00**" in tuning
    assert {"results.md", "results.csv", "aer_vs_perf.png", "stability.md", "tuning.md", "tuning.csv"} <= {
        p.name for p in (project / "report").iterdir()
    }


def test_small_validation_split_is_refused_before_anything_runs(project, capsys):
    runs = _tuning_grid(project, val_rows=10)
    assert main([str(runs / "tune"), "--report-dir", "report"]) == 2
    err = capsys.readouterr().err
    assert "the validation split 'gsm8k_local_val' (data_info/val.json) has 10 rows" in err
    assert "needs at least 32" in err
    assert _calls(project) == [] and not (project / "report").exists()


def test_tuning_on_the_test_split_is_refused(project, capsys):
    runs = _tuning_grid(project)
    path = runs / "tune" / "tune__full__lr1e-05.yaml"
    path.write_text(path.read_text().replace("eval_dataset: gsm8k_local_val", "eval_dataset: gsm8k_local_test"))
    assert main([str(runs / "tune"), "--report-dir", "report"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: a tuning run" in err and "eval_dataset gsm8k_local_test, a test split" in err
    assert _calls(project) == [] and not (project / "report").exists()


def test_results_archive_keeps_records_and_restores_finished_runs(tmp_path):
    """scripts/results_archive.sh: save copies only the records of finished runs (no weights, no predictions),
    tuning runs (tune__*, no AER) included; restore puts them back without overwriting, and the sweep then counts the
    run as finished."""
    import shutil

    (tmp_path / "scripts").mkdir()
    shutil.copy(SPEC.parents[1] / "scripts" / "results_archive.sh", tmp_path / "scripts")
    done, unfinished, tuning = (
        tmp_path / "saves/smollm2-cpu/gsm8k/full_data__full",
        tmp_path / "saves/smollm2-cpu/gsm8k/ifd__lora",
        tmp_path / "saves/smollm2-cpu/gsm8k/tune__full__lr0.0001",
    )
    for run in (done, unfinished, tuning):
        run.mkdir(parents=True)
        (run / "p2d_eval.json").write_text('{"score": 50.0}')
        (run / "model.safetensors").write_text("weights")
        (run / "generated_predictions.jsonl").write_text('{"label": "an answer of the data set"}\n')
    (done / "p2d_aer.json").write_text('{"aer": 1.0}')
    (done / "p2d_timings.json").write_text('{"training_seconds": 12.5}')
    script = ["bash", str(tmp_path / "scripts" / "results_archive.sh")]
    subprocess.run([*script, "save"], check=True, capture_output=True)
    archived = tmp_path / "docs/results/runs/smollm2-cpu/gsm8k"
    assert sorted(p.name for p in (archived / "full_data__full").iterdir()) == [
        "p2d_aer.json",
        "p2d_eval.json",
        "p2d_timings.json",
    ]
    assert not (archived / "ifd__lora").exists()  # no AER record: not finished
    assert sorted(p.name for p in (archived / "tune__full__lr0.0001").iterdir()) == ["p2d_eval.json"]
    shutil.rmtree(tmp_path / "saves")
    (done).mkdir(parents=True)
    (done / "p2d_eval.json").write_text('{"score": 99.0}')  # a newer local record is kept
    subprocess.run([*script, "restore"], check=True, capture_output=True)
    assert json.loads((done / "p2d_eval.json").read_text())["score"] == 99.0
    assert json.loads((done / "p2d_timings.json").read_text())["training_seconds"] == 12.5
    assert not (done / "model.safetensors").exists()
