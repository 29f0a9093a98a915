"""P2D arguments: the ``p2d_*`` keys a LLaMA-Factory YAML accepts, validated at parse time.

Like LLaMA-Factory's ``FinetuningArguments``, :class:`P2DArguments` is composed of one small dataclass per
concern. Each field's metadata says which concern (``concern``) it belongs to and which stage results it
identifies (``identity``): the stage I cache key (``heads``) and the stage II cache key (``selection``) are
derived from that metadata by :func:`identity`, the grid's key order and per-cell key lists by
:func:`p2d_keys` / :func:`keys_of_concern`, and LLaMA-Board's defaults by :func:`default_of`, never listed by hand.
"""

import dataclasses
import math
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .methods import (
    DATA_SCORERS,
    DATA_SELECTIONS,
    HEAD_FINETUNING_TYPES,
    HEAD_SELECTIONS,
    ICL_SCORINGS,
    METRIC_CHOICES,
    PROBING_SELECTIONS,
    PROXY_SCORERS,
)


HEAD_MODULES = ("q", "k", "v", "o")
NUGGETS_ANCHOR_SAMPLINGS = ("kmeans", "random")  # Nuggets' anchors: k-means on embeddings (its code's), or seeded
FHI_TRAINABLE = ("all", "attention")  # what the FHI proxy trains: every parameter (the paper's) or q/k/v only
HEAD_LR_SCALE = 10.0  # default p2d_head_lr_scale (docs/tuning.md)
MAX_SEED = 2**32 - 1  # the largest seed numpy.random accepts
DEFAULT_HEAD_MODULES = ("q", "o")
_MODULE_ALIASES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o"}
# concerns, in pipeline order: stage I (heads, proxy), stage III (adaptation), stage II (selection, probing), AER
CONCERNS = ("heads", "proxy", "adaptation", "selection", "probing", "aer")
IDENTITIES = ("heads", "selection", "lofit")  # stage I, stage II, LoFiT's step 1


class _FieldMetadata(dict):
    """Field metadata with P2D's own entries hidden from argparse: HfArgumentParser passes ``metadata.copy()`` on
    to ``add_argument`` as keyword arguments, so ``copy`` returns only the entries argparse knows."""

    P2D_ENTRIES = ("concern", "identity", "accepts_list")

    def copy(self) -> dict[str, Any]:
        return {key: value for key, value in self.items() if key not in self.P2D_ENTRIES}


def p2d_field(
    default: Any, help: str, concern: str, identity: tuple[str, ...] = (), accepts_list: bool = False
) -> Any:
    """A ``p2d_*`` field: its help text, its concern and the stage results whose identity it is part of
    (``accepts_list``: a YAML list of strings is as good as the comma-separated text)."""
    assert concern in CONCERNS and all(name in IDENTITIES for name in identity)
    metadata = _FieldMetadata(help=help, concern=concern, identity=identity, accepts_list=accepts_list)
    return dataclasses.field(default=default, metadata=metadata)


def _describe(value: Any) -> str:
    if not isinstance(value, str):
        return f"{value!r} ({type(value).__name__})"
    try:
        float(value)
    except ValueError:
        return f"the text {value!r}"
    if "e" in value.lower() and "." not in value:
        return f"the text {value!r} (YAML reads a number like 1e-4 as text: write 1.0e-4)"
    return f"the text {value!r} (write the number without quotes)"


def _normalised(f: dataclasses.Field, hint: Any, value: Any) -> Any:
    """``value`` checked against the field's type: ints widen to float, anything else of the wrong type (a quoted
    number, a float in an integer key, a word) is refused naming the key and the expected type."""
    key = f.name
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    kind = next(option for option in options if option is not type(None))
    if typing.get_origin(kind) is Literal:
        if not isinstance(value, str):
            raise ValueError(f"`{key}` must be one of {', '.join(typing.get_args(kind))}; got {_describe(value)}.")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"`{key}` must be a number; got {_describe(value)}.")
        if not math.isfinite(value):
            raise ValueError(f"`{key}` must be a finite number; got {value!r}.")
        return float(value)
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"`{key}` must be a whole number; got {_describe(value)}.")
        return value
    if isinstance(value, str) or (
        f.metadata.get("accepts_list") and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    ):
        return value
    raise ValueError(f"`{key}` must be a text; got {_describe(value)}.")


