"""``p2d-sweep``: run a grid of LLaMA-Factory YAMLs where they are not finished, then write the paper's tables.

For every run YAML (files, folders searched recursively, or globs), in an order where a run that another one
reads (its ``p2d_heads_file`` or ``p2d_aer_reference``) comes first:

* finished (``p2d_eval.json`` and ``p2d_aer.json`` in its ``output_dir``): skipped;
* trained, with predictions (``generated_predictions.jsonl``) but no ``p2d_eval.json``: ``p2d-eval <output_dir>``;
* otherwise: ``llamafactory-cli train <yaml>``, then ``p2d-eval <output_dir>``.

The children run in the current environment (``FORCE_TORCHRUN=1`` is added for DeepSpeed runs that do not set
it) and their output streams through. A failing run stops the sweep, named, unless ``--keep-going``; runs that
need a failed run are then skipped. The full fine-tuning run on the full data is its own t_FFT: when it has no
``p2d_aer.json`` (the plugin's timing callback only joins runs that use a P2D feature), its AER is 1 by
definition, once its ``train_results.json`` exists.

The results, averaged over the runs of a cell (seeds), go to ``--report-dir``: ``results.md`` (Tables 1-2 per
model, and Tables 3, 4 and 21 where the grid has them), ``results.csv`` (the Table 1-2 rows) and
``aer_vs_perf.png`` (Fig. 1). Every row's method comes from the YAML's keys (``p2d_data_selection``,
``finetuning_type``, ``p2d_head_selection``); unknown names fail before anything runs. The commands can be
replaced (tests, wrappers) with ``--llamafactory-cli`` / ``--p2d-eval`` or the environment variables
``P2D_SWEEP_LLAMAFACTORY_CLI`` / ``P2D_SWEEP_P2D_EVAL``.
"""

import argparse
import csv
import glob
import io
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..hparams import DATA_SELECTIONS, HEAD_SELECTIONS
from ..io import atomic_write, atomic_write_text


EVAL_FILE = "p2d_eval.json"
AER_FILE = "p2d_aer.json"
PREDICTIONS_FILE = "generated_predictions.jsonl"
TIMINGS_FILE = "p2d_timings.json"
TRAIN_RESULTS_FILES = ("train_results.json", "all_results.json")
HEADS_FILE_KEYS = ("ratio", "method")
CLI_ENV = "P2D_SWEEP_LLAMAFACTORY_CLI"
EVAL_ENV = "P2D_SWEEP_P2D_EVAL"
DEFAULT_REPORT_DIR = "docs/results"
DASH = "–"

FINETUNING_TYPES = ("full", "lora", "p2d_heads")
HEAD_ADAPTATIONS = {
    "w1": "p2d_heads",
    "random": "random_heads",
    "cosine": "cosine_heads",
    "gradient": "gradient_heads",
}
# Table 1's blocks and rows, in the paper's order
SELECTION_LABELS = {
    "none": "Full (full dataset)",
    "ifd": "IFD",
    "data_whisperer": "Data Whisperer",
    "random": "Random",
    "p2d": "P2D (Ours)",
}
SHORT_SELECTION_LABELS = {
    "none": "Full",
    "ifd": "IFD",
    "data_whisperer": "Data Whisperer",
    "random": "Random",
    "p2d": "P2D",
}
ADAPTATION_LABELS = {
    "full": "+ full parameters",
    "random_heads": "+ random",
    "lora": "+ LoRA",
    "p2d_heads": "+ P2D",
    "cosine_heads": "+ P2D heads (cosine)",
    "gradient_heads": "+ P2D heads (gradient)",
}
DATASET_LABELS = {"gsm8k": "GSM8K", "dialogsum": "DialogSum", "bioinstruct": "BioInstruct"}
METRIC_LABELS = {"em": "EM", "rougeL": "ROUGE-L"}
# Table 21: (data subset, head subset); Nuggets is not implemented by the plugin
LOCK_AND_KEY_ROWS = (
    ("p2d", "random_heads"),
    ("random", "p2d_heads"),
    ("ifd", "p2d_heads"),
    ("nuggets", "p2d_heads"),
    ("data_whisperer", "p2d_heads"),
    ("p2d", "p2d_heads"),
)
SELECTION_COLORS = {
    "none": "tab:gray",
    "ifd": "tab:blue",
    "data_whisperer": "tab:green",
    "random": "tab:purple",
    "p2d": "tab:red",
}
ADAPTATION_MARKERS = {
    "full": "o",
    "random_heads": "s",
    "lora": "^",
    "p2d_heads": "*",
    "cosine_heads": "P",
    "gradient_heads": "X",
}


