"""The grid spec (yaml_examples/grid.yaml): its dataclasses, the keys it may set, and its validation.

Layers of settings, merged in this order (later wins): ``defaults``, ``models.<m>``, ``datasets.<d>``,
``models.<m>.datasets.<d>``, ``selections.<s>``, ``adaptations.<a>``, ``models.<m>.adaptations.<a>``,
``models.<m>.datasets.<d>.adaptations.<a>`` (a rate tuned for one data set), and for the tuning cells the
``tuning`` section's blocks.

Selection and adaptation names come from :mod:`p2d_llamafactory.methods`; the ``p2d_*`` keys of the method block
come from the dataclasses of :mod:`p2d_llamafactory.hparams`, looked up at call time (:func:`blocks`), so a key
that the plugin adds is accepted without touching this file.
"""

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ... import hparams, methods


# selection and adaptation names of the spec: every selection, Table 1's adaptations (no head-scorer ablations)
SELECTION_NAMES = tuple(methods.SELECTIONS)
ADAPTATION_NAMES = methods.TABLE1_ADAPTATIONS
HEAD_ADAPTATION_NAMES = tuple(name for name in ADAPTATION_NAMES if name in methods.HEAD_ADAPTATIONS)
LOCK_AND_KEY_HEADS = {"p2d": "p2d_heads", "random": "random_heads"}
ABLATION_KEYS = {"p2d_data_ratio": "rhoD", "p2d_head_ratio": "rhoP"}

# Key order inside each block follows LLaMA-Factory's examples (examples/train_lora/llama3_lora_sft.yaml,
# examples/train_full/llama3_full_sft.yaml); these are also the keys a spec may set. The method block's p2d_*
# keys follow them (blocks()).
LLAMAFACTORY_BLOCKS: dict[str, tuple[str, ...]] = {
    "model": ("model_name_or_path", "trust_remote_code", "flash_attn", "enable_liger_kernel"),
    "method": (
        "stage",
        "do_train",
        "finetuning_type",
        "deepspeed",
        "lora_rank",
        "lora_alpha",
        "lora_dropout",
        "lora_target",
    ),
    "dataset": (
        "dataset",
        "dataset_dir",
        "template",
        "cutoff_len",
        "max_samples",
        "overwrite_cache",
        "preprocessing_num_workers",
        "dataloader_num_workers",
    ),
    "output": (
        "output_dir",
        "logging_steps",
        "save_steps",
        "plot_loss",
        "overwrite_output_dir",
        "save_only_model",
        "report_to",
    ),
    "train": (
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "learning_rate",
        "num_train_epochs",
        "lr_scheduler_type",
        "lr_scheduler_kwargs",
        "warmup_ratio",
        "weight_decay",
        "adam_beta1",
        "adam_beta2",
        "max_grad_norm",
        "bf16",
        "fp16",
        "seed",
        "ddp_timeout",
        "resume_from_checkpoint",
    ),
    "eval": (
        "eval_dataset",
        "val_size",
        "per_device_eval_batch_size",
        "eval_strategy",
        "eval_steps",
        "do_predict",
        "predict_with_generate",
        "max_new_tokens",
        "do_sample",
        "temperature",
        "top_p",
    ),
}
# set by p2d-grid for each cell, never by the spec
CELL_KEYS = (
    "finetuning_type",
    "p2d_data_selection",
    "p2d_data_ratio",
    "p2d_head_selection",
    "p2d_head_ratio",
    "p2d_heads_file",
    "p2d_data_scores_file",
    "p2d_aer_reference",
    "p2d_seed",
    "seed",
    "dataset",
    "eval_dataset",
    "output_dir",
)

