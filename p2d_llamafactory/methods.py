"""The one table of method names: data selections, adaptations, head scorers and metrics.

Every name a user types (a ``p2d_*`` value, a grid spec entry) and every name a report shows comes from here:
its LLaMA-Factory keys, its labels in the paper's tables, and its colour and marker in Fig. 1. ``hparams``
validates against it, ``experiments.grid`` writes its keys, ``experiments.sweep`` reads runs back into it,
LLaMA-Board offers its choices and the README lists them.
"""

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Method:
    """One method: its name in the grid spec and the reports, and the LLaMA-Factory keys that select it."""

    name: str
    keys: dict[str, Any]  # the LLaMA-Factory / p2d_* keys that select the method
    label: str  # in the paper's tables
    short_label: str = ""  # legends, Table 21
    color: str = "black"  # Fig. 1 (selections), tuning.png (adaptations)
    marker: str = "o"  # Fig. 1 and tuning.png (adaptations)
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> Any:
        """The value of the method's defining key (its ``p2d_*`` or ``finetuning_type`` value)."""
        return next(iter(self.keys.values()))


def _table(*methods: Method) -> dict[str, Method]:
    return {method.name: method for method in methods}


# Data selection (stage II), the blocks of Table 1 in the paper's order. ``name`` is the grid spec's name.
SELECTIONS = _table(
    Method("full_data", {"p2d_data_selection": "none"}, "Full (full dataset)", "Full", "tab:gray"),
    Method(
        "ifd", {"p2d_data_selection": "ifd"}, "IFD", "IFD", "tab:blue", description="instruction-following difficulty"
    ),
    Method(
        "nuggets",
        {"p2d_data_selection": "nuggets"},
        "Nuggets",
        "Nuggets",
        "tab:olive",
        description="one-shot gain over anchor examples",
    ),
    Method(
        "data_whisperer",
        {"p2d_data_selection": "data_whisperer"},
        "Data Whisperer",
        "Data Whisperer",
        "tab:green",
        description="ICL probing with all heads of one middle layer",
        extra={"probing": True},
    ),
    Method("random", {"p2d_data_selection": "random"}, "Random", "Random", "tab:purple"),
    Method(
        "p2d",
        {"p2d_data_selection": "p2d"},
        "P2D (Ours)",
        "P2D",
        "tab:red",
        description="ICL probing with attention summed over the selected heads",
        extra={"probing": True, "needs_heads": True},
    ),
)
SELECTION_BY_VALUE = {method.value: method for method in SELECTIONS.values()}
DATA_SELECTIONS = tuple(SELECTION_BY_VALUE)  # the values of p2d_data_selection
PROBING_SELECTIONS = tuple(m.value for m in SELECTIONS.values() if m.extra.get("probing"))

# Head scorers (stage I), the values of p2d_head_selection.
HEAD_SCORERS = _table(
    Method("w1", {"p2d_head_selection": "w1"}, "W1", description="Wasserstein-1 between base and proxy (the paper's)"),
    Method("random", {"p2d_head_selection": "random"}, "random", description="the random-heads baseline"),
    Method("cosine", {"p2d_head_selection": "cosine"}, "cosine", description="1 - cosine similarity"),
    Method("gradient", {"p2d_head_selection": "gradient"}, "gradient", description="|weight x gradient|"),
)
HEAD_SELECTIONS = tuple(HEAD_SCORERS)
PROXY_SCORERS = ("w1", "cosine")  # compare base and proxy (or task model) weights
DATA_SCORERS = ("w1", "cosine", "gradient")  # need the FHI examples (w1/cosine only without a task model)

# Adaptation (stage III), the rows of each Table 1 block. ``name`` is the grid spec's name.
ADAPTATIONS = _table(
    Method("full", {"finetuning_type": "full"}, "+ full parameters", "full params", "tab:gray", marker="o"),
    Method(
        "random_heads",
        {"finetuning_type": "p2d_heads", "p2d_head_selection": "random"},
        "+ random",
        "random heads",
        "tab:purple",
        marker="s",
    ),
    Method("lora", {"finetuning_type": "lora"}, "+ LoRA", "LoRA", "tab:blue", marker="^"),
    Method(
        "lofit",
        {"finetuning_type": "lofit"},
        "+ LoFiT",
        "LoFiT",
        "tab:brown",
        marker="D",
        description="per-head output biases of the heads LoFiT's L1-penalised scaling ranks first",
    ),
    Method(
        "p2d_heads",
        {"finetuning_type": "p2d_heads", "p2d_head_selection": "w1"},
        "+ P2D",
        "P2D heads",
        "tab:red",
        marker="*",
    ),
    Method(
        "cosine_heads",
        {"finetuning_type": "p2d_heads", "p2d_head_selection": "cosine"},
        "+ P2D heads (cosine)",
        "cosine heads",
        "tab:orange",
        marker="P",
        extra={"ablation": True},
    ),
    Method(
        "gradient_heads",
        {"finetuning_type": "p2d_heads", "p2d_head_selection": "gradient"},
        "+ P2D heads (gradient)",
        "gradient heads",
        "tab:cyan",
        marker="X",
        extra={"ablation": True},
    ),
)
HEAD_ADAPTATIONS = tuple(name for name, m in ADAPTATIONS.items() if m.keys["finetuning_type"] == "p2d_heads")
# Table 1's rows; the head-scorer ablations (``extra["ablation"]``) are reported only where runs exist
TABLE1_ADAPTATIONS = tuple(name for name, m in ADAPTATIONS.items() if not m.extra.get("ablation"))
HEAD_FINETUNING_TYPES = ("p2d_heads", "lofit")  # train per-head parameters, saved as standard PEFT LoRA adapters
REPORTED_FINETUNING_TYPES = tuple(dict.fromkeys(m.keys["finetuning_type"] for m in ADAPTATIONS.values()))


def adaptation_of(finetuning_type: str, head_selection: str | None) -> Method:
    """The adaptation row of a run from its keys (head selection only matters for p2d_heads)."""
    for method in ADAPTATIONS.values():
        keys = method.keys
        if keys["finetuning_type"] == finetuning_type and (
            finetuning_type != "p2d_heads" or keys["p2d_head_selection"] == head_selection
        ):
            return method
    raise KeyError((finetuning_type, head_selection))


# Metrics of the probe answers and of p2d-eval.
METRICS = _table(
    Method("em", {"p2d_icl_metric": "em"}, "EM", description="exact match of the final #### number"),
    Method("rougeL", {"p2d_icl_metric": "rougeL"}, "ROUGE-L", description="ROUGE-L F1 with stemming"),
)
METRIC_CHOICES = ("auto", *METRICS)  # auto: em when the answers end in #### N, else rougeL
ICL_SCORINGS = ("generate", "teacher_forced")

DATASET_LABELS = {"gsm8k": "GSM8K", "dialogsum": "DialogSum", "bioinstruct": "BioInstruct"}