class SweepError(ValueError):
    """Bad input (a YAML, a path, a method name); the message names it. Nothing has run."""


@dataclass
class Run:
    yaml_path: Path
    config: dict[str, Any]
    model: str
    dataset: str
    selection: str  # p2d_data_selection
    adaptation: str  # full | lora | p2d_heads | random_heads | cosine_heads | gradient_heads
    rho_d: float
    rho_p: float | None  # None for LoRA (its budget is the rank)
    lora_rank: int | None = None
    needs: list[Path] = field(default_factory=list)  # output dirs this run reads

    @property
    def output_dir(self) -> str:
        return str(self.config["output_dir"])

    @property
    def out(self) -> Path:
        return Path(self.output_dir)

    @property
    def is_reference(self) -> bool:
        """Full fine-tuning on the full data: its own t_FFT (AER 1)."""
        return self.adaptation == "full" and self.selection == "none"

    @property
    def rho_p_label(self) -> str:
        return f"r={self.lora_rank}" if self.rho_p is None else _percent(self.rho_p)

    @property
    def key(self) -> tuple:
        return (self.model, self.dataset, self.selection, self.adaptation, round(self.rho_d, 6), self.rho_p_label)


def _percent(value: float) -> str:
    return f"{value * 100:g}%"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def train_runtime(out: Path) -> float | None:
    """Training seconds of a finished run: p2d_timings.json, else the Trainer's train_runtime."""
    timings = _read_json(out / TIMINGS_FILE) or {}
    if "training_seconds" in timings:
        return float(timings["training_seconds"])
    for name in TRAIN_RESULTS_FILES:
        runtime = (_read_json(out / name) or {}).get("train_runtime")
        if runtime is not None:
            return float(runtime)
    return None


def aer_of(run: Run) -> tuple[float | None, str | None]:
    """(AER, mode) of a run: p2d_aer.json, or 1 for the full fine-tuning reference once it has trained."""
    record = _read_json(run.out / AER_FILE)
    if record is not None and isinstance(record.get("aer"), (int, float)):
        return float(record["aer"]), str(record.get("mode", ""))
    if run.is_reference and train_runtime(run.out) is not None:
        return 1.0, "reference"
    return None, None


def is_trained(run: Run) -> bool:
    return (run.out / PREDICTIONS_FILE).is_file() and aer_of(run)[0] is not None


def is_finished(run: Run) -> bool:
    return (run.out / EVAL_FILE).is_file() and aer_of(run)[0] is not None


def _dataset_label(config: dict[str, Any]) -> str:
    names = [name.strip() for name in str(config.get("dataset", "")).split(",") if name.strip()]
    names = [name[: -len("_local")] if name.endswith("_local") else name for name in names]
    return "+".join(names) or "?"


def _heads_file_record(path: str) -> dict[str, Any]:
    record = _read_json(Path(path)) or {}
    return {key: record[key] for key in HEADS_FILE_KEYS if key in record}


def classify(yaml_path: Path, config: dict[str, Any]) -> Run:
    """The run's model, dataset and method, from its keys; unknown method names raise SweepError."""
    selection = config.get("p2d_data_selection", "none")
    if selection not in DATA_SELECTIONS:
        raise SweepError(
            f"{yaml_path}: unknown p2d_data_selection {selection!r}; allowed: {', '.join(DATA_SELECTIONS)}."
        )
    finetuning_type = config.get("finetuning_type", "lora")  # LLaMA-Factory's default
    if finetuning_type not in FINETUNING_TYPES:
        raise SweepError(
            f"{yaml_path}: finetuning_type {finetuning_type!r} is not in the paper's tables; allowed: "
            f"{', '.join(FINETUNING_TYPES)}."
        )
    heads_file = config.get("p2d_heads_file")
    heads = _heads_file_record(heads_file) if heads_file else {}
    lora_rank = None
    if finetuning_type == "p2d_heads":
        method = heads.get("method", config.get("p2d_head_selection", "w1"))
        if method not in HEAD_SELECTIONS:
            raise SweepError(
                f"{yaml_path}: unknown p2d_head_selection {method!r}; allowed: {', '.join(HEAD_SELECTIONS)}."
            )
        adaptation = HEAD_ADAPTATIONS[method]
        rho_p: float | None = float(heads.get("ratio", config.get("p2d_head_ratio", 0.1)))
    elif finetuning_type == "lora":
        adaptation, rho_p, lora_rank = "lora", None, int(config.get("lora_rank", 8))
    else:
        adaptation, rho_p = "full", 1.0
    rho_d = 1.0 if selection == "none" else float(config.get("p2d_data_ratio", 0.1))

    parts = Path(str(config["output_dir"])).parts
    model = parts[-3] if len(parts) >= 3 else Path(str(config["model_name_or_path"])).name
    needs = []
    if heads_file:
        needs.append(Path(os.path.abspath(os.path.dirname(heads_file))))
    if config.get("p2d_aer_reference"):
        needs.append(Path(os.path.abspath(config["p2d_aer_reference"])))
    return Run(yaml_path, config, model, _dataset_label(config), selection, adaptation, rho_d, rho_p, lora_rank, needs)


