"""The cells of a grid spec: which (selection, adaptation, ratios, seed) runs it plans, and each one's keys.

A cell's settings are the spec's layers merged (defaults, model, dataset, the model's dataset overrides, the
selection, the adaptation, the model's adaptation overrides), then the keys that p2d-grid sets per cell
(``CELL_KEYS``). Keys of a concern that the cell does not use are dropped; which keys belong to which concern comes
from :mod:`p2d_llamafactory.hparams`.

Tuning cells (the spec's ``tuning`` section) are the cell ``<selection>__<adaptation>`` of the model and dataset,
with the tuning layer on top, one swept ``learning_rate``, the validation split as ``eval_dataset`` and no AER;
they are named ``tune__<adaptation>__lr<rate>`` and written under ``<model>/<dataset>/tune/``.
"""

import math
from dataclasses import dataclass, field
from typing import Any

from ... import hparams, methods
from ...files import HEADS_FILE, SCORES_FILE
from .spec import (
    ABLATION_KEYS,
    CELL_KEYS,
    HEAD_ADAPTATION_NAMES,
    TUNING_PREFIX,
    GridSpec,
    GridSpecError,
    ModelSpec,
    blocks,
)


# p2d_llamafactory.heads.headset and .data.cache name these too, but importing those modules pulls torch
_LORA_KEYS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_target")


@dataclass
class GridCell:
    """One planned run of the grid: its method, ratio overrides and seed, the tables it serves, its keys."""

    model: str
    dataset: str
    selection: str
    adaptation: str
    overrides: dict[str, float]
    seed: int
    seed_suffix: str
    tables: set[str] = field(default_factory=set)
    config: dict[str, dict[str, Any]] = field(default_factory=dict)
    lr: float | None = None  # the swept learning_rate of a tuning cell; None for the paper's cells

    @property
    def is_tuning(self) -> bool:
        return self.lr is not None

    @property
    def base(self) -> str:
        return f"{self.selection}__{self.adaptation}"

    @property
    def ratio_suffix(self) -> str:
        return "".join(f"__{ABLATION_KEYS[key]}{value:g}" for key, value in sorted(self.overrides.items()))

    @property
    def name(self) -> str:
        if self.is_tuning:
            return tuning_name(self.adaptation, self.lr)
        return self.base + self.ratio_suffix + self.seed_suffix

    @property
    def relpath(self) -> str:
        folder = f"{self.model}/{self.dataset}" + ("/tune" if self.is_tuning else "")
        return f"{folder}/{self.name}.yaml"


def tuning_name(adaptation: str, lr: float) -> str:
    """``tune__<adaptation>__lr<lr:g>``, e.g. tune__p2d_heads__lr0.001, tune__full__lr3e-05."""
    return f"{TUNING_PREFIX}{adaptation}__lr{lr:g}"


def _heads_file_needed(selection: str, adaptation: str) -> bool:
    """Cells that read the P2D heads of ``p2d_heads_from`` instead of identifying heads on the full data."""
    if methods.SELECTIONS[selection].extra.get("needs_heads") and adaptation not in HEAD_ADAPTATION_NAMES:
        return True  # p2d selection needs a head set; full / LoRA training has none
    return adaptation == "p2d_heads" and selection not in ("p2d", "full_data")


def _selects_like_heads_source(spec: GridSpec, cell: GridCell) -> bool:
    """Whether the cell's data selection is the one its heads source (``p2d_heads_from``) made: the same selection
    method with those heads at the same data ratio; it then reads that cell's scores instead of probing again."""
    return (
        spec.heads_from is not None
        and cell.selection == spec.heads_from[0]
        and "p2d_data_ratio" not in cell.overrides
        and not cell.is_tuning
    )


def _add(planned: dict[str, GridCell], cell: GridCell, table: str) -> None:
    """Plan ``cell`` once: a cell that another grid already planned only gains the table."""
    planned.setdefault(cell.name, cell).tables.add(table)


