"""The names of the files a run writes into its output dir, and the one reader of a result record.

Torch-free, so the offline tools (sweep, grid, evaluation) read runs back with the same names the stages write.
"""

import json
import logging
import math
import os
import stat
from pathlib import Path
from typing import Any


# stage I
HEADS_FILE = "p2d_heads.json"  # the head set (also in every P2D adapter and checkpoint)
HEATMAP_FILE = "p2d_heads.png"
LOFIT_HEADS_FILE = "p2d_lofit_heads.json"  # LoFiT's step 1 (finetuning_type: lofit), same format
# stage II
SCORES_FILE = "p2d_data_scores.json"
PROGRESS_FILE = "p2d_data_probe.partial.jsonl"
SELECTED_FILE = "p2d_data_selected.json"
STATS_FILE = "p2d_data_stats.json"
HISTOGRAM_FILE = "p2d_data_hist.png"
# stage III and the cost
RUN_FILE = "p2d_run.json"  # what stage III trained: heads, slices, share of the weights, learning rate
TIMINGS_FILE = "p2d_timings.json"
AER_FILE = "p2d_aer.json"
TRAINING_STATE_FILE = "p2d_training_time.json"  # in each checkpoint: training seconds up to its step
# evaluation
PREDICTIONS_FILE = "generated_predictions.jsonl"  # LLaMA-Factory's do_predict output
EVAL_FILE = "p2d_eval.json"


logger = logging.getLogger(__name__)
MAX_FILE_BYTES = 256 * 2**20  # far above any file a run writes (a 7B model's heads file is ~100 kB)


def check_regular_file(path: str | Path, what: str, max_bytes: int = MAX_FILE_BYTES) -> None:
    """Refuse, naming ``what`` and the path, anything but a regular file of at most ``max_bytes`` (after links): a
    folder, a named pipe (reading would wait forever), a device (``/dev/zero`` reads until memory runs out)."""
    try:
        info = os.stat(path)  # follows a symlink to what it points at
    except FileNotFoundError:
        raise ValueError(f"{what} {str(path)!r} does not exist.") from None
    except OSError as err:
        raise ValueError(f"{what} {str(path)!r} cannot be read: {err.strerror}.") from None
    if stat.S_ISDIR(info.st_mode):
        raise ValueError(f"{what} {str(path)!r} is a directory, not a file.")
    if not stat.S_ISREG(info.st_mode):
        kind = "a named pipe" if stat.S_ISFIFO(info.st_mode) else "a device or socket"
        raise ValueError(f"{what} {str(path)!r} is {kind}, not a regular file.")
    if info.st_size > max_bytes:
        raise ValueError(f"{what} {str(path)!r} holds {info.st_size} bytes, more than any P2D file ({max_bytes}).")


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def read_json_file(path: str | Path, what: str, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """The standard JSON in ``path`` (a regular UTF-8 file of bounded size; NaN and Infinity refused), or a
    ValueError naming ``what``, the path and what is wrong."""
    check_regular_file(path, what, max_bytes)
    try:
        with open(path, "rb") as f:
            text = f.read(max_bytes + 1).decode("utf-8")
        return json.loads(text, parse_constant=_no_constant)
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {str(path)!r} is not UTF-8 text (byte {err.start}).") from None
    except ValueError as err:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON: {err}") from None


def all_finite(value: Any) -> bool:
    """Whether every number in a JSON value (nested lists and objects) is finite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(all_finite(v) for v in value)
    return True


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".json")


def model_fingerprint(path: str | Path | None) -> str | None:
    """What identifies a local model folder's content, cheaply: its ``config.json`` bytes and the name, size and
    modification time of its weight and index files (a model replaced in place changes it; a copy does too). None
    for anything that is not a local folder (a hub name)."""
    import hashlib

    if path is None or not os.path.isdir(path):
        return None
    digest = hashlib.sha256()
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if not entry.is_file() or not entry.name.endswith(WEIGHT_SUFFIXES):
            continue
        info = entry.stat()
        digest.update(f"{entry.name}\0{info.st_size}\0{info.st_mtime_ns}\0".encode())
        if entry.name == "config.json":
            with open(entry.path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:16]


MERGED_KEY = "p2d_merged_adapters"  # in an exported model's config.json: the P2D adapters merged into it


def adapter_digest(folder: str | Path) -> str | None:
    """What identifies a saved adapter's weights: a hash of its ``adapter_model.safetensors`` (None without one)."""
    import hashlib

    path = Path(folder) / "adapter_model.safetensors"
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def read_record(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing or not one; a file that exists but cannot be read
    as one (not a regular file, not UTF-8, not standard JSON, NaN) is also None, with a warning naming it."""
    if not os.path.lexists(path):
        return None
    try:
        data = read_json_file(path, "the result file")
    except ValueError as err:
        logger.warning("P2D: %s; it is read as missing.", err)
        return None
    return data if isinstance(data, dict) else None
