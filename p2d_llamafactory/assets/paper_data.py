"""``p2d-data``: the paper's three data sets (GSM8K, DialogSum, BioInstruct) as LLaMA-Factory alpaca files.

The paper (Appendix A.1) shuffles each data set with a fixed seed and splits it 90/10 into train and test,
following Data Whisperer (Wang et al., 2025). That split is NOT a split of the Hugging Face Hub releases
(``openai/gsm8k`` has its own train/test, DialogSum its own train/validation/test, BioInstruct only
``train``), so the exact paper split can only be reproduced from a local copy that holds it. The shared data
folder (default ``../shared/data`` relative to the current directory) is such a copy, laid out as::

    <source>/gsm8k/{train,test}.json        question, answer (ends with "#### <number>")
    <source>/dialogsum/{train,test}.json    id, dialogue, summary, topic; test rows also carry `references`
    <source>/bioinstruct/{train,test}.json  instruction, input, output

``p2d-data`` converts it into ``--output-dir`` (default ``data_info``) as ``p2d_<dataset>_<split>.json``
with ``instruction``/``input``/``output`` (GSM8K: the question is the instruction, the input is empty;
DialogSum: the instruction is :data:`DIALOGSUM_INSTRUCTION` and the dialogue is the input), keeping ``id``
where the source has one and the DialogSum test ``references`` (for ``p2d-eval --references``). The files
are registered in ``<output-dir>/dataset_info.json`` as ``<dataset>_local`` (train) and
``<dataset>_local_test`` (test); other entries are kept. ``p2d_data_manifest.json`` records, per data set,
the source folder, ``--max-train``/``--max-test`` and each written file's row count and sha256 (file names do
not change with the limits). Everything is written atomically and reruns give byte-identical files.

:func:`hub_entries` gives the registry entries for the Hub releases (``gsm8k``, ``dialogsum``,
``bioinstruct``, each their Hub ``train`` split) for networked machines; ``--register-hub`` merges them
into the output ``dataset_info.json`` (``--hub-only`` does only that and reads no local data). Usage::

    p2d-data                                              # all three, from ../shared/data into data_info/
    p2d-data --datasets gsm8k,dialogsum --max-train 500 --max-test 100
    p2d-data --hub-only                                   # just the Hub entries in data_info/dataset_info.json
    p2d-data --max-train 400 --max-val 64 --max-test 125  # a validation split carved from the train split

``--max-val N`` carves a validation split for tuning (learning rates, never the test split) out of the
training split: its *last* N rows become ``p2d_<dataset>_val.json`` (``<dataset>_local_val``), and the training
pool (``--max-train``) is taken from the rows before them, so pool and validation never overlap.
"""

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..io import atomic_write_json, atomic_write_text


__all__ = [
    "DATASETS",
    "DEFAULT_OUTPUT_DIR",
    "DEFAULT_SOURCE",
    "DIALOGSUM_INSTRUCTION",
    "MANIFEST_FILE",
    "PaperDataError",
    "convert_row",
    "convert_rows",
    "file_name",
    "hub_entries",
    "local_entries",
    "main",
    "merge_dataset_info",
    "read_source",
    "registry_name",
    "write_paper_data",
]

DATASETS = ("gsm8k", "dialogsum", "bioinstruct")
SPLITS = ("train", "test")
VAL_SPLIT = "val"  # carved from the end of the train split by ``--max-val``
DEFAULT_SOURCE = os.path.join("..", "shared", "data")
DEFAULT_OUTPUT_DIR = "data_info"
DATASET_INFO = "dataset_info.json"
MANIFEST_FILE = "p2d_data_manifest.json"
DIALOGSUM_INSTRUCTION = "Summarize the following dialogue."


class PaperDataError(ValueError):
    """Bad or missing input; the message names the file (and the row where it applies)."""


def file_name(dataset: str, split: str) -> str:
    """``p2d_<dataset>_<split>.json``."""
    return f"p2d_{dataset}_{split}.json"


