"""The runs of a sweep: LLaMA-Factory YAMLs read back into a method of :mod:`p2d_llamafactory.methods`, their order
and their state (trained, finished, AER).

A run's method comes from its keys (``p2d_data_selection``, ``finetuning_type``, ``p2d_head_selection``, or the
method recorded in the ``p2d_heads.json`` it reads); unknown names raise :class:`SweepError` before anything runs.

A run is a *tuning run* (a learning-rate sweep point, never in the paper's tables) when its ``output_dir`` folder
is named ``tune__...`` (p2d-grid's tuning cells) or when every name of its ``eval_dataset`` ends in ``_val`` (a
validation split: its score is no test result, whatever the run is called). A tuning run is finished once it has
``p2d_eval.json`` (no AER). A tuning run scored on a ``*_test`` split, or on a validation split of fewer than
``MIN_VAL_ROWS`` rows, is refused before anything runs.
"""

import glob
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ... import hparams, methods
from ...files import AER_FILE, EVAL_FILE, PREDICTIONS_FILE, read_record
from ...report.aer import read_aer, training_seconds


HEADS_FILE_KEYS = ("ratio", "method")
TUNING_PREFIX = "tune__"  # p2d-grid's tuning cells: tune__<adaptation>__lr<rate>
VAL_SUFFIX = "_val"
MIN_VAL_ROWS = 32  # a validation score over fewer rows cannot rank learning rates
DEFAULT_SEED = 42  # LLaMA-Factory's (TrainingArguments.seed)


class SweepError(ValueError):
    """Bad input (a YAML, a path, a method name); the message names it. Nothing has run."""


def percent(value: float) -> str:
    return f"{value * 100:g}%"


@dataclass
class Run:
    yaml_path: Path
    config: dict[str, Any]
    model: str
    dataset: str
    selection: str  # p2d_data_selection
    adaptation: str  # a name of methods.ADAPTATIONS: full | lora | p2d_heads | random_heads | ...
    rho_d: float
    rho_p: float | None  # None for LoRA (its budget is the rank)
    lora_rank: int | None = None
    needs: list[Path] = field(default_factory=list)  # output dirs this run reads
    seed: int = DEFAULT_SEED  # the YAML's seed
    tuning: bool = False  # a learning-rate sweep point on a validation split (module docstring)
    lr: float | None = None  # tuning runs: learning_rate (x p2d_head_lr_scale for head adaptations)

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
        return f"r={self.lora_rank}" if self.rho_p is None else percent(self.rho_p)

    @property
    def key(self) -> tuple:
        """The cell of the run: the seeds of one cell share it (tuning runs: with their learning rate)."""
        key = (self.model, self.dataset, self.selection, self.adaptation, round(self.rho_d, 6), self.rho_p_label)
        return (*key, float(f"{self.lr:.6g}")) if self.tuning and self.lr is not None else key

    @property
    def eval_datasets(self) -> list[str]:
        return _names(self.config.get("eval_dataset"))


def aer_of(run: Run) -> tuple[float | None, str | None]:
    """(AER, mode) of a run: p2d_aer.json, or 1 for the full fine-tuning reference once it has trained."""
    record = read_aer(run.out)
    if record is not None:
        return float(record["aer"]), str(record.get("mode", ""))
    if run.is_reference and training_seconds(run.out) is not None:
        return 1.0, "reference"
    return None, None


def is_trained(run: Run) -> bool:
    return (run.out / PREDICTIONS_FILE).is_file() and (run.tuning or aer_of(run)[0] is not None)


def is_finished(run: Run) -> bool:
    return (run.out / EVAL_FILE).is_file() and (run.tuning or aer_of(run)[0] is not None)


def missing_outputs(run: Run) -> list[str]:
    """The files that a finished run has and this one lacks."""
    checks = [(PREDICTIONS_FILE, (run.out / PREDICTIONS_FILE).is_file()), (EVAL_FILE, (run.out / EVAL_FILE).is_file())]
    if not run.tuning:
        checks.append((AER_FILE, aer_of(run)[0] is not None))
    return [name for name, ok in checks if not ok]


