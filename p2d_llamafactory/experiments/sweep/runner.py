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
import time
from dataclasses import dataclass, field
from pathlib import Path

from ...files import PREDICTIONS_FILE, read_record
from ...report.aer import training_seconds
from .claims import Worker, config_digest, live_claims, try_claim
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


def _steps(run: Run, state: str, train_cmd: list[str], eval_cmd: list[str]) -> list[tuple[str, list[str]]]:
    steps = []
    if state == "train":
        steps.append(("llamafactory-cli train", [*train_cmd, "train", str(run.yaml_path)]))
    steps.append(("p2d-eval", [*eval_cmd, run.output_dir]))
    return steps


def _environment(run: Run) -> dict[str, str]:
    env = dict(os.environ)
    if run.config.get("deepspeed") and "FORCE_TORCHRUN" not in env:
        env["FORCE_TORCHRUN"] = "1"  # LLaMA-Factory launches DeepSpeed through torchrun only
    return env


def _print_dry_run(label: str, state: str, steps: list[tuple[str, list[str]]], env: dict[str, str]) -> None:
    print(f"p2d-sweep: {label}: would {'train and evaluate' if state == 'train' else 'evaluate'}")
    prefix = "FORCE_TORCHRUN=1 " if env.get("FORCE_TORCHRUN") and "FORCE_TORCHRUN" not in os.environ else ""
    for _, cmd in steps:
        print(f"    {prefix}{shlex.join(cmd)}")


@dataclass
class Sweep:
    """One pass over the runs, then more while other workers hold cells this one waits for."""

    runs: list[Run]
    train_cmd: list[str]
    eval_cmd: list[str]
    keep_going: bool
    dry_run: bool
    worker: Worker = field(default_factory=Worker)
    poll_seconds: float = 30.0
    outcome: SweepOutcome = field(default_factory=SweepOutcome)
    bad: set[Path] = field(default_factory=set)  # output dirs of runs that failed or were skipped
    done: set[Path] = field(default_factory=set)  # output dirs this worker has settled
    stop: bool = False

    def label(self, run: Run) -> str:
        return f"[{self.runs.index(run) + 1}/{len(self.runs)}] {run.output_dir} ({run.yaml_path})"

    def settle(self, run: Run, failed: str | None = None, skipped: str | None = None) -> None:
        out = Path(os.path.abspath(run.output_dir))
        self.done.add(out)
        if failed is not None:
            self.outcome.failed.append((run, failed))
            self.bad.add(out)
            self.stop = not self.keep_going and not self.dry_run
        elif skipped is not None:
            self.outcome.skipped.append((run, skipped))
            self.bad.add(out)

    def step(self, run: Run, produced: set[Path], by_output: dict[Path, Run]) -> bool:
        """Try ``run`` once; False when it waits for another worker (its cell or a cell it needs)."""
        label, state = self.label(run), _state(run)
        if state == "finished":
            if Path(os.path.abspath(run.output_dir)) not in self.done:
                self.outcome.finished_before.append(run)
                print(f"p2d-sweep: {label}: finished, skipped", flush=True)
            self.done.add(Path(os.path.abspath(run.output_dir)))
            return True
        failed_deps = [by_output[need].output_dir for need in run.needs if need in self.bad]
        if failed_deps:
            reason = f"needs {', '.join(failed_deps)}, which {'cannot run' if self.dry_run else 'did not finish'}"
            print(f"p2d-sweep: {label}: skipped: {reason}", flush=True)
            self.settle(run, skipped=reason)
            return True
        if not self.dry_run and any(need in by_output and not is_finished(by_output[need]) for need in run.needs):
            return False  # another worker runs what it needs
        problems = preflight(run, produced - self.bad) if state == "train" else []
        if problems:
            reason = "; ".join(problems)
            print(f"p2d-sweep: {label}: cannot start: {reason}", file=sys.stderr, flush=True)
            self.settle(run, failed=f"cannot start: {reason}")
            return True
        env, steps = _environment(run), _steps(run, state, self.train_cmd, self.eval_cmd)
        if self.dry_run:
            _print_dry_run(label, state, steps, env)
            self.done.add(Path(os.path.abspath(run.output_dir)))
            return True
        claim = try_claim(run.output_dir, run.yaml_path, config_digest(run.config), self.worker)
        if claim is None:
            return False
        try:
            if is_finished(run):  # another worker finished it since this one looked
                self.done.add(Path(os.path.abspath(run.output_dir)))
                return True
            state = _state(run)
            print(f"p2d-sweep: {label}: {'training' if state == 'train' else 'evaluating'}", flush=True)
            error = _run_steps(run, _steps(run, state, self.train_cmd, self.eval_cmd), env, self.outcome)
        finally:
            claim.release()
        if error is not None:
            print(f"p2d-sweep: run {run.yaml_path} failed: {error}", file=sys.stderr, flush=True)
            self.settle(run, failed=error)
            return True
        if state == "evaluate":
            self.outcome.evaluated.append(run)
        self.done.add(Path(os.path.abspath(run.output_dir)))
        return True

    def run(self) -> SweepOutcome:
        by_output = {Path(os.path.abspath(run.output_dir)): run for run in self.runs}
        produced = set(by_output)
        announced = False
        while True:
            settled = len(self.done)
            pending = [run for run in self.runs if Path(os.path.abspath(run.output_dir)) not in self.done]
            waiting = [run for run in pending if not self.stop and not self.step(run, produced, by_output)]
            if self.stop or not waiting:
                return self.outcome
            needed = {need for run in waiting for need in run.needs if need in by_output}
            held = live_claims([run.output_dir for run in waiting], self.worker)
            held += live_claims([by_output[need].output_dir for need in needed], self.worker)
            if held:
                if not announced:
                    print(f"p2d-sweep: waiting for other workers: {', '.join(sorted(set(held)))}", flush=True)
                    announced = True
                time.sleep(self.poll_seconds)
            elif len(self.done) == settled:  # nothing moved and nobody holds what they wait for
                for run in waiting:
                    self.settle(run, skipped="waits for cells no worker runs")
                return self.outcome


def run_sweep(
    runs: list[Run],
    train_cmd: list[str],
    eval_cmd: list[str],
    keep_going: bool,
    dry_run: bool,
    worker: Worker | None = None,
    poll_seconds: float = 30.0,
) -> SweepOutcome:
    """Train and evaluate what is not finished, claiming each cell first (several sweeps share a grid); returns a
    SweepOutcome."""
    sweep = Sweep(runs, train_cmd, eval_cmd, keep_going, dry_run, worker or Worker(), poll_seconds)
    return sweep.run()