def plan_cells(spec: GridSpec) -> list[GridCell]:
    """Every cell of the spec, in a fixed order, each generated once."""
    cells: list[GridCell] = []
    for model in spec.models:
        for dataset in spec.datasets:
            for index, seed in enumerate(model.seeds):
                suffix = "" if index == 0 else f"__s{seed}"
                planned: dict[str, GridCell] = {}
                for selection in spec.selections:
                    for adaptation in spec.adaptations:
                        _add(planned, GridCell(model.name, dataset, selection, adaptation, {}, seed, suffix), "1-2")
                for ablation in spec.ablations:
                    for value in ablation.values:
                        same = math.isclose(value, spec.budget[ablation.key])
                        overrides = {} if same else {ablation.key: value}
                        cell = GridCell(
                            model.name, dataset, ablation.selection, ablation.adaptation, overrides, seed, suffix
                        )
                        _add(planned, cell, ablation.table)
                for selection, adaptation in spec.lock_and_key:
                    _add(planned, GridCell(model.name, dataset, selection, adaptation, {}, seed, suffix), "21")
                for cell in planned.values():
                    cell.config = resolve_cell(spec, model, cell, planned)
                cells.extend(planned.values())
            cells.extend(_tuning_cells(spec, model, dataset))
    return cells


def _tuning_cells(spec: GridSpec, model: ModelSpec, dataset: str) -> list[GridCell]:
    """The learning-rate sweep of (model, dataset) on the validation split: the model's first seed only."""
    tuning = spec.tuning
    if tuning is None or model.name not in tuning.models or dataset not in tuning.datasets:
        return []
    cells = []
    for adaptation, rates in tuning.learning_rates.items():
        for lr in rates:
            cell = GridCell(model.name, dataset, tuning.selection, adaptation, {}, model.seeds[0], "", lr=lr)
            cell.tables.add("tuning")
            cell.config = resolve_cell(spec, model, cell, {})
            cells.append(cell)
    return cells


