"""A single-node Slurm cluster on this machine for one test: munge, slurmctld and slurmd from Debian's packages
(``slurmctld slurmd munge``), configured in a temporary folder, stopped afterwards."""

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue")


def missing() -> str | None:
    """Why no local Slurm can run here, or None."""
    absent = [name for name in DAEMONS if shutil.which(name) is None and not Path(f"/usr/sbin/{name}").exists()]
    if absent:
        return f"Slurm is not installed ({', '.join(absent)} missing; Debian: apt-get install slurmctld slurmd munge)"
    if os.geteuid() != 0:
        return "the local Slurm test starts munged, slurmctld and slurmd as root"
    return None


def _conf(root: Path, cpus: int) -> str:
    host = socket.gethostname()
    return f"""ClusterName=p2dtest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldPort=16817
SlurmdPort=16818
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE
"""


def _start_munge(root: Path) -> None:
    """A munged of the test's own: key, socket, log, pid and seed under ``root``, so the system's munge set-up
    (file owners, a daemon already running or not) does not matter."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = root / "munge.key"
    subprocess.run(["mungekey", "--create", "--force", f"--keyfile={key}"], check=True, capture_output=True)
    started = subprocess.run(
        [
            "munged",
            "--force",
            f"--key-file={key}",
            f"--socket={root / 'munge.socket'}",
            f"--log-file={root / 'munged.log'}",
            f"--pid-file={root / 'munged.pid'}",
            f"--seed-file={root / 'munged.seed'}",
        ],
        capture_output=True,
        text=True,
    )
    if started.returncode != 0:
        raise RuntimeError(f"munged did not start: {started.stderr.strip()}")


@contextmanager
def local_slurm(root: Path, cpus: int = 4) -> Iterator[dict[str, str]]:
    """Start the cluster; yields the environment (``SLURM_CONF``) its commands need."""
    for folder in ("state", "spool"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    (root / "slurm.conf").write_text(_conf(root, cpus))
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
    _start_munge(root / "munge")
    subprocess.run(["slurmctld", "-c"], env=env, check=True)
    subprocess.run(["slurmd"], env=env, check=True)
    try:
        deadline = time.monotonic() + 60
        while "idle" not in subprocess.run(["sinfo", "-h"], env=env, capture_output=True, text=True).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local Slurm did not come up: {(root / 'slurmctld.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield env
    finally:
        subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True)
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            if (root / pid_file).exists():
                subprocess.run(["kill", (root / pid_file).read_text().strip()], capture_output=True)
        time.sleep(1)


def wait_for_jobs(env: dict[str, str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True).stdout.strip():
        if time.monotonic() > deadline:
            raise TimeoutError("Slurm jobs still running")
        time.sleep(0.5)