def registry_name(dataset: str, split: str) -> str:
    """``<dataset>_local`` for train, ``<dataset>_local_test`` for test, ``<dataset>_local_val`` for val."""
    return f"{dataset}_local" if split == "train" else f"{dataset}_local_{split}"


def hub_entries() -> dict[str, dict[str, Any]]:
    """LLaMA-Factory ``dataset_info.json`` entries for the Hugging Face Hub releases (their ``train`` splits;
    the paper's 90/10 split is not a Hub split, see the module docstring)."""
    return {
        "gsm8k": {
            "hf_hub_url": "openai/gsm8k",
            "subset": "main",
            "split": "train",
            "columns": {"prompt": "question", "response": "answer"},
        },
        "dialogsum": {
            "hf_hub_url": "knkarthick/dialogsum",
            "split": "train",
            "columns": {"prompt": "dialogue", "response": "summary"},
        },
        "bioinstruct": {
            "hf_hub_url": "bio-nlp-umass/bioinstruct",
            "split": "train",
            "columns": {"prompt": "instruction", "query": "input", "response": "output"},
        },
    }


def local_entries(datasets: Iterable[str] = DATASETS, splits: Sequence[str] = SPLITS) -> dict[str, dict[str, Any]]:
    """Registry entries for the converted local files (alpaca columns, so only ``file_name``)."""
    return {
        registry_name(dataset, split): {"file_name": file_name(dataset, split)}
        for dataset in datasets
        for split in splits
    }


def _string(row: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = row.get(key, default)
    if not isinstance(value, str):
        problem = "missing" if key not in row else f"not a string ({type(value).__name__})"
        raise PaperDataError(f"{where}: field '{key}' is {problem}")
    return value


def convert_row(dataset: str, row: dict[str, Any], where: str = "row") -> dict[str, Any]:
    """One source row as an alpaca record (``id`` first where present, ``references`` last for DialogSum)."""
    if not isinstance(row, dict):
        raise PaperDataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    record: dict[str, Any] = {}
    if "id" in row:
        record["id"] = row["id"]
    if dataset == "gsm8k":
        record.update(instruction=_string(row, "question", where), input="", output=_string(row, "answer", where))
    elif dataset == "dialogsum":
        record.update(
            instruction=DIALOGSUM_INSTRUCTION,
            input=_string(row, "dialogue", where),
            output=_string(row, "summary", where),
        )
        if "references" in row:
            refs = row["references"]
            if not isinstance(refs, list) or not refs or not all(isinstance(ref, str) for ref in refs):
                raise PaperDataError(f"{where}: field 'references' must be a non-empty list of strings")
            record["references"] = list(refs)
    elif dataset == "bioinstruct":
        record.update(
            instruction=_string(row, "instruction", where),
            input=_string(row, "input", where, default=""),
            output=_string(row, "output", where),
        )
    else:
        raise PaperDataError(f"unknown dataset '{dataset}'; expected one of {', '.join(DATASETS)}")
    return record


def convert_rows(dataset: str, rows: Sequence[Any], source_name: str = "source") -> list[dict[str, Any]]:
    """All rows of one split, converted with :func:`convert_row` (errors name ``source_name`` and the row)."""
    return [convert_row(dataset, row, f"{source_name}, row {i}") for i, row in enumerate(rows)]


def source_path(source: str | os.PathLike, dataset: str, split: str) -> Path:
    return Path(source) / dataset / f"{split}.json"


def read_source(source: str | os.PathLike, dataset: str, split: str) -> tuple[list[Any], bytes]:
    """The rows of ``<source>/<dataset>/<split>.json`` and the file's bytes."""
    path = source_path(source, dataset, split)
    if not path.is_file():
        raise PaperDataError(f"source file not found: {path} (pass the shared data folder with --source)")
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise PaperDataError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, list):
        raise PaperDataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    if not data:
        raise PaperDataError(f"{path}: no rows (the list is empty)")
    return data, raw


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _read_json_object(path: Path, what: str) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise PaperDataError(f"{path} is not valid JSON ({err}); fix or remove it and run again") from err
    if not isinstance(data, dict):
        raise PaperDataError(f"{path} must hold a JSON object ({what})")
    return data


