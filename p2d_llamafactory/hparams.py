"""P2D arguments: the ``p2d_*`` keys a LLaMA-Factory YAML accepts, validated at parse time."""

import math
from dataclasses import dataclass, field
from typing import Literal


HEAD_SELECTIONS = ("w1", "random", "cosine", "gradient")
DATA_SELECTIONS = ("none", "p2d", "random", "ifd", "data_whisperer")
ICL_METRICS = ("auto", "em", "rougeL")
ICL_SCORINGS = ("generate", "teacher_forced")
HEAD_MODULES = ("q", "k", "v", "o")
DEFAULT_HEAD_MODULES = ("q", "o")
_MODULE_ALIASES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o"}


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


def heads_to_select(ratio: float, num_heads: int) -> int:
    """Number of heads kept for ``ratio`` of ``num_heads`` (round half up)."""
    return math.floor(ratio * num_heads + 0.5)


@dataclass
class P2DArguments:
    r"""Arguments of the P2D pipeline (stage I: head identification; stage III: sparse head adaptation)."""

    p2d_head_ratio: float = field(
        default=0.1,
        metadata={"help": "Fraction of all attention heads to select and train (rho_P), in (0, 1]."},
    )
    p2d_head_modules: str | None = field(
        default=None,
        metadata={
            "help": (
                "Per-head slices that train with `finetuning_type: p2d_heads`: a comma-separated subset of "
                "q (query rows), k (key rows), v (value rows), o (output columns), or `all`. Under GQA the k/v "
                "rows of a head are shared by its query-head group. Default: q,o."
            )
        },
    )
    p2d_head_selection: Literal["w1", "random", "cosine", "gradient"] = field(
        default="w1",
        metadata={
            "help": (
                "How heads are scored: w1 (Wasserstein-1 between base and proxy, the paper's), random (the "
                "random-heads baseline), cosine (1 - cosine similarity of the same distributions), gradient "
                "(|weight x gradient| on the FHI examples)."
            )
        },
    )
    p2d_fhi_samples: int = field(
        default=100,
        metadata={"help": "Number of random training examples for the Fast Head Identification proxy."},
    )
    p2d_fhi_steps: int = field(
        default=20,
        metadata={"help": "Full-batch update steps of the Fast Head Identification proxy."},
    )
    p2d_fhi_lr: float = field(
        default=2e-5,
        metadata={"help": "Learning rate of the Fast Head Identification proxy (AdamW, float32 master weights)."},
    )
    p2d_temperature: float = field(
        default=0.1,
        metadata={"help": "Softmax temperature tau of the head-scoring distributions."},
    )
    p2d_task_model: str | None = field(
        default=None,
        metadata={"help": "Score heads against this fine-tuned task model instead of training a proxy."},
    )
    p2d_heads_file: str | None = field(
        default=None,
        metadata={"help": "Reuse the head set in this p2d_heads.json instead of identifying heads."},
    )
    p2d_seed: int = field(
        default=42,
        metadata={"help": "Seed of the FHI example sample, random head selection and data-selection sampling."},
    )
    p2d_data_selection: Literal["none", "p2d", "random", "ifd", "data_whisperer"] = field(
        default="none",
        metadata={
            "help": (
                "Select training data before tokenization (any finetuning_type): p2d (ICL probing with attention "
                "summed over the selected heads), random, ifd (instruction-following difficulty), data_whisperer "
                "(ICL probing with all heads of one middle layer), or none."
            )
        },
    )
    p2d_data_ratio: float = field(
        default=0.1,
        metadata={"help": "Fraction of the training examples kept by data selection (rho_D), in (0, 1]."},
    )
    p2d_icl_instruction: str | None = field(
        default=None,
        metadata={
            "help": (
                "Task instruction of the probe prompts: math, summarization, biomedical, general, or your own "
                "text. Default: math for #### answers, general otherwise."
            )
        },
    )
    p2d_icl_demos: int = field(default=5, metadata={"help": "Demonstrations per probe prompt (n_d)."})
    p2d_icl_queries: int = field(default=3, metadata={"help": "Queries per probe prompt (n_q)."})
    p2d_icl_rounds: int = field(
        default=1, metadata={"help": "Probe until every candidate has been a demonstration this many times."}
    )
    p2d_icl_metric: str = field(
        default="auto",
        metadata={"help": "Metric of the probe answers: em (final #### number), rougeL (F1, stemmed), or auto."},
    )
    p2d_icl_scoring: Literal["generate", "teacher_forced"] = field(
        default="generate",
        metadata={
            "help": (
                "generate: decode the answers and score them with the metric (the paper's); teacher_forced: "
                "score the gold answers' likelihood in the same single forward pass, no decoding."
            )
        },
    )
    p2d_icl_max_new_tokens: int = field(default=256, metadata={"help": "Generation bound per probe prompt."})
    p2d_icl_batch_size: int = field(default=4, metadata={"help": "Probe prompts per forward pass."})
    p2d_aer_reference: str | None = field(
        default=None,
        metadata={
            "help": "output_dir of a full fine-tuning run on the full data: its training time is t_FFT of the AER."
        },
    )
    p2d_aer_estimate_steps: int | None = field(
        default=None,
        metadata={
            "help": (
                "Estimate t_FFT of the AER by timing this many full-parameter steps of the same model on the same "
                "data and hardware, extrapolated per token to the full data and epochs."
            )
        },
    )
    p2d_data_ppl_samples: int = field(
        default=100,
        metadata={"help": "Examples (of all, and of the selected) whose base-model perplexity the report compares."},
    )

    def __post_init__(self) -> None:
        if self.p2d_head_selection not in HEAD_SELECTIONS:
            raise _choice_error("p2d_head_selection", self.p2d_head_selection, HEAD_SELECTIONS)
        if not (0.0 < float(self.p2d_head_ratio) <= 1.0):
            raise ValueError(f"`p2d_head_ratio` must be in (0, 1]; got {self.p2d_head_ratio!r}.")
        if int(self.p2d_fhi_samples) < 1:
            raise ValueError(f"`p2d_fhi_samples` must be a positive integer; got {self.p2d_fhi_samples!r}.")
        if int(self.p2d_fhi_steps) < 1:
            raise ValueError(f"`p2d_fhi_steps` must be a positive integer; got {self.p2d_fhi_steps!r}.")
        if not float(self.p2d_fhi_lr) > 0:
            raise ValueError(f"`p2d_fhi_lr` must be > 0; got {self.p2d_fhi_lr!r}.")
        if not float(self.p2d_temperature) > 0:
            raise ValueError(f"`p2d_temperature` must be > 0; got {self.p2d_temperature!r}.")
        if self.p2d_data_selection not in DATA_SELECTIONS:
            raise _choice_error("p2d_data_selection", self.p2d_data_selection, DATA_SELECTIONS)
        if self.p2d_icl_metric not in ICL_METRICS:
            raise _choice_error("p2d_icl_metric", self.p2d_icl_metric, ICL_METRICS)
        if self.p2d_icl_scoring not in ICL_SCORINGS:
            raise _choice_error("p2d_icl_scoring", self.p2d_icl_scoring, ICL_SCORINGS)
        if not (0.0 < float(self.p2d_data_ratio) <= 1.0):
            raise ValueError(f"`p2d_data_ratio` must be in (0, 1]; got {self.p2d_data_ratio!r}.")
        for key in (
            "p2d_icl_demos",
            "p2d_icl_queries",
            "p2d_icl_rounds",
            "p2d_icl_max_new_tokens",
            "p2d_icl_batch_size",
        ):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"`{key}` must be a positive integer; got {getattr(self, key)!r}.")
        if self.p2d_aer_reference is not None and self.p2d_aer_estimate_steps is not None:
            raise ValueError("Set at most one of `p2d_aer_reference` and `p2d_aer_estimate_steps`.")
        if self.p2d_aer_estimate_steps is not None and int(self.p2d_aer_estimate_steps) < 1:
            raise ValueError(
                f"`p2d_aer_estimate_steps` must be a positive integer; got {self.p2d_aer_estimate_steps!r}."
            )
        if self.p2d_task_model is not None and self.p2d_heads_file is not None:
            raise ValueError("Set at most one of `p2d_task_model` and `p2d_heads_file`.")
        if self.p2d_task_model is not None and self.p2d_head_selection in ("random", "gradient"):
            raise ValueError(
                f"`p2d_task_model` compares weights, which `p2d_head_selection: {self.p2d_head_selection}` does not "
                "use; choose w1 or cosine."
            )
        parse_head_modules(self.p2d_head_modules)

    @property
    def head_modules(self) -> tuple[str, ...]:
        return parse_head_modules(self.p2d_head_modules)

    @property
    def uses_p2d(self) -> bool:
        """Whether any P2D feature is on (then the timing callback joins the run)."""
        return (
            getattr(self, "finetuning_type", None) == "p2d_heads"
            or self.p2d_data_selection != "none"
            or self.p2d_aer_reference is not None
            or self.p2d_aer_estimate_steps is not None
        )

    def p2d_dict(self) -> dict[str, object]:
        """The P2D keys and values, for records such as p2d_heads.json."""
        return {name: getattr(self, name) for name in P2DArguments.__dataclass_fields__}
