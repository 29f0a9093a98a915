"""p2d-sweep workers sharing one grid through claim files (offline: the stub of test_sweep replaces
llamafactory-cli and p2d-eval)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p2d_llamafactory.experiments.sweep import main
from p2d_llamafactory.experiments.sweep.claims import Worker, claim_path, config_digest, try_claim
from p2d_llamafactory.experiments.sweep.runs import SweepError
from tests.experiments.conftest import STUB
from tests.experiments.test_sweep import _write_run


SLOW_STUB = (
    r"""
import os, sys, time
from pathlib import Path

import yaml

if sys.argv[1] == "train":
    out = Path(yaml.safe_load(open(sys.argv[2]))["output_dir"])
    first = Path(os.environ["STUB_MARK"])
    if out.name == "slow" and not first.exists():  # the first attempt at the slow cell hangs until killed
        first.write_text(str(os.getppid()))
        time.sleep(120)
    time.sleep(0.3)
"""
    + STUB
)


def _cells(project: Path, names: list[str]) -> list[Path]:
    return [_write_run(project / "grid" / f"{name}.yaml", finetuning_type="lora") for name in names]


def _launches(project: Path) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for line in (project / "calls.log").read_text().splitlines():
        mode, target = line.split()[:2]
        key = (mode, Path(target).stem if mode == "train" else Path(target).name)
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_three_workers_run_every_cell_once_and_take_over_a_killed_workers_cell(project, monkeypatch):
    (project / "slow_stub.py").write_text(SLOW_STUB)
    monkeypatch.setenv("P2D_SWEEP_LLAMAFACTORY_CLI", f"{sys.executable} {project / 'slow_stub.py'}")
    monkeypatch.setenv("P2D_SWEEP_P2D_EVAL", f"{sys.executable} {project / 'slow_stub.py'} eval")
    monkeypatch.setenv("STUB_MARK", str(project / "slow_started"))
    names = ["slow", *(f"cell{i}" for i in range(7))]
    _cells(project, names)
    command = [sys.executable, "-m", "p2d_llamafactory.experiments.sweep", "grid", "--worker", "--keep-going"]
    command += ["--poll-seconds", "0.2"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    workers = [
        subprocess.Popen(command, cwd=project, env=env, start_new_session=True, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    deadline = time.monotonic() + 60
    while not (project / "slow_started").exists():
        assert time.monotonic() < deadline, "no worker started the slow cell"
        time.sleep(0.05)
    holder = json.loads(claim_path(project / "saves/tiny/gsm8k/slow").read_text())
    victim = next(w for w in workers if w.pid == holder["pid"])
    os.killpg(victim.pid, signal.SIGKILL)  # the worker and its training child die mid-cell, as a node would
    victim.wait(timeout=30)
    logs = [w.communicate(timeout=120)[0] for w in workers if w is not victim]
    assert all(w.returncode == 0 for w in workers if w is not victim), logs

    launches = _launches(project)
    for name in names:
        assert launches[("eval", name)] == 1, name  # finished exactly once
        assert launches[("train", name)] == 1, name  # the stub logs a finished attempt only
        out = project / "saves/tiny/gsm8k" / name
        assert (out / "p2d_eval.json").is_file() and not claim_path(out).exists()
    assert int((project / "slow_started").read_text()) == victim.pid  # the first attempt was the killed worker's
    assert "No report (--worker)" in logs[0] and not (project / "saves/p2d_sweep_report").exists()
    assert main(["grid", "--collect-only"]) == 0  # one collect gathers the report
    assert (project / "saves/p2d_sweep_report").is_dir()


def test_a_claim_from_another_host_is_respected_until_its_heartbeat_is_stale(tmp_path):
    out = tmp_path / "saves" / "cell"
    path = claim_path(out)
    path.parent.mkdir(parents=True)
    digest = config_digest({"output_dir": str(out)})
    other = {"host": f"not-{socket.gethostname()}", "pid": 1, "config": digest, "yaml": "a.yaml", "since": 0}
    path.write_text(json.dumps(other))
    worker = Worker(timeout=0.4)
    assert try_claim(str(out), Path("b.yaml"), digest, worker) is None  # its heartbeat is fresh
    old = time.time() - 5
    os.utime(path, (old, old))
    claim = try_claim(str(out), Path("b.yaml"), digest, worker)  # silent for longer than the timeout: taken over
    assert claim is not None and json.loads(path.read_text())["pid"] == os.getpid()
    os.utime(path, (old, old))
    time.sleep(0.3)
    assert path.stat().st_mtime > old + 4  # this worker's heartbeat keeps it fresh
    claim.release()
    assert not path.exists()


def test_two_grids_in_one_output_tree_are_refused(project, capsys):
    (yaml_path,) = _cells(project, ["shared"])
    out = project / "saves/tiny/gsm8k/shared"
    with pytest.raises(SweepError, match=r"claimed by a worker of another grid .*two grids write one output tree"):
        held = try_claim(str(out), Path("other_grid.yaml"), "0123456789abcdef", Worker())
        assert held is not None  # a live worker of another grid holds the cell
        try_claim(str(out), yaml_path, config_digest({"output_dir": "x"}), Worker())
    assert main([str(yaml_path), "--worker"]) == 2
    assert "two grids write one output tree" in capsys.readouterr().err
    assert not (project / "calls.log").read_text()  # nothing ran


def test_a_slurm_array_of_workers_runs_the_grid_once(project, tmp_path_factory):
    """The documented sbatch script as a 3-task array on a local single-node Slurm."""
    from tests.helpers import slurm

    reason = slurm.missing()
    if reason is not None:
        pytest.skip(reason)
    names = [f"cell{i}" for i in range(6)]
    _cells(project, names)
    script = Path(__file__).resolve().parents[2] / "yaml_examples" / "slurm" / "p2d_sweep_array.sbatch"
    with slurm.local_slurm(tmp_path_factory.mktemp("slurm")) as env:
        env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # p2d-sweep of this venv
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
        env["P2D_SWEEP_ARGS"] = "--poll-seconds 0.2"
        submit = ["sbatch", "--parsable", "--array=0-2", str(script), "grid"]
        job = subprocess.run(submit, cwd=project, env=env, capture_output=True, text=True, check=True).stdout.strip()
        slurm.wait_for_jobs(env)
    logs = sorted(project.glob(f"p2d-sweep-{job}_*.log"))
    assert len(logs) == 3, [p.name for p in project.iterdir()]
    assert all("No report (--worker)" in log.read_text() for log in logs), [log.read_text()[-500:] for log in logs]
    launches = _launches(project)
    assert all(launches[("train", name)] == 1 and launches[("eval", name)] == 1 for name in names), launches
    assert main(["grid", "--collect-only"]) == 0