def _merge(layers: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {block: {} for block in blocks()}
    for layer in layers:
        for block, values in layer.items():
            merged[block].update(values)
    return merged


def _heads_file(spec: GridSpec, cell: GridCell, planned: dict[str, GridCell]) -> str | None:
    """The p2d_heads.json the cell reads (from the ``p2d_heads_from`` cell), or None when it needs none.

    A tuning cell of p2d_heads reads the heads of the sweep's first p2d_heads rate, which identifies them itself.
    """
    if cell.is_tuning:
        first = spec.tuning.learning_rates[cell.adaptation][0] if spec.tuning is not None else cell.lr
        if cell.adaptation != "p2d_heads" or f"{first:g}" == f"{cell.lr:g}":
            return None
        return f"{spec.output_root}/{cell.model}/{cell.dataset}/{tuning_name(cell.adaptation, first)}/{HEADS_FILE}"
    if not _heads_file_needed(cell.selection, cell.adaptation):
        return None
    if spec.heads_from is None:
        raise GridSpecError(
            f"cell {cell.base} needs the P2D heads of another cell; set p2d_heads_from (e.g. p2d__p2d_heads)."
        )
    head_ratio = {k: v for k, v in cell.overrides.items() if k == "p2d_head_ratio"}
    source = GridCell(cell.model, cell.dataset, *spec.heads_from, head_ratio, cell.seed, cell.seed_suffix)
    if source.name not in planned:
        raise GridSpecError(
            f"cell {cell.name} ({cell.model}, {cell.dataset}) reads the heads of {source.name}, which the spec "
            "does not generate; add it to the grid."
        )
    return f"{spec.output_root}/{cell.model}/{cell.dataset}/{source.name}/{HEADS_FILE}"


def _aer_reference(spec: GridSpec, cell: GridCell, method: dict[str, Any]) -> str | None:
    """The output_dir of the cell's t_FFT run (``aer_reference_from``) of the model's first seed, or None for that
    run itself and for the tuning cells (a validation score needs no AER). t_FFT is a cost, the same for every
    seed, so one full fine-tuning run per (model, dataset) measures it; its later seeds only add ceiling scores."""
    if (
        cell.is_tuning
        or spec.aer_reference_from is None
        or (cell.selection, cell.adaptation) == spec.aer_reference_from
    ):
        return None
    reference = GridCell(cell.model, cell.dataset, *spec.aer_reference_from, {}, cell.seed, seed_suffix="")
    if method.get("p2d_aer_estimate_steps") is not None:
        raise GridSpecError(
            f"cell {cell.name}: p2d_aer_estimate_steps and aer_reference_from both give t_FFT; keep one."
        )
    return f"{spec.output_root}/{cell.model}/{cell.dataset}/{reference.name}"


def _is_lofit(adaptation: str) -> bool:
    return methods.ADAPTATIONS[adaptation].keys["finetuning_type"] == "lofit"


def _kept(cell: GridCell, method: dict[str, Any]) -> dict[str, bool]:
    """Key -> whether the cell keeps it: a ``p2d_*`` key of a stage's concern stays only where it applies
    (``hparams.applicable``, the rule of the run's own warnings); the head keys and the cell's budget keys are set
    by the cell itself; LoRA keys stay in LoRA cells, the AER keys out of tuning cells."""
    reasons = hparams.applicable(method, method.get("finetuning_type"))
    filtered = [*hparams.keys_of_concern("proxy"), *hparams.keys_of_concern("adaptation")]
    filtered += [key for key in hparams.keys_of_concern("selection") if key not in CELL_KEYS]
    filtered += hparams.keys_of_concern("probing")
    return {
        **{key: reasons[key] is None for key in filtered},
        **dict.fromkeys(_LORA_KEYS, cell.adaptation == "lora"),
        **(dict.fromkeys(hparams.keys_of_concern("aer"), False) if cell.is_tuning else {}),
    }


def resolve_cell(
    spec: GridSpec, model: ModelSpec, cell: GridCell, planned: dict[str, GridCell]
) -> dict[str, dict[str, Any]]:
    """The cell's LLaMA-Factory keys, block by block, in the examples' key order."""
    layers = [
        spec.defaults,
        model.layer,
        spec.datasets[cell.dataset],
        model.dataset_layers.get(cell.dataset, {}),
        spec.selections[cell.selection],
        spec.adaptations[cell.adaptation],
        model.adaptation_layers.get(cell.adaptation, {}),
        model.dataset_adaptation_layers.get(cell.dataset, {}).get(cell.adaptation, {}),
    ]
    if cell.is_tuning and spec.tuning is not None:
        layers.append(spec.tuning.layer)
    merged = _merge(layers)
    method = merged["method"]
    adaptation_keys = methods.ADAPTATIONS[cell.adaptation].keys
    data_selection = methods.SELECTIONS[cell.selection].keys["p2d_data_selection"]
    head_adaptation = cell.adaptation in HEAD_ADAPTATION_NAMES
    heads_file = _heads_file(spec, cell, planned)
    aer_reference = _aer_reference(spec, cell, method)

    method["finetuning_type"] = adaptation_keys["finetuning_type"]
    if head_adaptation or _is_lofit(cell.adaptation):  # LoFiT's head budget is P2D's
        method["p2d_head_ratio"] = cell.overrides.get("p2d_head_ratio", spec.budget["p2d_head_ratio"])
        if heads_file is None and head_adaptation:
            method["p2d_head_selection"] = adaptation_keys["p2d_head_selection"]
    if heads_file is not None:
        method["p2d_heads_file"] = heads_file
    if aer_reference is not None:
        method["p2d_aer_reference"] = aer_reference
    if data_selection != "none":
        method["p2d_data_selection"] = data_selection
        method["p2d_data_ratio"] = cell.overrides.get("p2d_data_ratio", spec.budget["p2d_data_ratio"])
    if heads_file is not None and _selects_like_heads_source(spec, cell):
        method["p2d_data_scores_file"] = f"{heads_file.rsplit('/', 1)[0]}/{SCORES_FILE}"
    if data_selection != "none" or head_adaptation or _is_lofit(cell.adaptation):
        method["p2d_seed"] = cell.seed
    if cell.is_tuning and head_adaptation:
        method["p2d_head_lr_scale"] = 1.0  # the swept rate is the slices' own rate
    keep = _kept(cell, method)
    merged["method"] = {key: value for key, value in method.items() if keep.get(key, True)}

    merged["dataset"]["dataset"] = model.names["train"].format(dataset=cell.dataset)
    merged["output"]["output_dir"] = f"{spec.output_root}/{cell.model}/{cell.dataset}/{cell.name}"
    merged["train"]["seed"] = cell.seed
    merged["eval"]["eval_dataset"] = model.names["test"].format(dataset=cell.dataset)
    if cell.is_tuning and spec.tuning is not None:
        merged["train"]["learning_rate"] = cell.lr
        merged["eval"]["eval_dataset"] = spec.tuning.eval_dataset.format(dataset=cell.dataset)
    table = blocks()
    return {block: {key: merged[block][key] for key in table[block] if key in merged[block]} for block in table}