def _is_run_config(config: Any) -> bool:
    return isinstance(config, dict) and "model_name_or_path" in config and "output_dir" in config


def load_runs(paths: list[str]) -> tuple[list[Run], list[Path]]:
    """The runs named by files, folders and globs (in that order, each once), and the YAMLs skipped in folders."""
    explicit: list[Path] = []
    found: list[tuple[Path, bool]] = []
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            matches = sorted({*path.rglob("*.yaml"), *path.rglob("*.yml")})
            found += [(m, False) for m in matches]
        elif any(ch in arg for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(arg, recursive=True) if Path(m).is_file())
            if not matches:
                raise SweepError(f"{arg}: the glob matches no file.")
            found += [(m, False) for m in matches]
        elif path.is_file():
            found.append((path, True))
            explicit.append(path)
        else:
            raise SweepError(f"{arg}: no such file or folder.")
    runs, skipped, seen, by_output = [], [], set(), {}
    for path, named in found:
        resolved = path.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as err:
            raise SweepError(f"{path}: cannot read the YAML: {err}") from None
        if not _is_run_config(config):
            if named:
                raise SweepError(
                    f"{path}: not a LLaMA-Factory training YAML (needs model_name_or_path and output_dir)."
                )
            skipped.append(path)
            continue
        run = classify(path, config)
        out = os.path.abspath(run.output_dir)
        if out in by_output:
            raise SweepError(f"{path} and {by_output[out].yaml_path} both write output_dir {run.output_dir}.")
        by_output[out] = run
        runs.append(run)
    return order_runs(runs), skipped


def order_runs(runs: list[Run]) -> list[Run]:
    """Input order, except that a run comes after the runs whose output it reads."""
    by_output = {Path(os.path.abspath(run.output_dir)): run for run in runs}
    ordered: list[Run] = []
    placed: set[int] = set()
    pending = list(runs)
    while pending:
        for run in pending:
            deps = [by_output[need] for need in run.needs if need in by_output and by_output[need] is not run]
            if all(id(dep) in placed for dep in deps):
                ordered.append(run)
                placed.add(id(run))
                pending.remove(run)
                break
        else:
            names = ", ".join(str(run.yaml_path) for run in pending)
            raise SweepError(f"these runs read each other's outputs in a cycle: {names}.")
    return ordered


def _dataset_problems(run: Run) -> list[str]:
    config = run.config
    dataset_dir = str(config.get("dataset_dir", "data"))
    if dataset_dir == "ONLINE" or dataset_dir.startswith("REMOTE:"):
        return []
    info_path = Path(dataset_dir) / "dataset_info.json"
    info = _read_json(info_path)
    if info is None:
        return [f"{info_path} is missing or unreadable"]
    problems = []
    for key in ("dataset", "eval_dataset"):
        for name in [n.strip() for n in str(config.get(key) or "").split(",") if n.strip()]:
            if name not in info:
                problems.append(f"{key} {name!r} is not registered in {info_path}")
            elif "file_name" in info[name] and not (Path(dataset_dir) / info[name]["file_name"]).exists():
                problems.append(f"{key} {name!r}: {Path(dataset_dir) / info[name]['file_name']} does not exist")
    return problems


def preflight(run: Run, produced: set[Path]) -> list[str]:
    """Why the run cannot start now (inputs that no earlier run of the sweep writes), or []."""
    problems = _dataset_problems(run)
    heads_file = run.config.get("p2d_heads_file")
    if (
        heads_file
        and not Path(heads_file).is_file()
        and Path(os.path.abspath(os.path.dirname(heads_file))) not in produced
    ):
        problems.append(f"p2d_heads_file {heads_file} does not exist and no run of this sweep writes it")
    reference = run.config.get("p2d_aer_reference")
    if reference and Path(os.path.abspath(reference)) not in produced and train_runtime(Path(reference)) is None:
        problems.append(f"p2d_aer_reference {reference} has no training time and no run of this sweep writes it")
    return problems


