"""Scores checkpointed while scoring: resume after a kill, reuse identical reruns, never mix settings."""

import json
import logging
import os
import time
import typing
from pathlib import Path
from typing import Any

from ..distributed import from_rank0, rank, world_size
from ..files import PROGRESS_FILE, SCORES_FILE, all_finite, check_regular_file
from ..hparams import same_identity
from ..io import atomic_write_text
from .probe import PromptResult


logger = logging.getLogger(__name__)


def same_selection(recorded: Any, settings: dict[str, Any]) -> bool:
    """Whether a recorded selection identity is ``settings`` (see ``hparams.same_identity``)."""
    return same_identity(recorded, settings, "selection")


def finished_scores(output_dir: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The final scores of an identical earlier run, if any."""
    from .select import read_scores_file  # the one validated reader of scores files

    path = output_dir / SCORES_FILE
    if not path.is_file():
        return None
    try:
        data = read_scores_file(path, "the run's own scores file")
    except ValueError as err:
        logger.warning("P2D: %s; scoring again", err)
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
            try:
                check_regular_file(path, "the probing checkpoint")
                lines = path.read_text(encoding="utf-8").splitlines()
            except (ValueError, UnicodeDecodeError) as err:
                logger.warning("P2D: ignoring %s: %s", path, err)
                continue
            header = _parse(lines[0]) if lines else None
            if not (isinstance(header, dict) and same_selection(header.get("settings"), self.settings)):
                logger.warning("P2D: ignoring %s, it was made with other settings", path)
                continue
            bad = 0
            for line in lines[1:]:
                record = _parse(line)
                unit = self._unit(record)
                if unit is None:  # a line cut by a kill, or one that is not a record of this run: redone
                    bad += record is not None
                    continue
                previous = max(previous, float(record["elapsed"]))
                done[record[self.key]] = unit
            if bad:
                logger.warning(
                    "P2D: %d lines of %s are not records of this probing; those units are scored again", bad, path
                )
        return done, previous

    def _unit(self, record: Any) -> Any:
        """The finished unit in a checkpoint line, or None where the line is not exactly one (fields, types,
        finite numbers)."""
        fields = set(self.record_type.__dataclass_fields__)
        if not isinstance(record, dict) or set(record) != fields | {"elapsed"} or not all_finite(record):
            return None
        elapsed, key = record["elapsed"], record[self.key]
        if isinstance(elapsed, bool) or not isinstance(elapsed, (int, float)) or elapsed < 0:
            return None
        if isinstance(key, bool) or not isinstance(key, int):
            return None
        values = {k: v for k, v in record.items() if k != "elapsed"}
        hints = typing.get_type_hints(self.record_type)
        return self.record_type(**values) if all(_fits(values[k], hints[k]) for k in values) else None

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


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the type of a record field (int, float, list[int], list[float])."""
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(_fits(v, typing.get_args(hint)[0]) for v in value)
    if isinstance(value, bool):
        return False
    return isinstance(value, int) if hint is int else isinstance(value, (int, float)) if hint is float else True