def merge_dataset_info(path: str | os.PathLike, entries: dict[str, Any]) -> dict[str, Any]:
    """Merge ``entries`` into the ``dataset_info.json`` at ``path`` (created if missing) atomically.

    Existing entries keep their place and content unless ``entries`` replaces them; new ones are appended.
    An unchanged file is not rewritten. Returns the merged registry.
    """
    path = Path(path)
    info = _read_json_object(path, "the LLaMA-Factory dataset registry")
    merged = {**info, **entries}
    text = _dumps(merged)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)
    return merged


def _limit(rows: list[Any], limit: int | None) -> list[Any]:
    return rows if limit is None else rows[:limit]


def write_paper_data(
    source: str | os.PathLike = DEFAULT_SOURCE,
    output_dir: str | os.PathLike = DEFAULT_OUTPUT_DIR,
    datasets: Iterable[str] = DATASETS,
    max_train: int | None = None,
    max_test: int | None = None,
    register_hub: bool = False,
    max_val: int | None = None,
) -> dict[str, Any]:
    """Convert ``datasets`` from the shared layout at ``source`` into ``output_dir`` and register them.

    ``max_train``/``max_test`` keep the first N rows of each split; ``max_val`` moves the last N train rows into a
    validation split (before ``max_train`` applies). All sources are read and checked before anything is written. Returns the manifest (as written to ``<output_dir>/p2d_data_manifest.json``).
    """
    datasets = _check_datasets(datasets)
    for name, value in (("max_train", max_train), ("max_test", max_test), ("max_val", max_val)):
        if value is not None and value < 1:
            raise PaperDataError(f"{name} must be >= 1; got {value}")
    output_dir = Path(output_dir)
    limits = {"train": max_train, "test": max_test, VAL_SPLIT: None}
    splits = (*SPLITS, VAL_SPLIT) if max_val is not None else SPLITS

    # read and convert everything first: a bad source leaves the output folder untouched
    planned: list[tuple[str, str, str, dict[str, Any]]] = []  # (dataset, split, text, manifest entry)
    for dataset in datasets:
        for split in splits:
            source_split = "train" if split == VAL_SPLIT else split
            rows, raw = read_source(source, dataset, source_split)
            if max_val is not None and split != "test":
                rows = _carve_validation(rows, max_val, dataset, split)
            where = str(source_path(source, dataset, source_split))
            records = convert_rows(dataset, _limit(rows, limits[split]), where)
            text = _dumps(records)
            entry = {
                "dataset": registry_name(dataset, split),
                "file": file_name(dataset, split),
                "rows": len(records),
                "source_rows": len(rows),
                "source_sha256": hashlib.sha256(raw).hexdigest(),
                "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            }
            planned.append((dataset, split, text, entry))
    manifest_path = output_dir / MANIFEST_FILE
    manifest = _read_json_object(manifest_path, "the p2d-data manifest")
    old = manifest.get("datasets")
    old = old if isinstance(old, dict) else {}
    info_path = output_dir / DATASET_INFO
    _read_json_object(info_path, "the LLaMA-Factory dataset registry")  # fail before writing data files

    resolved_source = str(Path(source).resolve())
    new: dict[str, Any] = {}
    for dataset, split, text, entry in planned:
        atomic_write_text(output_dir / entry["file"], text)
        item = new.setdefault(
            dataset,
            {
                "source": os.path.join(resolved_source, dataset),
                "max_train": max_train,
                "max_test": max_test,
                "max_val": max_val,
            },
        )
        item[split] = entry
    merged = {**old, **new}
    order = [name for name in DATASETS if name in merged] + sorted(name for name in merged if name not in DATASETS)
    manifest = {"generator": "p2d-data", "datasets": {name: merged[name] for name in order}}
    atomic_write_json(manifest_path, manifest)

    entries = local_entries(datasets, splits)
    if register_hub:
        entries.update(hub_entries())
    merge_dataset_info(info_path, entries)
    return manifest


def _carve_validation(rows: list[Any], max_val: int, dataset: str, split: str) -> list[Any]:
    """The validation rows (the last ``max_val`` of the train split) or the train rows before them."""
    if max_val >= len(rows):
        raise PaperDataError(
            f"--max-val {max_val} would take all {len(rows)} {dataset} train rows; leave rows to train on."
        )
    return rows[-max_val:] if split == VAL_SPLIT else rows[:-max_val]


def _check_datasets(datasets: Iterable[str]) -> list[str]:
    names = [name.strip() for name in datasets if name.strip()]
    unknown = [name for name in names if name not in DATASETS]
    if unknown:
        raise PaperDataError(f"unknown dataset(s) {', '.join(unknown)}; expected some of {', '.join(DATASETS)}")
    if not names:
        raise PaperDataError(f"no dataset selected; expected some of {', '.join(DATASETS)}")
    return [name for name in DATASETS if name in names]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2d-data",
        description="Write the paper's GSM8K / DialogSum / BioInstruct splits (from the shared data folder) as "
        "LLaMA-Factory alpaca files and register them in <output-dir>/dataset_info.json.",
    )
    parser.add_argument(
        "--source", default=DEFAULT_SOURCE, help=f"shared data folder (default: {DEFAULT_SOURCE}, from the cwd)"
    )
    parser.add_argument(
        "--output-dir",
        default=DEFAULT_OUTPUT_DIR,
        help=f"dataset_dir for LLaMA-Factory (default: {DEFAULT_OUTPUT_DIR})",
    )
    parser.add_argument(
        "--datasets",
        default=",".join(DATASETS),
        help=f"comma-separated subset of {','.join(DATASETS)} (default: all)",
    )
    parser.add_argument(
        "--max-train", type=_positive_int, default=None, metavar="N", help="keep the first N train rows"
    )
    parser.add_argument("--max-test", type=_positive_int, default=None, metavar="N", help="keep the first N test rows")
    parser.add_argument(
        "--max-val",
        type=_positive_int,
        default=None,
        metavar="N",
        help="carve a validation split (for tuning) from the last N train rows; the pool comes from the rows before",
    )
    parser.add_argument(
        "--register-hub",
        action="store_true",
        help="also register the Hugging Face Hub releases (gsm8k, dialogsum, bioinstruct) in dataset_info.json",
    )
    parser.add_argument(
        "--hub-only",
        action="store_true",
        help="only register the Hub entries; read and write no local data",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output_dir = Path(args.output_dir)
    try:
        if args.hub_only:
            merge_dataset_info(output_dir / DATASET_INFO, hub_entries())
            print(f"p2d-data: registered {', '.join(hub_entries())} (Hub) in {output_dir / DATASET_INFO}")
            return 0
        manifest = write_paper_data(
            source=args.source,
            output_dir=output_dir,
            datasets=args.datasets.split(","),
            max_train=args.max_train,
            max_test=args.max_test,
            register_hub=args.register_hub,
            max_val=args.max_val,
        )
    except (PaperDataError, OSError) as err:
        print(f"p2d-data: error: {err}", file=sys.stderr)
        return 1
    selected = _check_datasets(args.datasets.split(","))
    for dataset in selected:
        item = manifest["datasets"][dataset]
        for split in (s for s in (*SPLITS, VAL_SPLIT) if s in item):
            entry = item[split]
            print(
                f"p2d-data: {output_dir / entry['file']}: {entry['rows']} of {entry['source_rows']} rows "
                f"as '{entry['dataset']}'"
            )
    hub = f" and the Hub entries {', '.join(hub_entries())}" if args.register_hub else ""
    count = sum(split in manifest["datasets"][d] for d in selected for split in (*SPLITS, VAL_SPLIT))
    print(f"p2d-data: registered {count} local entries{hub} in {output_dir / DATASET_INFO}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