def normalise_types(args: Any) -> None:
    """Check and normalise every ``p2d_*`` value of ``args`` against its declared type, in place."""
    hints = typing.get_type_hints(type(args))
    for f in dataclasses.fields(args):
        if f.name.startswith("p2d_"):
            setattr(args, f.name, _normalised(f, hints[f.name], getattr(args, f.name)))


def _choice_error(key: str, value: object, allowed: tuple[str, ...]) -> ValueError:
    return ValueError(f"`{key}` must be one of {', '.join(allowed)}; got {value!r}.")


def parse_head_modules(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """Parse ``p2d_head_modules`` ("q,o", "all", ["q_proj", "o_proj"]) into canonical ordered names."""
    if value is None:
        return DEFAULT_HEAD_MODULES
    items = value.split(",") if isinstance(value, str) else list(value)
    names = [_MODULE_ALIASES.get(item.strip(), item.strip()) for item in items if item.strip()]
    if names == ["all"]:
        return HEAD_MODULES
    bad = [name for name in names if name not in HEAD_MODULES]
    if bad or not names:
        raise ValueError(
            f"`p2d_head_modules` takes a comma-separated subset of {', '.join(HEAD_MODULES)} (or `all`); got {value!r}."
        )
    return tuple(name for name in HEAD_MODULES if name in names)


def count_for_ratio(ratio: float, total: int) -> int:
    """How many of ``total`` heads (rho_P) or examples (rho_D) ``ratio`` keeps: round half up."""
    return math.floor(ratio * total + 0.5)


def _positive_int(args: Any, *keys: str) -> None:
    for key in keys:
        value = getattr(args, key)
        if value is not None and int(value) < 1:
            raise ValueError(f"`{key}` must be a positive integer; got {value!r}.")


def _ratio(args: Any, key: str) -> None:
    if not (0.0 < float(getattr(args, key)) <= 1.0):
        raise ValueError(f"`{key}` must be in (0, 1]; got {getattr(args, key)!r}.")


@dataclass
class HeadArguments:
    r"""Which heads: how many, how they are scored, or a head set from elsewhere (stage I)."""

    p2d_head_ratio: float = p2d_field(
        0.1,
        "Fraction of all attention heads to select and train (rho_P), in (0, 1]; also LoFiT's head budget.",
        "heads",
        ("heads", "lofit"),
    )
    p2d_head_trainable_layers: int | None = p2d_field(
        None,
        "Select heads only in these layers (LLaMA-Factory's freeze_trainable_layers rule): n > 0 the last n layers, "
        "n < 0 the first n. Heads confined to the last layers train faster (the backward pass stops below them) "
        "but trained about 3 ROUGE-L points lower on BioInstruct (docs/head_choice.md). Default: every layer.",
        "heads",
        ("heads", "lofit"),
    )
    p2d_head_selection: Literal[HEAD_SELECTIONS] = p2d_field(
        "w1",
        "How heads are scored: w1 (Wasserstein-1 between base and proxy, the paper's), random (the random-heads "
        "baseline), cosine (1 - cosine similarity of the same distributions), gradient (|weight x gradient| on the "
        "FHI examples).",
        "heads",
        ("heads",),
    )
    p2d_heads_file: str | None = p2d_field(
        None, "Reuse the head set in this p2d_heads.json instead of identifying heads.", "heads"
    )
    p2d_seed: int = p2d_field(
        42,
        "Seed of the FHI example sample, random head selection, data-selection sampling and LoFiT's initialisation.",
        "heads",
        ("heads", "selection", "lofit"),
    )

    def __post_init__(self) -> None:
        if self.p2d_head_selection not in HEAD_SELECTIONS:
            raise _choice_error("p2d_head_selection", self.p2d_head_selection, HEAD_SELECTIONS)
        _ratio(self, "p2d_head_ratio")
        if self.p2d_head_trainable_layers == 0:
            raise ValueError(
                "`p2d_head_trainable_layers` must be a nonzero integer (n > 0: the last n layers, n < 0: the first n) "
                "or left out (every layer); got 0."
            )
        if not 0 <= int(self.p2d_seed) <= MAX_SEED:  # numpy's generators (Nuggets' k-means, sampling) take no other
            raise ValueError(f"`p2d_seed` must be an integer in [0, {MAX_SEED}]; got {self.p2d_seed!r}.")


@dataclass
class ProxyArguments:
    r"""Fast Head Identification: the proxy fine-tuned for a few full-batch steps, or a task model (stage I)."""

    p2d_fhi_samples: int = p2d_field(
        100, "Number of random training examples for the Fast Head Identification proxy.", "proxy", ("heads",)
    )
    p2d_fhi_steps: int = p2d_field(
        20, "Full-batch update steps of the Fast Head Identification proxy.", "proxy", ("heads",)
    )
    p2d_fhi_lr: float = p2d_field(
        2e-5,
        "Learning rate of the Fast Head Identification proxy (AdamW, float32 master weights).",
        "proxy",
        ("heads",),
    )
    p2d_fhi_trainable: Literal[FHI_TRAINABLE] = p2d_field(
        "all",
        "What the Fast Head Identification proxy trains: all (a float32 copy of every parameter, the paper's) or "
        "attention (float32 copies of the q/k/v projections only, every other weight shared with the base model "
        "and frozen: fits large models beside their base).",
        "proxy",
        ("heads",),
    )
    p2d_temperature: float = p2d_field(
        0.1, "Softmax temperature tau of the head-scoring distributions.", "proxy", ("heads",)
    )
    p2d_task_model: str | None = p2d_field(
        None, "Score heads against this fine-tuned task model instead of training a proxy.", "proxy", ("heads",)
    )

    def __post_init__(self) -> None:
        if self.p2d_fhi_trainable not in FHI_TRAINABLE:
            raise _choice_error("p2d_fhi_trainable", self.p2d_fhi_trainable, FHI_TRAINABLE)
        _positive_int(self, "p2d_fhi_samples", "p2d_fhi_steps")
        for key in ("p2d_fhi_lr", "p2d_temperature"):
            if not float(getattr(self, key)) > 0:
                raise ValueError(f"`{key}` must be > 0; got {getattr(self, key)!r}.")


@dataclass
class HeadAdaptationArguments:
    r"""Sparse head adaptation: which slices of the selected heads train (stage III)."""

    p2d_head_modules: str | None = p2d_field(
        None,
        "Per-head slices that train with `finetuning_type: p2d_heads`: a comma-separated subset of q (query rows), "
        "k (key rows), v (value rows), o (output columns), or `all`. Under GQA the k/v rows of a head are shared by "
        "its query-head group. Default: q,o.",
        "adaptation",
        accepts_list=True,
    )
    p2d_head_lr_scale: float = p2d_field(
        HEAD_LR_SCALE,
        "Multiplier of `learning_rate` for the head slices with `finetuning_type: p2d_heads` (LoRA+ spirit): the "
        "slices are ~1% of the weights and barely move at a rate tuned for LoRA or full fine-tuning, so the default "
        f"{HEAD_LR_SCALE:g} turns LLaMA-Factory's usual PEFT rate 1e-4 into 1e-3 (measured in docs/tuning.md). "
        "1: train at `learning_rate` as given (the paper's protocol).",
        "adaptation",
    )

    def __post_init__(self) -> None:
        parse_head_modules(self.p2d_head_modules)
        scale = float(self.p2d_head_lr_scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"`p2d_head_lr_scale` must be a finite number > 0; got {self.p2d_head_lr_scale!r}.")

    @property
    def head_modules(self) -> tuple[str, ...]:
        return parse_head_modules(self.p2d_head_modules)


@dataclass
class LofitArguments:
    r"""LoFiT (``finetuning_type: lofit``): step 1 ranks heads by a learned output scaling, step 2 trains per-head
    biases of the top ``p2d_head_ratio`` heads at ``learning_rate`` (stage III). Defaults: LoFiT's scripts."""

    p2d_lofit_l1_lambda: float = p2d_field(
        5e-4,
        "LoFiT step 1: weight of the L1 penalty sum |A| on the per-head scalings (LoFiT's 5e-4: its TruthfulQA and "
        "MQuAKE scripts with Gemma-7B / Llama-2-7B).",
        "adaptation",
        ("lofit",),
    )
    p2d_lofit_select_lr: float = p2d_field(
        5e-3, "LoFiT step 1: learning rate of the per-head scalings A (LoFiT's 5e-3).", "adaptation", ("lofit",)
    )
    p2d_lofit_select_epochs: float = p2d_field(
        5.0,
        "LoFiT step 1: epochs over the training data (LoFiT's 5: every script trains each step for 5); step 2 trains for `num_train_epochs`.",
        "adaptation",
        ("lofit",),
    )

    def __post_init__(self) -> None:
        for key in ("p2d_lofit_select_lr", "p2d_lofit_select_epochs"):
            if not float(getattr(self, key)) > 0:
                raise ValueError(f"`{key}` must be > 0; got {getattr(self, key)!r}.")
        if not float(self.p2d_lofit_l1_lambda) >= 0:
            raise ValueError(f"`p2d_lofit_l1_lambda` must be >= 0; got {self.p2d_lofit_l1_lambda!r}.")


@dataclass
class DataSelectionArguments:
    r"""Which examples train: the selection method and ratio (stage II)."""

    p2d_data_selection: Literal[DATA_SELECTIONS] = p2d_field(
        "none",
        "Select training data before tokenization (any finetuning_type): p2d (ICL probing with attention summed over "
        "the selected heads), random, ifd (instruction-following difficulty), nuggets (one-shot gains over an anchor "
        "set), data_whisperer (ICL probing with all heads of one middle layer), or none.",
        "selection",
        ("selection",),
    )
    p2d_data_ratio: float = p2d_field(
        0.1,
        "Fraction of the training examples kept by data selection (rho_D), in (0, 1].",
        "selection",
        ("selection",),
    )
    p2d_data_ppl_samples: int = p2d_field(
        100,
        "Examples (of all, and of the selected) whose base-model perplexity the report compares; 0: none.",
        "selection",
    )
    p2d_data_scores_file: str | None = p2d_field(
        None,
        "Reuse the data selection in this p2d_data_scores.json (another run's, made with this run's selection "
        "settings, model, data and heads; any other is refused) instead of scoring again; its time counts as "
        "inherited in the AER.",
        "selection",
    )

    def __post_init__(self) -> None:
        if self.p2d_data_selection not in DATA_SELECTIONS:
            raise _choice_error("p2d_data_selection", self.p2d_data_selection, DATA_SELECTIONS)
        _ratio(self, "p2d_data_ratio")
        if int(self.p2d_data_ppl_samples) < 0:
            raise ValueError(
                f"`p2d_data_ppl_samples` must be an integer >= 0 (0: no perplexity report); got {self.p2d_data_ppl_samples!r}."
            )


@dataclass
class NuggetsArguments:
    r"""The Nuggets selection (``p2d_data_selection: nuggets``): one-shot gains over an anchor set (stage II)."""

    p2d_nuggets_anchors: int = p2d_field(
        100,
        "Nuggets: size of the anchor set drawn from the training pool (Nuggets' 100).",
        "selection",
        ("selection",),
    )
    p2d_nuggets_anchor_sampling: Literal[NUGGETS_ANCHOR_SAMPLINGS] = p2d_field(
        "kmeans",
        "Nuggets: how the anchors are drawn: kmeans (the examples nearest to k-means centroids of the base model's "
        "mean-pooled last hidden states, as Nuggets' code does) or random (seeded by p2d_seed).",
        "selection",
        ("selection",),
    )
    p2d_nuggets_batch_size: int = p2d_field(8, "Nuggets: anchors per forward pass.", "selection")

    def __post_init__(self) -> None:
        if self.p2d_nuggets_anchor_sampling not in NUGGETS_ANCHOR_SAMPLINGS:
            raise _choice_error(
                "p2d_nuggets_anchor_sampling", self.p2d_nuggets_anchor_sampling, NUGGETS_ANCHOR_SAMPLINGS
            )
        _positive_int(self, "p2d_nuggets_anchors", "p2d_nuggets_batch_size")


@dataclass
class ProbingArguments:
    r"""In-context probing of the p2d and data_whisperer selections (stage II)."""

    p2d_icl_instruction: str | None = p2d_field(
        None,
        "Task instruction of the probe prompts: math, summarization, biomedical, general, or your own text. "
        "Default: math for #### answers, general otherwise.",
        "probing",
        ("selection",),
    )
    p2d_icl_demos: int = p2d_field(5, "Demonstrations per probe prompt (n_d).", "probing", ("selection",))
    p2d_icl_queries: int = p2d_field(3, "Queries per probe prompt (n_q).", "probing", ("selection",))
    p2d_icl_rounds: int = p2d_field(
        1, "Probe until every candidate has been a demonstration this many times.", "probing", ("selection",)
    )
    p2d_icl_metric: str = p2d_field(
        "auto",
        "Metric of the probe answers: em (final #### number), rougeL (F1, stemmed), or auto.",
        "probing",
        ("selection",),
    )
    p2d_icl_scoring: Literal[ICL_SCORINGS] = p2d_field(
        "generate",
        "generate: decode the answers and score them with the metric (the paper's); teacher_forced: score the gold "
        "answers' likelihood in the same single forward pass, no decoding.",
        "probing",
        ("selection",),
    )
    p2d_icl_max_new_tokens: int = p2d_field(256, "Generation bound per probe prompt.", "probing", ("selection",))
    p2d_icl_batch_size: int = p2d_field(4, "Probe prompts per forward pass.", "probing")

    def __post_init__(self) -> None:
        if self.p2d_icl_metric not in METRIC_CHOICES:
            raise _choice_error("p2d_icl_metric", self.p2d_icl_metric, METRIC_CHOICES)
        if self.p2d_icl_scoring not in ICL_SCORINGS:
            raise _choice_error("p2d_icl_scoring", self.p2d_icl_scoring, ICL_SCORINGS)
        _positive_int(
            self, "p2d_icl_demos", "p2d_icl_queries", "p2d_icl_rounds", "p2d_icl_max_new_tokens", "p2d_icl_batch_size"
        )


@dataclass
class AERArguments:
    r"""Where t_FFT of the Alignment Efficiency Ratio comes from."""

    p2d_aer_reference: str | None = p2d_field(
        None,
        "output_dir of a full fine-tuning run on the full data: its training time is t_FFT of the AER.",
        "aer",
    )
    p2d_aer_estimate_steps: int | None = p2d_field(
        None,
        "Estimate t_FFT of the AER by timing this many full-parameter steps of the same model on the same data and "
        "hardware, extrapolated per token to the full data and epochs.",
        "aer",
    )

    def __post_init__(self) -> None:
        if self.p2d_aer_reference is not None and self.p2d_aer_estimate_steps is not None:
            raise ValueError("Set at most one of `p2d_aer_reference` and `p2d_aer_estimate_steps`.")
        _positive_int(self, "p2d_aer_estimate_steps")


# fields come in reverse order of the bases (dataclass rule): stage I first, then III, II and the AER
_CONCERNS = (
    AERArguments,
    ProbingArguments,
    NuggetsArguments,
    DataSelectionArguments,
    LofitArguments,
    HeadAdaptationArguments,
    ProxyArguments,
    HeadArguments,
)


@dataclass
class P2DArguments(*_CONCERNS):
    r"""Arguments of the P2D pipeline: stage I (heads, proxy), stage III (adaptation), stage II (selection,
    probing) and the AER."""

    def __post_init__(self) -> None:
        normalise_types(self)
        for concern in reversed(_CONCERNS):
            concern.__post_init__(self)
        if self.p2d_task_model is not None and self.p2d_heads_file is not None:
            raise ValueError("Set at most one of `p2d_task_model` and `p2d_heads_file`.")
        if self.p2d_task_model is not None and self.p2d_head_selection in ("random", "gradient"):
            raise ValueError(
                f"`p2d_task_model` compares weights, which `p2d_head_selection: {self.p2d_head_selection}` does not "
                "use; choose w1 or cosine."
            )

    @property
    def uses_p2d(self) -> bool:
        """Whether any P2D feature is on (then the timing callback joins the run)."""
        return uses_p2d(self.p2d_dict(), getattr(self, "finetuning_type", None))

    def ineffective_keys(self) -> dict[str, str]:
        """The ``p2d_*`` keys set away from their defaults that change nothing in this configuration, with why."""
        reasons = applicable(self.p2d_dict(), getattr(self, "finetuning_type", None), type(self))
        changed = [key for key in p2d_keys(type(self)) if getattr(self, key) != default_of(key, type(self))]
        return {key: reasons[key] for key in changed if reasons[key] is not None}

    def p2d_dict(self) -> dict[str, object]:
        """The P2D keys and values, for records such as p2d_heads.json."""
        return {name: getattr(self, name) for name in p2d_keys(type(self))}


def _arguments_class(cls: type | None) -> type:
    # looked up at call time, so a class that extends P2DArguments (a later key, a test) is seen by every consumer
    return cls if cls is not None else sys.modules[__name__].P2DArguments


def p2d_fields(cls: type | None = None) -> list[dataclasses.Field]:
    """The ``p2d_*`` fields of ``cls`` (default: P2DArguments), in pipeline order."""
    return [f for f in dataclasses.fields(_arguments_class(cls)) if f.name.startswith("p2d_")]


def p2d_keys(cls: type | None = None) -> tuple[str, ...]:
    return tuple(f.name for f in p2d_fields(cls))


def keys_of_concern(concern: str, cls: type | None = None) -> tuple[str, ...]:
    """The keys of one concern (``CONCERNS``)."""
    if concern not in CONCERNS:
        raise ValueError(f"unknown concern {concern!r}; allowed: {', '.join(CONCERNS)}")
    return tuple(f.name for f in p2d_fields(cls) if f.metadata.get("concern") == concern)


def identity_keys(name: str, cls: type | None = None) -> tuple[str, ...]:
    """The keys whose values identify a stage's result (``heads``: stage I, ``selection``: stage II)."""
    if name not in IDENTITIES:
        raise ValueError(f"unknown identity {name!r}; allowed: {', '.join(IDENTITIES)}")
    return tuple(f.name for f in p2d_fields(cls) if name in f.metadata.get("identity", ()))


def identity(args: Any, name: str) -> dict[str, Any]:
    """The identity of a stage's result under ``args``: every identity field of its class, by name."""
    return {key: getattr(args, key) for key in identity_keys(name, type(args))}


def with_later_keys(recorded: dict[str, Any], name: str) -> dict[str, Any]:
    """A recorded stage identity, with the identity keys declared after it was written read as their defaults
    (the behaviour before the key existed), so that a new key does not invalidate every finished result."""
    return {**{key: default_of(key) for key in identity_keys(name) if key not in recorded}, **recorded}


FINGERPRINT_KEYS = ("model_files", "task_model_files")  # content fingerprints of the models a result was made from


def same_identity(recorded: Any, settings: dict[str, Any], name: str, ignore: tuple[str, ...] = ()) -> bool:
    """Whether a recorded stage identity is ``settings`` (identity keys declared since it was written read as their
    defaults; a record written before models were fingerprinted is matched without the fingerprints, by path as
    then); ``ignore``: keys left out of the comparison."""
    return not identity_differences(recorded, settings, name, ignore) if isinstance(recorded, dict) else False


def identity_differences(
    recorded: dict[str, Any], settings: dict[str, Any], name: str, ignore: tuple[str, ...] = ()
) -> list[str]:
    """The keys on which a recorded stage identity and ``settings`` differ (see :func:`same_identity`)."""
    recorded, settings = with_later_keys(recorded, name), with_later_keys(settings, name)
    skip = {*ignore, *(key for key in FINGERPRINT_KEYS if key not in recorded)}
    return sorted(k for k in {*recorded, *settings} if k not in skip and recorded.get(k) != settings.get(k))


def default_of(key: str, cls: type | None = None) -> Any:
    """The declared default of a ``p2d_*`` key."""
    for f in p2d_fields(cls):
        if f.name == key:
            return f.default
    raise KeyError(key)


def uses_p2d(values: Mapping[str, Any], finetuning_type: str | None) -> bool:
    """Whether a run with these ``p2d_*`` values (missing keys: their defaults) uses any P2D feature."""
    value = lambda key: values.get(key, default_of(key))
    return (
        finetuning_type in HEAD_FINETUNING_TYPES
        or value("p2d_data_selection") != "none"
        or value("p2d_aer_reference") is not None
        or bool(value("p2d_aer_estimate_steps"))
    )


def applicable(
    values: Mapping[str, Any], finetuning_type: str | None, cls: type | None = None
) -> dict[str, str | None]:
    """The one rule of which ``p2d_*`` key applies to which run: for every key, None where it takes effect with these
    values (missing keys: their defaults) and ``finetuning_type``, else why it changes nothing. The parse-time
    warnings, the Python API, LLaMA-Board and the grid all ask this."""
    value = lambda key: values.get(key, default_of(key, cls))
    trains_heads = finetuning_type == "p2d_heads"
    lofit = finetuning_type == "lofit"
    selection = value("p2d_data_selection")
    selects = selection != "none"
    needs_heads = trains_heads or selection == "p2d"
    identifies = needs_heads and not value("p2d_heads_file")
    scorer = value("p2d_head_selection")
    proxy = identifies and scorer in PROXY_SCORERS and value("p2d_task_model") is None
    no_heads = "no heads are identified (no p2d_heads or lofit training or p2d selection, or a heads file gives them)"
    rules = {
        "p2d_head_ratio": (identifies or lofit, no_heads),
        "p2d_head_trainable_layers": (identifies or lofit, no_heads),
        "p2d_head_selection": (identifies, "no heads are identified"),
        "p2d_heads_file": (needs_heads, "nothing uses a head set (no p2d_heads training or p2d selection)"),
        "p2d_seed": (identifies or selects or lofit, "nothing is sampled (no stage I, no data selection, no LoFiT)"),
        "p2d_fhi_samples": (
            identifies and scorer in DATA_SCORERS and (scorer == "gradient" or proxy),
            "no FHI examples are used",
        ),
        "p2d_task_model": (identifies and scorer in PROXY_SCORERS, "no w1/cosine heads are identified"),
        "p2d_data_selection": (True, ""),  # the switch of stage II
        "p2d_icl_max_new_tokens": (
            selection in PROBING_SELECTIONS and value("p2d_icl_scoring") == "generate",
            "teacher-forced probing generates nothing"
            if selection in PROBING_SELECTIONS
            else "no probing selection (p2d, data_whisperer)",
        ),
    }
    by_concern = {
        "proxy": (proxy, "no proxy is trained"),
        "adaptation": (trains_heads, "only `finetuning_type: p2d_heads` trains head slices"),
        "selection": (selects, "`p2d_data_selection` is none"),
        "probing": (selection in PROBING_SELECTIONS, "no probing selection (p2d, data_whisperer)"),
        "aer": (True, ""),
        "heads": (True, ""),
    }
    reasons = {}
    for f in p2d_fields(cls):
        key = f.name
        if key.startswith("p2d_lofit_"):
            effective, why = lofit, "only `finetuning_type: lofit` uses it"
        elif key.startswith("p2d_nuggets_"):
            effective, why = selection == "nuggets", "only `p2d_data_selection: nuggets` uses it"
        else:
            effective, why = rules.get(key) or by_concern[f.metadata["concern"]]
        reasons[key] = None if effective else why
    return reasons
