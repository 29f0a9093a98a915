"""Scores checkpointed while scoring: resume after a kill, reuse identical reruns, never mix settings."""

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from ..distributed import from_rank0, rank, world_size
from ..files import PROGRESS_FILE, SCORES_FILE
from ..hparams import with_later_keys
from ..io import atomic_write_text, read_json
from .probe import PromptResult


logger = logging.getLogger(__name__)


def same_selection(recorded: Any, settings: dict[str, Any]) -> bool:
    """Whether a recorded selection identity is ``settings`` (keys declared since it was written at their
    defaults)."""
    return isinstance(recorded, dict) and with_later_keys(recorded, "selection") == with_later_keys(
        settings, "selection"
    )


def finished_scores(output_dir: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The final scores of an identical earlier run, if any."""
    path = output_dir / SCORES_FILE
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except ValueError:
        return None
    if not same_selection(data.get("settings"), settings):
        logger.info("P2D: %s was made with other settings; scoring again", path)
        return None
    return data


def progress_file(rank: int, world_size: int) -> str:
    """The checkpoint file one rank appends to: ``PROGRESS_FILE`` in a single process, one file per rank else."""
    return PROGRESS_FILE if world_size == 1 else PROGRESS_FILE.replace(".jsonl", f".rank{rank}.jsonl")


def progress_files(output_dir: Path) -> list[Path]:
    """Every rank's checkpoint file in ``output_dir``, whatever world size wrote it."""
    return sorted(output_dir.glob(PROGRESS_FILE.replace(".jsonl", "*.jsonl")))


class ProbeCheckpoint:
    """Append-only JSONL files: a settings header, then one finished unit per line (a probe prompt, or a
    ``record_type`` such as a Nuggets candidate, keyed by its ``key`` field).

    Each rank appends to its own file (:func:`progress_file`). A resumed run reads every file with the same settings,
    whatever world size wrote it (a unit finished by any rank is finished), so a rerun with another number of ranks
    re-shards what is left; files with other settings are never mixed in."""

    def __init__(
        self, output_dir: Path, settings: dict[str, Any], record_type: type = PromptResult, key: str = "plan"
    ) -> None:
        self.output_dir = output_dir
        self.path = output_dir / progress_file(rank(), world_size())
        self.settings = settings
        self.record_type, self.key = record_type, key
        self.previous_seconds = 0.0  # scoring time of the interrupted sessions, up to their last finished prompt
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        """Scoring seconds across every session of this run."""
        return self.previous_seconds + (time.perf_counter() - self.started)

    def load(self) -> dict[int, Any]:
        """Finished units of an interrupted run with the same settings ({} if none), the same on every rank: rank 0
        reads them; then each rank keeps appending to its own file, or starts it afresh."""
        done, previous = from_rank0(self._read_finished() if rank() == 0 else None)
        self.started = time.perf_counter()
        self.previous_seconds = previous
        if done:
            logger.info("P2D: resuming data scoring, %d already scored", len(done))
        if self._header() is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json_line(self.path, {"settings": self.settings})
        return done

    def _header(self) -> dict[str, Any] | None:
        """This rank's file header, if it is one with these settings."""
        if not self.path.is_file():
            return None
        with open(self.path, encoding="utf-8") as f:
            header = _parse(f.readline())
        return header if isinstance(header, dict) and same_selection(header.get("settings"), self.settings) else None

    def _read_finished(self) -> tuple[dict[int, Any], float]:
        done: dict[int, Any] = {}
        previous = 0.0
        for path in progress_files(self.output_dir):
            lines = path.read_text(encoding="utf-8").splitlines()
            header = _parse(lines[0]) if lines else None
            if not (isinstance(header, dict) and same_selection(header.get("settings"), self.settings)):
                logger.warning("P2D: ignoring %s, it was made with other settings", path)
                continue
            for line in lines[1:]:
                record = _parse(line)
                if record is not None:  # a line cut by a kill is simply redone
                    previous = max(previous, float(record.pop("elapsed", 0.0)))
                    done[record[self.key]] = self.record_type(**record)
        return done, previous

    def append(self, result: Any) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({**result.__dict__, "elapsed": self.elapsed()}, allow_nan=False) + "\n")
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json_line(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, allow_nan=False) + "\n")


def _parse(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None
