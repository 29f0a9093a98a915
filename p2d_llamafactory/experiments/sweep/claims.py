"""Claims: how several ``p2d-sweep`` processes (on one machine, or on many sharing the output filesystem) share one
grid without any coordination beyond files.

A worker claims a cell before running it by creating ``<output_dir's parent>/.p2d-sweep-claims/<name>.json``
atomically (``O_CREAT | O_EXCL``). The claim names the worker (host, pid) and the cell's config digest, and the
worker touches it every ``timeout / 4`` seconds while the cell runs (its heartbeat). A claim is stale when its worker
is gone: on the same host when its process no longer exists, on another host when its heartbeat is older than
``timeout``. A stale claim is removed under a take-over mutex (only one of several racing workers removes it) and
claimed anew, so a cell is never run by two live workers; a finished cell is never run at all.
"""

import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...io import process_alive
from .runs import SweepError


CLAIM_DIR = ".p2d-sweep-claims"
DEFAULT_TIMEOUT = 600.0  # seconds without a heartbeat after which another host's claim is stale


@dataclass(frozen=True)
class Worker:
    """This process as a sweep worker."""

    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    timeout: float = DEFAULT_TIMEOUT

    @property
    def name(self) -> str:
        return f"{self.host}:{self.pid}"


def config_digest(config: dict[str, Any]) -> str:
    """What identifies a cell's run: its whole config (two grids writing one output dir differ here)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def claim_path(output_dir: str | os.PathLike) -> Path:
    out = Path(os.path.abspath(output_dir))
    return out.parent / CLAIM_DIR / f"{out.name}.json"


def _read(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # gone, or being written
    return record if isinstance(record, dict) else None


def holder_alive(record: dict[str, Any], path: Path, worker: Worker) -> bool:
    """Whether the worker that wrote ``record`` still holds the claim at ``path``."""
    if record.get("host") == worker.host:
        return process_alive(record.get("pid", -1))
    try:
        return time.time() - path.stat().st_mtime < worker.timeout
    except FileNotFoundError:
        return False


class Claim:
    """A held claim: its heartbeat runs until :meth:`release`."""

    def __init__(self, path: Path, worker: Worker) -> None:
        self.path = path
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, args=(max(worker.timeout / 4, 0.05),), daemon=True)
        self._beat.start()

    def _heartbeat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def release(self) -> None:
        self._stop.set()
        self._beat.join()
        self.path.unlink(missing_ok=True)


def _remove_stale(path: Path, stale: dict[str, Any], worker: Worker) -> bool:
    """Remove the stale claim ``stale`` at ``path`` under a take-over mutex, so that of several workers taking it
    over at once only one removes it (and none removes the fresh claim another has made since); False when another
    worker is taking it over."""
    mutex = path.with_name(f"{path.name}.takeover")
    try:
        fd = os.open(mutex, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            if time.time() - mutex.stat().st_mtime > worker.timeout:  # its taker died in between
                mutex.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
        return False
    os.close(fd)
    try:
        current = _read(path)
        if current == stale and not holder_alive(current, path, worker):
            path.unlink(missing_ok=True)
        return True
    finally:
        mutex.unlink(missing_ok=True)


def try_claim(output_dir: str, yaml_path: Path, digest: str, worker: Worker) -> Claim | None:
    """Claim the cell of ``output_dir`` for ``worker``; None while another live worker holds it. A claim made for
    another config (another grid writing the same output dir) is refused by name."""
    path = claim_path(output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"host": worker.host, "pid": worker.pid, "config": digest, "yaml": str(yaml_path), "since": time.time()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:  # being written this instant, or just released
                time.sleep(0.05)
                continue
            if holder.get("config") != digest:
                raise SweepError(
                    f"{output_dir} is claimed by a worker of another grid ({holder.get('yaml')} on "
                    f"{holder.get('host')}, config {holder.get('config')}) than {yaml_path} (config {digest}): two "
                    "grids write one output tree. Give them different output dirs."
                ) from None
            if holder_alive(holder, path, worker) or not _remove_stale(path, holder, worker):
                return None
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return Claim(path, worker)
    return None


def live_claims(output_dirs: list[str], worker: Worker) -> list[str]:
    """The output dirs of ``output_dirs`` that another live worker holds."""
    held = []
    for output_dir in output_dirs:
        path = claim_path(output_dir)
        holder = _read(path)
        if holder is not None and holder_alive(holder, path, worker):
            held.append(output_dir)
    return held
