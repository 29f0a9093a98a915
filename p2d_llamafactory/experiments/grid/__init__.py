"""``p2d-grid``: expand the grid spec (yaml_examples/grid.yaml) into one LLaMA-Factory YAML per cell.

The spec describes the paper's experiment grids once: models, datasets, data selections, adaptations, the
ratio ablations (Tables 3-4), the lock-and-key pairings (Table 21) and the learning-rate sweeps on a validation
split (``tuning``: ``<output-dir>/<model>/<dataset>/tune/tune__<adaptation>__lr<rate>.yaml``). Each cell becomes
``<output-dir>/<model>/<dataset>/<cell>.yaml`` in LLaMA-Factory's example layout (``### model``, ``### method``,
``### dataset``, ``### output``, ``### train``, ``### eval``), with ``output_dir: <output_root>/<model>/<dataset>/<cell>``.
The whole spec is validated before anything is written; the output is deterministic, so ``--check`` can tell
in CI whether the committed files match the spec.

``spec`` parses and validates the spec, ``cells`` plans the cells and resolves their keys, ``render`` writes
them, ``cli`` is the command line.
"""

from ...files import HEADS_FILE
from .cells import GridCell, plan_cells, resolve_cell, tuning_name
from .cli import DEFAULT_OUTPUT_DIR, DEFAULT_SPEC, main
from .render import HEADER_PREFIX, HEADER_SUFFIX, generate, header, render, stale_files
from .spec import (
    ABLATION_KEYS,
    ADAPTATION_NAMES,
    CELL_KEYS,
    HEAD_ADAPTATION_NAMES,
    LLAMAFACTORY_BLOCKS,
    LOCK_AND_KEY_HEADS,
    SELECTION_NAMES,
    TUNING_CELL_KEYS,
    TUNING_PREFIX,
    Ablation,
    GridSpec,
    GridSpecError,
    ModelSpec,
    TuningSpec,
    blocks,
    load_spec,
    parse_spec,
)


__all__ = [
    "ABLATION_KEYS",
    "ADAPTATION_NAMES",
    "CELL_KEYS",
    "DEFAULT_OUTPUT_DIR",
    "DEFAULT_SPEC",
    "HEADER_PREFIX",
    "HEADER_SUFFIX",
    "HEADS_FILE",
    "HEAD_ADAPTATION_NAMES",
    "LLAMAFACTORY_BLOCKS",
    "LOCK_AND_KEY_HEADS",
    "SELECTION_NAMES",
    "TUNING_CELL_KEYS",
    "TUNING_PREFIX",
    "Ablation",
    "GridCell",
    "GridSpec",
    "GridSpecError",
    "ModelSpec",
    "TuningSpec",
    "blocks",
    "generate",
    "header",
    "load_spec",
    "main",
    "parse_spec",
    "plan_cells",
    "render",
    "resolve_cell",
    "stale_files",
    "tuning_name",
]