def _names(value: Any) -> list[str]:
    return [name.strip() for name in str(value or "").split(",") if name.strip()]


def _dataset_label(config: dict[str, Any]) -> str:
    names = _names(config.get("dataset"))
    names = [name[: -len("_local")] if name.endswith("_local") else name for name in names]
    return "+".join(names) or "?"


def dataset_file(config: dict[str, Any], name: str) -> Path | None:
    """The local file of a dataset name, from the run's ``dataset_dir``/dataset_info.json; None if there is none."""
    dataset_dir = str(config.get("dataset_dir", "data"))
    if dataset_dir == "ONLINE" or dataset_dir.startswith("REMOTE:"):
        return None
    info = read_record(Path(dataset_dir) / "dataset_info.json") or {}
    entry = info.get(name)
    if not isinstance(entry, dict) or "file_name" not in entry:
        return None
    return Path(dataset_dir) / str(entry["file_name"])


def count_rows(path: Path) -> int | None:
    """Rows of a JSON (a list) or JSON-lines data file; None for other files, folders or unreadable ones."""
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, list):
        return len(data)
    if path.suffix == ".jsonl" or data is None:
        lines = [line for line in text.splitlines() if line.strip()]
        try:
            return sum(1 for line in lines if isinstance(json.loads(line), dict))
        except ValueError:
            return None
    return None


def _is_tuning(config: dict[str, Any]) -> bool:
    evals = _names(config.get("eval_dataset"))
    named = Path(str(config["output_dir"]).rstrip("/")).name.startswith(TUNING_PREFIX)
    return named or (bool(evals) and all(name.endswith(VAL_SUFFIX) for name in evals))


def _tuning_lr(config: dict[str, Any], finetuning_type: str) -> float | None:
    """The rate the run's weights train at: learning_rate, times p2d_head_lr_scale for the head slices."""
    try:
        lr = float(config.get("learning_rate", 5e-5))  # LLaMA-Factory's default (TrainingArguments)
        if finetuning_type == "p2d_heads":
            lr *= float(config.get("p2d_head_lr_scale", hparams.HEAD_LR_SCALE))
    except (TypeError, ValueError):
        return None
    return lr if math.isfinite(lr) else None


def _check_tuning(yaml_path: Path, config: dict[str, Any]) -> None:
    evals = _names(config.get("eval_dataset"))
    test = [name for name in evals if name.endswith("_test")]
    if test or not evals:
        split = f"eval_dataset {', '.join(test)}, a test split" if test else "no eval_dataset"
        raise SweepError(
            f"{yaml_path}: a tuning run (output_dir {config['output_dir']}) is scored on {split}; tuning runs are "
            "scored on a validation split carved from the training pool (p2d-data --max-val writes "
            "<dataset>_local_val), never on the test split."
        )


def _heads_file_record(path: str) -> dict[str, Any]:
    record = read_record(Path(path)) or {}
    return {key: record[key] for key in HEADS_FILE_KEYS if key in record}


def _check_names(yaml_path: Path, selection: Any, finetuning_type: Any, head_selection: Any) -> None:
    if selection not in methods.DATA_SELECTIONS:
        raise SweepError(
            f"{yaml_path}: unknown p2d_data_selection {selection!r}; allowed: {', '.join(methods.DATA_SELECTIONS)}."
        )
    if finetuning_type not in methods.REPORTED_FINETUNING_TYPES:
        raise SweepError(
            f"{yaml_path}: finetuning_type {finetuning_type!r} is not in the paper's tables; allowed: "
            f"{', '.join(methods.REPORTED_FINETUNING_TYPES)}."
        )
    if finetuning_type == "p2d_heads" and head_selection not in methods.HEAD_SELECTIONS:
        raise SweepError(
            f"{yaml_path}: unknown p2d_head_selection {head_selection!r}; allowed: "
            f"{', '.join(methods.HEAD_SELECTIONS)}."
        )