_TOP_KEYS = (
    "output_root",
    "budget",
    "p2d_heads_from",
    "aer_reference_from",
    "defaults",
    "models",
    "datasets",
    "selections",
    "adaptations",
    "ratio_ablations",
    "lock_and_key",
    "tuning",
    "notes",
)
_MODEL_KEYS = ("seeds", "dataset_names", "datasets", "adaptations", *LLAMAFACTORY_BLOCKS)
_TUNING_KEYS = ("models", "datasets", "selection", "eval_dataset", "learning_rates", *LLAMAFACTORY_BLOCKS)
# set by p2d-grid for each tuning cell (the swept rate, and the head slices at that rate as given)
TUNING_CELL_KEYS = ("learning_rate", "p2d_head_lr_scale")
TUNING_PREFIX = "tune__"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def blocks() -> dict[str, tuple[str, ...]]:
    """Block name -> its keys in the written order: LLaMA-Factory's, then the ``p2d_*`` keys in pipeline order."""
    table = dict(LLAMAFACTORY_BLOCKS)
    table["method"] = (*table["method"], *hparams.p2d_keys())
    return table


class GridSpecError(ValueError):
    """The spec is invalid; the message names the entry and the allowed values."""


def _allowed(values) -> str:
    return ", ".join(str(v) for v in values)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise GridSpecError(f"{where} must be a mapping; got {type(value).__name__} {value!r}.")
    return value