def _console_script(name: str) -> str:
    """The console script next to this interpreter (the project's venv), else the one on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    return shutil.which(name) or name


def _command(option: str | None, env_var: str, script: str) -> list[str]:
    value = option or os.environ.get(env_var)
    return shlex.split(value) if value else [_console_script(script)]


def _launch(cmd: list[str], env: dict[str, str]) -> int:
    print(f"$ {shlex.join(cmd)}", flush=True)
    sys.stderr.flush()
    try:
        return subprocess.run(cmd, env=env, check=False).returncode
    except OSError as err:
        print(f"p2d-sweep: cannot start {cmd[0]}: {err}", file=sys.stderr, flush=True)
        return 127


def _state(run: Run) -> str:
    if is_finished(run):
        return "finished"
    if is_trained(run):
        return "evaluate"
    return "train"


@dataclass
class SweepOutcome:
    trained: list[Run] = field(default_factory=list)
    evaluated: list[Run] = field(default_factory=list)
    finished_before: list[Run] = field(default_factory=list)
    failed: list[tuple[Run, str]] = field(default_factory=list)
    skipped: list[tuple[Run, str]] = field(default_factory=list)


def run_sweep(runs: list[Run], train_cmd: list[str], eval_cmd: list[str], keep_going: bool, dry_run: bool):
    """Train and evaluate what is not finished; returns a SweepOutcome."""
    outcome = SweepOutcome()
    by_output = {Path(os.path.abspath(run.output_dir)): run for run in runs}
    bad: set[Path] = set()  # output dirs of runs that failed or were skipped
    produced = {Path(os.path.abspath(run.output_dir)) for run in runs}
    total = len(runs)
    for index, run in enumerate(runs, 1):
        out = Path(os.path.abspath(run.output_dir))
        label = f"[{index}/{total}] {run.output_dir} ({run.yaml_path})"
        state = _state(run)
        if state == "finished":
            outcome.finished_before.append(run)
            print(f"p2d-sweep: {label}: finished, skipped", flush=True)
            continue
        failed_deps = [by_output[need].output_dir for need in run.needs if need in bad]
        if failed_deps:
            reason = f"needs {', '.join(failed_deps)}, which {'cannot run' if dry_run else 'did not finish'}"
            outcome.skipped.append((run, reason))
            bad.add(out)
            print(f"p2d-sweep: {label}: skipped: {reason}", flush=True)
            continue
        problems = preflight(run, produced - bad) if state == "train" else []
        if problems:
            reason = "; ".join(problems)
            print(f"p2d-sweep: {label}: cannot start: {reason}", file=sys.stderr, flush=True)
            outcome.failed.append((run, f"cannot start: {reason}"))
            bad.add(out)
            if not keep_going and not dry_run:
                return outcome
            continue
        env = dict(os.environ)
        if run.config.get("deepspeed") and "FORCE_TORCHRUN" not in env:
            env["FORCE_TORCHRUN"] = "1"  # LLaMA-Factory launches DeepSpeed through torchrun only
        steps = []
        if state == "train":
            steps.append(("llamafactory-cli train", [*train_cmd, "train", str(run.yaml_path)]))
        steps.append(("p2d-eval", [*eval_cmd, run.output_dir]))
        if dry_run:
            print(f"p2d-sweep: {label}: would {'train and evaluate' if state == 'train' else 'evaluate'}")
            for _, cmd in steps:
                prefix = (
                    "FORCE_TORCHRUN=1 " if env.get("FORCE_TORCHRUN") and "FORCE_TORCHRUN" not in os.environ else ""
                )
                print(f"    {prefix}{shlex.join(cmd)}")
            continue
        print(f"p2d-sweep: {label}: {'training' if state == 'train' else 'evaluating'}", flush=True)
        error = None
        for name, cmd in steps:
            if name == "p2d-eval" and not (run.out / PREDICTIONS_FILE).is_file():
                continue  # nothing to score (reported below); after training, fresh predictions are always scored
            code = _launch(cmd, env)
            if code != 0:
                error = f"{name} exited with {code}"
                break
            if name == "llamafactory-cli train":
                outcome.trained.append(run)
        if error is None and not is_finished(run):
            missing = [
                name
                for name, ok in (
                    (PREDICTIONS_FILE, (run.out / PREDICTIONS_FILE).is_file()),
                    (EVAL_FILE, (run.out / EVAL_FILE).is_file()),
                    (AER_FILE, aer_of(run)[0] is not None),
                )
                if not ok
            ]
            error = f"finished without {', '.join(missing)} in {run.output_dir}"
        if error is not None:
            print(f"p2d-sweep: run {run.yaml_path} failed: {error}", file=sys.stderr, flush=True)
            outcome.failed.append((run, error))
            bad.add(out)
            if not keep_going:
                return outcome
            continue
        if state == "evaluate":
            outcome.evaluated.append(run)
    return outcome


# ---------------------------------------------------------------- results


@dataclass
class Cell:
    """The mean over the runs (seeds) of one (model, dataset, selection, adaptation, rho_D, rho_P)."""

    perf: float | None = None
    aer: float | None = None
    metric: str | None = None
    runs: int = 0


def collect(runs: list[Run]) -> dict[tuple, Cell]:
    sums: dict[tuple, dict[str, list]] = {}
    for run in runs:
        entry = sums.setdefault(run.key, {"perf": [], "aer": [], "metric": []})
        record = _read_json(run.out / EVAL_FILE)
        if record is not None and isinstance(record.get("score"), (int, float)):
            entry["perf"].append(float(record["score"]))
            entry["metric"].append(record.get("metric"))
        aer, _ = aer_of(run)
        if aer is not None:
            entry["aer"].append(aer)
    cells = {}
    for key, entry in sums.items():
        cells[key] = Cell(
            perf=sum(entry["perf"]) / len(entry["perf"]) if entry["perf"] else None,
            aer=sum(entry["aer"]) / len(entry["aer"]) if entry["aer"] else None,
            metric=entry["metric"][0] if entry["metric"] else None,
            runs=len(entry["perf"]),
        )
    return cells


def _fmt(value: float | None, digits: int = 2) -> str:
    return DASH if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _ordered(values, preferred) -> list:
    values = list(dict.fromkeys(values))
    return [v for v in preferred if v in values] + [v for v in values if v not in preferred]


@dataclass
class Row:
    block: str  # selection
    adaptation: str
    rho_d: str
    rho_p: str
    values: dict[str, Cell]  # dataset -> cell

    @property
    def label(self) -> str:
        return ADAPTATION_LABELS.get(self.adaptation, f"+ {self.adaptation}")


def _rank(label: str) -> int:
    return int(label[2:]) if label.startswith("r=") and label[2:].isdigit() else 0


def main_rows(runs: list[Run], cells: dict[tuple, Cell], model: str, datasets: list[str], rho_d: float, rho_p: float):
    """Table 1-2 rows of one model: for each selection block, its adaptation rows at the main budget."""
    blocks: list[tuple[str, list[Row]]] = []
    for selection in SELECTION_LABELS:
        target_d = 1.0 if selection == "none" else rho_d
        matching = [
            run
            for run in runs
            if run.model == model and run.selection == selection and math.isclose(run.rho_d, target_d)
        ]
        variants: list[tuple[str, str]] = []
        for adaptation in ADAPTATION_LABELS:
            if adaptation == "full":
                variants.append((adaptation, "100%"))
            elif adaptation == "lora":  # one row per rank found (r=128 in the paper)
                ranks = sorted({run.rho_p_label for run in matching if run.adaptation == "lora"}, key=_rank)
                variants += [(adaptation, label) for label in ranks or [DASH]]
            elif adaptation in ("random_heads", "p2d_heads") or any(
                run.adaptation == adaptation and math.isclose(run.rho_p, rho_p) for run in matching
            ):
                variants.append((adaptation, _percent(rho_p)))
        rows = [
            Row(
                selection,
                adaptation,
                _percent(target_d),
                label,
                {
                    ds: cells.get((model, ds, selection, adaptation, round(target_d, 6), label), Cell())
                    for ds in datasets
                },
            )
            for adaptation, label in variants
        ]
        blocks.append((selection, rows))
    return blocks


def _average(values: list[float | None]) -> float | None:
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def _dataset_header(dataset: str, runs: list[Run], cells: dict[tuple, Cell]) -> str:
    metrics = {cell.metric for key, cell in cells.items() if key[1] == dataset and cell.metric}
    label = DATASET_LABELS.get(dataset, dataset)
    return f"{label} ({', '.join(METRIC_LABELS.get(m, m) for m in sorted(metrics))})" if metrics else label


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _ratio_rows(runs, cells, model, datasets, axis: str, rho_d: float, rho_p: float):
    """Table 3 (axis rho_d: P2D selection + P2D heads at rho_P) or Table 4 (axis rho_p: P2D selection at rho_D)."""
    points: dict[float, tuple] = {}
    if axis == "rho_d":
        points[1.0] = ("none", "p2d_heads", 1.0, _percent(rho_p))
        for run in runs:
            if (run.model, run.selection, run.adaptation) == (model, "p2d", "p2d_heads") and math.isclose(
                run.rho_p, rho_p
            ):
                points.setdefault(run.rho_d, ("p2d", "p2d_heads", run.rho_d, _percent(rho_p)))
        for value in (0.7, 0.5, 0.3, rho_d):
            points.setdefault(value, ("p2d", "p2d_heads", value, _percent(rho_p)))
    else:
        points[1.0] = ("p2d", "full", rho_d, "100%")
        for run in runs:
            if (run.model, run.selection, run.adaptation) == (model, "p2d", "p2d_heads") and math.isclose(
                run.rho_d, rho_d
            ):
                points.setdefault(run.rho_p, ("p2d", "p2d_heads", rho_d, run.rho_p_label))
        for value in (0.7, 0.5, 0.3, rho_p):
            points.setdefault(value, ("p2d", "p2d_heads", rho_d, _percent(value)))
    rows = []
    for value in sorted(points, reverse=True):
        selection, adaptation, d, p = points[value]
        label = _percent(value) + (" (full parameters)" if axis == "rho_p" and adaptation == "full" else "")
        label += " (full dataset)" if axis == "rho_d" and selection == "none" else ""
        values = [cells.get((model, ds, selection, adaptation, round(d, 6), p), Cell()) for ds in datasets]
        rows.append([label] + [x for cell in values for x in (_fmt(cell.perf), _fmt(cell.aer))])
    return rows


def _lock_and_key_rows(cells, model, datasets, rho_d: float, rho_p: float):
    rows = []
    for selection, adaptation in LOCK_AND_KEY_ROWS:
        values = [
            cells.get((model, ds, selection, adaptation, round(rho_d, 6), _percent(rho_p)), Cell()) for ds in datasets
        ]
        data = SHORT_SELECTION_LABELS.get(selection, "Nuggets (not implemented)")
        heads = "P2D" if adaptation == "p2d_heads" else "Random"
        rows.append([data, heads] + [_fmt(cell.perf) for cell in values])
    return rows


def build_report(runs: list[Run], rho_d: float, rho_p: float) -> tuple[str, str, dict]:
    """(results.md, results.csv, data for the figure)."""
    cells = collect(runs)
    models = list(dict.fromkeys(run.model for run in runs))
    all_datasets = _ordered((run.dataset for run in runs), list(DATASET_LABELS))
    finished = sum(1 for run in runs if is_finished(run))
    md = [
        "# P2D results",
        "",
        f"Written by `p2d-sweep` from {len(runs)} run(s), {finished} finished. Perf.: exact match (GSM8K) or "
        "ROUGE-L (DialogSum, BioInstruct) in %, from `p2d_eval.json`; AER = (selection time + training time) / "
        "t_FFT (Eq. 1; lower is better), from `p2d_aer.json`. Values are means over the runs of a cell (seeds). "
        f"{DASH} : no finished run.",
    ]
    csv_rows: list[list[str]] = []
    figure: dict[str, Any] = {"models": models, "datasets": {}, "points": {}}
    for model in models:
        datasets = _ordered((run.dataset for run in runs if run.model == model), list(DATASET_LABELS))
        figure["datasets"][model] = datasets
        headers = [_dataset_header(ds, runs, cells) for ds in datasets]
        table = []
        for selection, rows in main_rows(runs, cells, model, datasets, rho_d, rho_p):
            table.append([f"**{SELECTION_LABELS[selection]}**", "", ""] + [""] * (2 * len(datasets) + 1))
            for row in rows:
                perfs = [row.values[ds].perf for ds in datasets]
                table.append(
                    [row.label, row.rho_d, row.rho_p]
                    + [x for ds in datasets for x in (_fmt(row.values[ds].perf), _fmt(row.values[ds].aer))]
                    + [_fmt(_average(perfs))]
                )
                csv_rows.append(
                    [model, SELECTION_LABELS[row.block], row.label, row.rho_d, row.rho_p]
                    + [
                        x
                        for ds in all_datasets
                        for x in (
                            (_fmt(row.values[ds].perf, 4), _fmt(row.values[ds].aer, 4))
                            if ds in row.values
                            else (DASH, DASH)
                        )
                    ]
                    + [_fmt(_average(perfs), 4)]
                )
                for ds in datasets:
                    cell = row.values[ds]
                    figure["points"].setdefault((model, ds), []).append(
                        (row.block, row.adaptation, cell.aer, cell.perf)
                    )
        header = ["Method", "ρ_D", "ρ_P"] + [f"{h} {k}" for h in headers for k in ("Perf.", "AER")] + ["Avg. Perf."]
        md += [
            "",
            f"## {model}",
            "",
            f"### Selection x adaptation (Tables 1-2): ρ_D = {_percent(rho_d)}, ρ_P = {_percent(rho_p)}",
            "",
            _md_table(header, table),
        ]
        ratio_header = [f"{h} {k}" for h in headers for k in ("Perf.", "AER")]
        md += [
            "",
            f"### Data ratio ρ_D (Table 3): P2D selection + P2D heads, ρ_P = {_percent(rho_p)}",
            "",
            _md_table(["ρ_D"] + ratio_header, _ratio_rows(runs, cells, model, datasets, "rho_d", rho_d, rho_p)),
            "",
            f"### Head ratio ρ_P (Table 4): P2D selection, ρ_D = {_percent(rho_d)}",
            "",
            _md_table(["ρ_P"] + ratio_header, _ratio_rows(runs, cells, model, datasets, "rho_p", rho_d, rho_p)),
            "",
            f"### Lock-and-key (Table 21): (data subset, head subset) at ρ_D = {_percent(rho_d)}, "
            f"ρ_P = {_percent(rho_p)}; Perf.",
            "",
            _md_table(["Data", "Heads"] + headers, _lock_and_key_rows(cells, model, datasets, rho_d, rho_p)),
        ]
    if not models:
        md += ["", "No runs."]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["model", "block", "method", "rho_D", "rho_P"]
        + [f"{ds}_{k}" for ds in all_datasets for k in ("perf", "aer")]
        + ["avg_perf"]
    )
    writer.writerows(csv_rows)
    return "\n".join(md) + "\n", buffer.getvalue(), figure


def plot_aer_vs_perf(figure: dict[str, Any], path: Path) -> None:
    """Fig. 1: AER (x) against Perf. (y), one marker per cell, dashed lines through each selection's variants."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    models = figure["models"] or ["(no runs)"]
    ncols = max([len(figure["datasets"].get(m, [])) for m in models] + [1])
    fig, axes = plt.subplots(len(models), ncols, figsize=(4.2 * ncols, 3.6 * len(models)), squeeze=False)
    for i, model in enumerate(models):
        datasets = figure["datasets"].get(model, [])
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(datasets):
                ax.axis("off")
                continue
            dataset = datasets[j]
            points = [p for p in figure["points"].get((model, dataset), []) if p[2] is not None and p[3] is not None]
            for selection in SELECTION_LABELS:
                mine = [p for p in points if p[0] == selection]
                if not mine:
                    continue
                color = SELECTION_COLORS[selection]
                if len(mine) > 1:  # the adaptation variants of one selection method, left to right
                    line = sorted(mine, key=lambda p: p[2])
                    ax.plot([p[2] for p in line], [p[3] for p in line], "--", color=color, linewidth=1, alpha=0.7)
                for _, adaptation, aer, perf in mine:
                    pipeline = selection == "p2d" and adaptation == "p2d_heads"
                    ax.scatter(
                        aer,
                        perf,
                        marker=ADAPTATION_MARKERS.get(adaptation, "o"),
                        s=260 if pipeline else 60 if adaptation == "p2d_heads" else 36,
                        color="gold" if pipeline else color,
                        edgecolors=color if pipeline else "none",
                        linewidths=1.5,
                        zorder=3,
                    )
                    if pipeline:
                        ax.annotate("P2D", (aer, perf), textcoords="offset points", xytext=(8, 6), fontsize=9)
            if not points:
                ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes, color="gray")
            ax.set_title(f"{model} · {DATASET_LABELS.get(dataset, dataset)}", fontsize=10)
            ax.set_xlabel("AER (lower is better)")
            ax.set_ylabel("Perf. (%)")
            ax.grid(alpha=0.3)
        if not datasets:
            axes[i][0].axis("off")
            axes[i][0].text(0.5, 0.5, "no runs", ha="center", va="center", transform=axes[i][0].transAxes)
    handles = [
        Line2D([], [], color=SELECTION_COLORS[s], linestyle="--", label=SHORT_SELECTION_LABELS[s])
        for s in SELECTION_LABELS
    ] + [
        Line2D([], [], color="black", marker=ADAPTATION_MARKERS[a], linestyle="none", label=label)
        for a, label in (
            ("full", "full params"),
            ("random_heads", "random heads"),
            ("lora", "LoRA"),
            ("p2d_heads", "P2D heads"),
        )
    ]
    fig.legend(handles=handles, loc="lower center", ncol=(len(handles) + 1) // 2, fontsize=8, frameon=False)
    fig.suptitle("AER vs. performance: selection methods (colour), adaptation variants (marker)", fontsize=11)
    fig.tight_layout(rect=(0, 0.1, 1, 0.96))
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def write_report(runs: list[Run], report_dir: Path, rho_d: float, rho_p: float) -> list[Path]:
    markdown, table, figure = build_report(runs, rho_d, rho_p)
    paths = [
        atomic_write_text(report_dir / "results.md", markdown),
        atomic_write_text(report_dir / "results.csv", table),
    ]
    plot_aer_vs_perf(figure, report_dir / "aer_vs_perf.png")
    paths.append(report_dir / "aer_vs_perf.png")
    return paths


# ---------------------------------------------------------------- command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2d-sweep",
        description="Run LLaMA-Factory YAMLs that are not finished (p2d_eval.json + p2d_aer.json), score their "
        "predictions with p2d-eval, and write the paper-format tables. Run from the project root.",
    )
    parser.add_argument("paths", nargs="+", help="run YAMLs, folders (searched recursively) or globs")
    parser.add_argument("--dry-run", action="store_true", help="print what would run; run and write nothing")
    parser.add_argument("--collect-only", action="store_true", help="run nothing; only collect and write the report")
    parser.add_argument("--keep-going", action="store_true", help="after a failed run, go on with the others")
    parser.add_argument(
        "--report-dir", default=DEFAULT_REPORT_DIR, help="where the report goes (default: %(default)s)"
    )
    parser.add_argument("--rho-d", type=float, default=0.1, help="ρ_D of the main table (default: %(default)s)")
    parser.add_argument("--rho-p", type=float, default=0.1, help="ρ_P of the main table (default: %(default)s)")
    parser.add_argument(
        "--llamafactory-cli",
        help=f"command that replaces llamafactory-cli (default: ${CLI_ENV}, else the llamafactory-cli of this venv)",
    )
    parser.add_argument(
        "--p2d-eval", help=f"command that replaces p2d-eval (default: ${EVAL_ENV}, else the p2d-eval of this venv)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``p2d-sweep``: 0 done, 1 a run failed or could not start, 2 bad input."""
    args = _parser().parse_args(argv)
    if args.dry_run and args.collect_only:
        print("p2d-sweep: error: --dry-run and --collect-only exclude each other.", file=sys.stderr)
        return 2
    try:
        runs, skipped = load_runs(args.paths)
    except SweepError as err:
        print(f"p2d-sweep: error: {err}", file=sys.stderr)
        return 2
    if skipped:
        print(
            f"p2d-sweep: {len(skipped)} YAML(s) without model_name_or_path/output_dir ignored: "
            + ", ".join(str(p) for p in skipped)
        )
    if not runs:
        print("p2d-sweep: error: no run YAML found.", file=sys.stderr)
        return 2

    outcome = SweepOutcome()
    if not args.collect_only:
        outcome = run_sweep(
            runs,
            _command(args.llamafactory_cli, CLI_ENV, "llamafactory-cli"),
            _command(args.p2d_eval, EVAL_ENV, "p2d-eval"),
            args.keep_going,
            args.dry_run,
        )
    if args.dry_run:
        todo = len(runs) - len(outcome.finished_before) - len(outcome.failed) - len(outcome.skipped)
        print(
            f"p2d-sweep: dry run: {len(outcome.finished_before)} finished, {todo} to run, "
            f"{len(outcome.failed) + len(outcome.skipped)} blocked, of {len(runs)}."
        )
        return 1 if outcome.failed else 0

    paths = write_report(runs, Path(args.report_dir), args.rho_d, args.rho_p)
    finished = sum(1 for run in runs if is_finished(run))
    print(
        f"p2d-sweep: {len(outcome.trained)} trained, {len(outcome.evaluated)} evaluated only, "
        f"{len(outcome.finished_before)} already finished, {len(outcome.failed)} failed, "
        f"{len(outcome.skipped)} skipped; {finished} of {len(runs)} runs finished. Report: "
        + ", ".join(str(p) for p in paths)
    )
    if outcome.failed:
        for run, reason in outcome.failed:
            print(f"p2d-sweep: failed: {run.yaml_path} ({run.output_dir}): {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