def classify(yaml_path: Path, config: dict[str, Any]) -> Run:
    """The run's model, dataset and method, from its keys; unknown method names raise SweepError."""
    selection = config.get("p2d_data_selection", "none")
    finetuning_type = config.get("finetuning_type", "lora")  # LLaMA-Factory's default
    heads_file = config.get("p2d_heads_file")
    heads = _heads_file_record(heads_file) if heads_file and finetuning_type == "p2d_heads" else {}
    head_selection = heads.get("method", config.get("p2d_head_selection", hparams.default_of("p2d_head_selection")))
    _check_names(yaml_path, selection, finetuning_type, head_selection)
    adaptation = methods.adaptation_of(finetuning_type, head_selection).name
    lora_rank = None
    if finetuning_type == "p2d_heads":
        rho_p: float | None = float(
            heads.get("ratio", config.get("p2d_head_ratio", hparams.default_of("p2d_head_ratio")))
        )
    elif finetuning_type == "lora":
        rho_p, lora_rank = None, int(config.get("lora_rank", 8))
    elif finetuning_type == "lofit":  # LoFiT's head budget
        rho_p = float(config.get("p2d_head_ratio", hparams.default_of("p2d_head_ratio")))
    else:
        rho_p = 1.0
    rho_d = 1.0 if selection == "none" else float(config.get("p2d_data_ratio", hparams.default_of("p2d_data_ratio")))

    parts = Path(str(config["output_dir"])).parts
    model = parts[-3] if len(parts) >= 3 else Path(str(config["model_name_or_path"])).name
    needs = []
    if heads_file:
        needs.append(Path(os.path.abspath(os.path.dirname(heads_file))))
    if config.get("p2d_data_scores_file"):
        needs.append(Path(os.path.abspath(os.path.dirname(config["p2d_data_scores_file"]))))
    if config.get("p2d_aer_reference"):
        needs.append(Path(os.path.abspath(config["p2d_aer_reference"])))
    tuning = _is_tuning(config)
    if tuning:
        _check_tuning(yaml_path, config)
    seed = config.get("seed", DEFAULT_SEED)
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else DEFAULT_SEED
    return Run(
        yaml_path,
        config,
        model,
        _dataset_label(config),
        selection,
        adaptation,
        rho_d,
        rho_p,
        lora_rank,
        needs,
        seed=seed,
        tuning=tuning,
        lr=_tuning_lr(config, finetuning_type) if tuning else None,
    )


def validation_rows(run: Run) -> int | None:
    """Rows of the run's validation split(s), counted in their files; None when a file cannot be counted."""
    total = 0
    for name in run.eval_datasets:
        path = dataset_file(run.config, name)
        rows = count_rows(path) if path is not None else None
        if rows is None:
            return None
        total += rows
    return total if run.eval_datasets else None


def check_validation_splits(runs: list[Run]) -> None:
    """Refuse tuning runs whose validation split has fewer than MIN_VAL_ROWS rows (where the rows can be counted)."""
    for run in runs:
        if not run.tuning:
            continue
        for name in run.eval_datasets:
            path = dataset_file(run.config, name)
            rows = count_rows(path) if path is not None else None
            if rows is not None and rows < MIN_VAL_ROWS:
                raise SweepError(
                    f"{run.yaml_path}: the validation split {name!r} ({path}) has {rows} rows; a tuning run needs "
                    f"at least {MIN_VAL_ROWS} to rank learning rates (p2d-data --max-val {2 * MIN_VAL_ROWS} carves "
                    "a larger one from the training pool)."
                )


def _is_run_config(config: Any) -> bool:
    return isinstance(config, dict) and "model_name_or_path" in config and "output_dir" in config


def _find(paths: list[str]) -> list[tuple[Path, bool]]:
    """(YAML, named explicitly) for the files, folders (searched recursively) and globs, in that order."""
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
        else:
            raise SweepError(f"{arg}: no such file or folder.")
    return found


def load_runs(paths: list[str]) -> tuple[list[Run], list[Path]]:
    """The runs named by files, folders and globs (in that order, each once), and the YAMLs skipped in folders."""
    runs, skipped, seen, by_output = [], [], set(), {}
    for path, named in _find(paths):
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
    check_validation_splits(runs)
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
