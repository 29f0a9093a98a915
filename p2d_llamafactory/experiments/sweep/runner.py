"""Running the sweep: ``llamafactory-cli train`` and ``p2d-eval`` for each run that is not finished.

The children run in the current environment (``FORCE_TORCHRUN=1`` is added for DeepSpeed runs that do not set
it) and their output streams through. A run whose inputs no earlier run writes cannot start; a failing run stops
the sweep unless ``keep_going``, and the runs that need it are then skipped.
"""

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ...files import PREDICTIONS_FILE, read_record
from ...report.aer import training_seconds
from .runs import Run, is_finished, is_trained, missing_outputs


CLI_ENV = "P2D_SWEEP_LLAMAFACTORY_CLI"
EVAL_ENV = "P2D_SWEEP_P2D_EVAL"


def _dataset_problems(run: Run) -> list[str]:
    config = run.config
    dataset_dir = str(config.get("dataset_dir", "data"))
    if dataset_dir == "ONLINE" or dataset_dir.startswith("REMOTE:"):
        return []
    info_path = Path(dataset_dir) / "dataset_info.json"
    info = read_record(info_path)
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
    for key in ("p2d_heads_file", "p2d_data_scores_file"):
        path = run.config.get(key)
        if path and not Path(path).is_file() and Path(os.path.abspath(os.path.dirname(path))) not in produced:
            problems.append(f"{key} {path} does not exist and no run of this sweep writes it")
    reference = run.config.get("p2d_aer_reference")
    if reference and Path(os.path.abspath(reference)) not in produced and training_seconds(reference) is None:
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


def _run_steps(run: Run, steps: list[tuple[str, list[str]]], env: dict[str, str], outcome: SweepOutcome) -> str | None:
    """Launch the run's steps; the error that stops it, or None once it is finished."""
    for name, cmd in steps:
        if name == "p2d-eval" and not (run.out / PREDICTIONS_FILE).is_file():
            continue  # nothing to score (reported below); after training, fresh predictions are always scored
        code = _launch(cmd, env)
        if code != 0:
            return f"{name} exited with {code}"
        if name == "llamafactory-cli train":
            outcome.trained.append(run)
    if is_finished(run):
        return None
    return f"finished without {', '.join(missing_outputs(run))} in {run.output_dir}"


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
        error = _run_steps(run, steps, env, outcome)
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