def _check_keys(entry: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in entry:
        if key not in allowed:
            raise GridSpecError(f"{where}: unknown key {key!r}; allowed: {_allowed(allowed)}.")


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or "__" in name:
        raise GridSpecError(
            f"{where}: {name!r} is not a usable name (letters, digits, '.', '_', '-'; no '__'; it names folders)."
        )
    return name


def _ratio(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 < float(value) <= 1.0):
        raise GridSpecError(f"{where} must be a number in (0, 1]; got {value!r}.")
    return float(value)


def _blocks(entry: Any, where: str) -> dict[str, dict[str, Any]]:
    """A layer of settings: block name -> {key: value}, every key known and in its own block."""
    entry = _mapping(entry, where)
    table = blocks()
    layer: dict[str, dict[str, Any]] = {}
    for block, values in entry.items():
        if block not in table:
            raise GridSpecError(f"{where}: unknown block {block!r}; allowed: {_allowed(table)}.")
        values = _mapping(values, f"{where}.{block}")
        for key in values:
            if key in CELL_KEYS:
                raise GridSpecError(
                    f"{where}.{block}.{key}: this key is set by p2d-grid for each cell (from budget, selections, "
                    "adaptations, seeds, dataset_names); remove it here."
                )
            if key not in table[block]:
                home = [name for name, keys in table.items() if key in keys]
                hint = f"; it belongs in the {home[0]!r} block" if home else ""
                raise GridSpecError(
                    f"{where}.{block}: unknown key {key!r}{hint}; allowed: "
                    f"{_allowed(k for k in table[block] if k not in CELL_KEYS)}."
                )
        layer[block] = dict(values)
    return layer


@dataclass
class ModelSpec:
    name: str
    seeds: list[int]
    names: dict[str, str]  # train / test dataset name patterns with {dataset}
    layer: dict[str, dict[str, Any]]
    dataset_layers: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # per-dataset overrides
    # per-adaptation overrides, merged after the adaptation layer (e.g. each method's tuned learning_rate)
    adaptation_layers: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    # dataset -> adaptation -> overrides, merged after adaptation_layers (a rate tuned on that data set only)
    dataset_adaptation_layers: dict[str, dict[str, dict[str, dict[str, Any]]]] = field(default_factory=dict)


@dataclass
class Ablation:
    table: str
    selection: str
    adaptation: str
    key: str
    values: list[float]


@dataclass
class TuningSpec:
    """Learning-rate sweeps on a validation split: one cell per (model, dataset, adaptation, learning rate)."""

    models: list[str]
    datasets: list[str]
    selection: str
    eval_dataset: str  # name pattern with {dataset}
    layer: dict[str, dict[str, Any]]
    learning_rates: dict[str, list[float]]  # adaptation -> rates; the first p2d_heads rate identifies the heads


@dataclass
class GridSpec:
    path: Path
    output_root: str
    budget: dict[str, float]
    heads_from: tuple[str, str] | None
    aer_reference_from: tuple[str, str] | None
    defaults: dict[str, dict[str, Any]]
    models: list[ModelSpec]
    datasets: dict[str, dict[str, dict[str, Any]]]
    selections: dict[str, dict[str, dict[str, Any]]]
    adaptations: dict[str, dict[str, dict[str, Any]]]
    ablations: list[Ablation]
    lock_and_key: list[tuple[str, str]]
    notes: dict[str, str]
    tuning: TuningSpec | None = None


def _split_cell(name: str, where: str) -> tuple[str, str]:
    parts = name.split("__") if isinstance(name, str) else []
    if len(parts) != 2 or parts[0] not in SELECTION_NAMES or parts[1] not in ADAPTATION_NAMES:
        raise GridSpecError(
            f"{where}: {name!r} is not a cell name <selection>__<adaptation> with a selection of "
            f"{_allowed(SELECTION_NAMES)} and an adaptation of {_allowed(ADAPTATION_NAMES)}."
        )
    return parts[0], parts[1]


def _parse_budget(data: dict[str, Any]) -> dict[str, float]:
    budget_entry = _mapping(data.get("budget"), "budget")
    _check_keys(budget_entry, tuple(ABLATION_KEYS), "budget")
    return {key: _ratio(budget_entry.get(key, 0.1), f"budget.{key}") for key in ABLATION_KEYS}


def _parse_methods(data: dict[str, Any], kind: str, allowed: tuple[str, ...]) -> dict[str, dict[str, dict[str, Any]]]:
    """The spec's selections or adaptations (``kind``): name -> its layer of settings."""
    parsed: dict[str, dict[str, dict[str, Any]]] = {}
    for name, entry in _mapping(data[f"{kind}s"], f"{kind}s").items():
        if name not in allowed:
            raise GridSpecError(f"{kind}s: unknown {kind} {name!r}; allowed: {_allowed(allowed)}.")
        parsed[name] = _blocks(entry, f"{kind}s.{name}")
    return parsed


def _parse_model(name: Any, entry: Any) -> ModelSpec:
    where = f"models.{name}"
    _check_name(name, "models")
    entry = _mapping(entry, where)
    _check_keys(entry, _MODEL_KEYS, where)
    seeds = entry.get("seeds", [42])
    if (
        not isinstance(seeds, list)
        or not seeds
        or any(isinstance(s, bool) or not isinstance(s, int) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise GridSpecError(f"{where}.seeds must be a non-empty list of distinct integers; got {seeds!r}.")
    names = _mapping(entry.get("dataset_names"), f"{where}.dataset_names")
    _check_keys(names, ("train", "test"), f"{where}.dataset_names")
    for part in ("train", "test"):
        if not isinstance(names.get(part), str) or "{dataset}" not in names[part]:
            raise GridSpecError(
                f"{where}.dataset_names.{part} must be a name pattern containing {{dataset}}, such as "
                f"'{{dataset}}_test'; got {names.get(part)!r}."
            )
    layer = _blocks({key: entry[key] for key in LLAMAFACTORY_BLOCKS if key in entry}, where)
    if "model_name_or_path" not in layer.get("model", {}):
        raise GridSpecError(f"{where}.model.model_name_or_path is missing.")
    overrides, dataset_adaptation_layers = {}, {}
    for dataset, dataset_entry in _mapping(entry.get("datasets"), f"{where}.datasets").items():
        dataset_entry = dict(_mapping(dataset_entry, f"{where}.datasets.{dataset}"))
        for block in dataset_entry:
            if block not in (*blocks(), "adaptations"):
                raise GridSpecError(
                    f"{where}.datasets.{dataset}: unknown block {block!r}; allowed: "
                    f"{_allowed((*blocks(), 'adaptations'))}."
                )
        adaptations = dataset_entry.pop("adaptations", None)
        overrides[dataset] = _blocks(dataset_entry, f"{where}.datasets.{dataset}")
        if adaptations is not None:
            dataset_adaptation_layers[dataset] = _adaptation_layers(adaptations, f"{where}.datasets.{dataset}")
    return ModelSpec(
        name,
        list(seeds),
        {"train": names["train"], "test": names["test"]},
        layer,
        overrides,
        _adaptation_layers(entry.get("adaptations"), where),
        dataset_adaptation_layers,
    )


def _adaptation_layers(entry: Any, where: str) -> dict[str, dict[str, dict[str, Any]]]:
    """``<where>.adaptations``: adaptation name -> its layer of overrides."""
    layers = {}
    for adaptation, adaptation_entry in _mapping(entry, f"{where}.adaptations").items():
        if adaptation not in ADAPTATION_NAMES:
            raise GridSpecError(
                f"{where}.adaptations: unknown adaptation {adaptation!r}; allowed: {_allowed(ADAPTATION_NAMES)}."
            )
        layers[adaptation] = _blocks(adaptation_entry, f"{where}.adaptations.{adaptation}")
    return layers


def _parse_ablations(data: dict[str, Any], selections: dict, adaptations: dict) -> list[Ablation]:
    ablations = []
    entries = data.get("ratio_ablations") or []
    if not isinstance(entries, list):
        raise GridSpecError("ratio_ablations must be a list.")
    for i, entry in enumerate(entries):
        where = f"ratio_ablations[{i}]"
        entry = _mapping(entry, where)
        _check_keys(entry, ("table", "selection", "adaptation", "key", "values"), where)
        selection, adaptation = entry.get("selection"), entry.get("adaptation")
        if selection not in selections:
            raise GridSpecError(
                f"{where}.selection: {selection!r} is not one of the spec's selections: {_allowed(selections)}."
            )
        if adaptation not in adaptations:
            raise GridSpecError(
                f"{where}.adaptation: {adaptation!r} is not one of the spec's adaptations: {_allowed(adaptations)}."
            )
        key = entry.get("key")
        if key not in ABLATION_KEYS:
            raise GridSpecError(f"{where}.key: unknown key {key!r}; allowed: {_allowed(ABLATION_KEYS)}.")
        if key == "p2d_head_ratio" and adaptation not in HEAD_ADAPTATION_NAMES:
            raise GridSpecError(
                f"{where}: p2d_head_ratio applies to head adaptations ({_allowed(HEAD_ADAPTATION_NAMES)})."
            )
        if key == "p2d_data_ratio" and selection == "full_data":
            raise GridSpecError(f"{where}: p2d_data_ratio does not apply to the full_data selection.")
        values = entry.get("values")
        if not isinstance(values, list) or not values:
            raise GridSpecError(f"{where}.values must be a non-empty list of ratios; got {values!r}.")
        values = [_ratio(v, f"{where}.values[{j}]") for j, v in enumerate(values)]
        ablations.append(Ablation(str(entry.get("table", "")), selection, adaptation, key, values))
    return ablations


def _parse_lock_and_key(data: dict[str, Any], selections: dict, adaptations: dict) -> list[tuple[str, str]]:
    lock_and_key = []
    entries = data.get("lock_and_key") or []
    if not isinstance(entries, list):
        raise GridSpecError("lock_and_key must be a list.")
    for i, entry in enumerate(entries):
        where = f"lock_and_key[{i}]"
        entry = _mapping(entry, where)
        _check_keys(entry, ("data", "heads"), where)
        data_sel, heads = entry.get("data"), entry.get("heads")
        if data_sel not in selections:
            raise GridSpecError(
                f"{where}.data: {data_sel!r} is not one of the spec's selections: {_allowed(selections)}."
            )
        if heads not in LOCK_AND_KEY_HEADS:
            raise GridSpecError(
                f"{where}.heads: unknown head subset {heads!r}; allowed: {_allowed(LOCK_AND_KEY_HEADS)}."
            )
        if LOCK_AND_KEY_HEADS[heads] not in adaptations:
            raise GridSpecError(f"{where}.heads: {heads!r} needs the adaptation {LOCK_AND_KEY_HEADS[heads]!r}.")
        lock_and_key.append((data_sel, LOCK_AND_KEY_HEADS[heads]))
    return lock_and_key


def _parse_heads_from(data: dict[str, Any], selections: dict, adaptations: dict) -> tuple[str, str] | None:
    if data.get("p2d_heads_from") is None:
        return None
    heads_from = _split_cell(data["p2d_heads_from"], "p2d_heads_from")
    if heads_from[1] != "p2d_heads" or heads_from[0] not in ("p2d", "full_data"):
        raise GridSpecError(
            "p2d_heads_from must be a cell that identifies the W1 heads on the full training data: "
            f"p2d__p2d_heads or full_data__p2d_heads; got {data['p2d_heads_from']!r}."
        )
    if heads_from[0] not in selections or heads_from[1] not in adaptations:
        raise GridSpecError(f"p2d_heads_from: {data['p2d_heads_from']!r} is not a cell of the main grid.")
    return heads_from


def _parse_aer_reference_from(data: dict[str, Any], selections: dict, adaptations: dict) -> tuple[str, str] | None:
    if data.get("aer_reference_from") is None:
        return None
    aer_reference_from = _split_cell(data["aer_reference_from"], "aer_reference_from")
    if aer_reference_from != ("full_data", "full"):
        raise GridSpecError(
            "aer_reference_from must be the full fine-tuning run on the full data, full_data__full (t_FFT of "
            f"Eq. 1); got {data['aer_reference_from']!r}."
        )
    if "full_data" not in selections or "full" not in adaptations:
        raise GridSpecError("aer_reference_from: full_data__full is not a cell of the main grid.")
    return aer_reference_from


def _names(value: Any, where: str, allowed) -> list[str]:
    """A non-empty list of distinct names, each one of ``allowed``."""
    if not isinstance(value, list) or not value:
        raise GridSpecError(f"{where} must be a non-empty list of names; allowed: {_allowed(allowed)}; got {value!r}.")
    for name in value:
        if name not in allowed:
            raise GridSpecError(f"{where}: unknown name {name!r}; allowed: {_allowed(allowed)}.")
    if len(set(value)) != len(value):
        raise GridSpecError(f"{where} lists a name twice: {value!r}.")
    return list(value)


def _learning_rates(value: Any, where: str) -> list[float]:
    if not isinstance(value, list) or not value:
        raise GridSpecError(f"{where} must be a non-empty list of learning rates; got {value!r}.")
    rates: list[float] = []
    for i, rate in enumerate(value):
        if isinstance(rate, str):
            raise GridSpecError(
                f"{where}[{i}]: {rate!r} is a string; YAML reads 1e-4 as text, write 1.0e-4 (a number > 0)."
            )
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
            raise GridSpecError(f"{where}[{i}] must be a finite number > 0; got {rate!r}.")
        if any(f"{float(rate):g}" == f"{seen:g}" for seen in rates):
            raise GridSpecError(f"{where}[{i}]: learning rate {rate!r} is listed twice (cells are named lr{rate:g}).")
        rates.append(float(rate))
    return rates


def _parse_tuning(
    data: dict[str, Any], models: list[ModelSpec], datasets: dict, selections: dict, adaptations: dict
) -> TuningSpec | None:
    if data.get("tuning") is None:
        return None
    where = "tuning"
    entry = _mapping(data["tuning"], where)
    _check_keys(entry, _TUNING_KEYS, where)
    by_name = {model.name: model for model in models}
    tuning_models = _names(entry.get("models"), f"{where}.models", by_name)
    tuning_datasets = _names(entry.get("datasets"), f"{where}.datasets", datasets)

    usable = [name for name in selections if not methods.SELECTIONS[name].extra.get("needs_heads")]
    selection = entry.get("selection")
    if selection not in usable:
        raise GridSpecError(
            f"{where}.selection: {selection!r} is not a usable selection of the spec (tuning cells identify their "
            f"own heads, so a selection that needs the P2D heads cannot be one); allowed: {_allowed(usable)}."
        )

    pattern = entry.get("eval_dataset")
    if not isinstance(pattern, str) or "{dataset}" not in pattern:
        raise GridSpecError(
            f"{where}.eval_dataset must be a name pattern containing {{dataset}}, such as '{{dataset}}_local_val' "
            f"(p2d-data --max-val writes it); got {pattern!r}."
        )
    try:
        pattern.format(dataset="x")
    except (KeyError, IndexError, ValueError):
        raise GridSpecError(f"{where}.eval_dataset: {pattern!r} has braces other than {{dataset}}.") from None
    for name in tuning_models:
        model = by_name[name]
        for part, what in (("test", "the test split"), ("train", "the training split")):
            if pattern == model.names[part]:
                raise GridSpecError(
                    f"{where}.eval_dataset: {pattern!r} is models.{name}.dataset_names.{part}, {what}; tune on a "
                    "validation split carved from the training pool, such as '{dataset}_local_val' "
                    "(p2d-data --max-val)."
                )

    rates_entry = _mapping(entry.get("learning_rates"), f"{where}.learning_rates")
    if not rates_entry:
        raise GridSpecError(
            f"{where}.learning_rates is missing or empty: adaptation -> list of rates; allowed adaptations: "
            f"{_allowed(adaptations)}."
        )
    learning_rates = {}
    for adaptation, rates in rates_entry.items():
        if adaptation not in adaptations:
            raise GridSpecError(
                f"{where}.learning_rates: unknown adaptation {adaptation!r}; allowed: {_allowed(adaptations)}."
            )
        learning_rates[adaptation] = _learning_rates(rates, f"{where}.learning_rates.{adaptation}")

    layer = _blocks({key: entry[key] for key in LLAMAFACTORY_BLOCKS if key in entry}, where)
    for block, values in layer.items():
        for key in values:
            if key in TUNING_CELL_KEYS:
                raise GridSpecError(
                    f"{where}.{block}.{key}: this key is set by p2d-grid for each tuning cell (the swept rate, with "
                    "the head slices at that rate as given); remove it here."
                )
    return TuningSpec(tuning_models, tuning_datasets, selection, pattern, layer, learning_rates)


def _parse_notes(data: dict[str, Any]) -> dict[str, str]:
    notes = {}
    for name, text in _mapping(data.get("notes"), "notes").items():
        _split_cell(name, "notes")
        if not isinstance(text, str) or not text.strip():
            raise GridSpecError(f"notes.{name} must be a non-empty string.")
        notes[name] = " ".join(text.split())
    return notes


def parse_spec(data: Any, path: Path) -> GridSpec:
    """Validate the whole spec; raise GridSpecError naming the first bad entry."""
    data = _mapping(data, str(path))
    _check_keys(data, _TOP_KEYS, str(path))
    for key in ("models", "datasets", "selections", "adaptations"):
        if not data.get(key):
            raise GridSpecError(f"{path}: `{key}` is missing or empty.")

    output_root = data.get("output_root", "saves")
    if not isinstance(output_root, str) or not output_root:
        raise GridSpecError(f"output_root must be a folder path; got {output_root!r}.")
    budget = _parse_budget(data)
    selections = _parse_methods(data, "selection", SELECTION_NAMES)
    adaptations = _parse_methods(data, "adaptation", ADAPTATION_NAMES)
    models = [_parse_model(name, entry) for name, entry in _mapping(data["models"], "models").items()]

    datasets = {}
    for name, entry in _mapping(data["datasets"], "datasets").items():
        _check_name(name, "datasets")
        datasets[name] = _blocks(entry, f"datasets.{name}")
    for model in models:
        for name in model.dataset_layers:
            if name not in datasets:
                raise GridSpecError(
                    f"models.{model.name}.datasets: unknown dataset {name!r}; allowed: {_allowed(datasets)}."
                )

    ablations = _parse_ablations(data, selections, adaptations)
    lock_and_key = _parse_lock_and_key(data, selections, adaptations)
    heads_from = _parse_heads_from(data, selections, adaptations)
    aer_reference_from = _parse_aer_reference_from(data, selections, adaptations)
    notes = _parse_notes(data)
    tuning = _parse_tuning(data, models, datasets, selections, adaptations)
    return GridSpec(
        path=path,
        output_root=output_root.rstrip("/"),
        budget=budget,
        heads_from=heads_from,
        aer_reference_from=aer_reference_from,
        defaults=_blocks(data.get("defaults"), "defaults"),
        models=models,
        datasets=datasets,
        selections=selections,
        adaptations=adaptations,
        ablations=ablations,
        lock_and_key=lock_and_key,
        notes=notes,
        tuning=tuning,
    )


def load_spec(path: str | os.PathLike) -> GridSpec:
    path = Path(path)
    if not path.is_file():
        raise GridSpecError(f"spec {str(path)!r} not found (run from the project root, or pass --spec).")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise GridSpecError(f"{path} is not valid YAML: {err}") from None
    return parse_spec(data, path)
