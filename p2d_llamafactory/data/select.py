"""Stage II orchestration: score candidates with the chosen method, keep the top ``p2d_data_ratio``."""

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..distributed import from_rank0, rank
from ..files import SCORES_FILE, all_finite, model_fingerprint, read_json_file
from ..heads.headset import HeadSet
from ..heads.layout import AttentionLayout
from ..hparams import count_for_ratio, identity, identity_differences
from ..io import atomic_write_json
from ..methods import PROBING_SELECTIONS
from ..tokens import pad_id
from .baselines import ifd_scores, random_scores
from .cache import ProbeCheckpoint, finished_scores, progress_files, same_selection
from .metrics import resolve_metric, score_answers
from .nuggets import NuggetsResult, NuggetsSettings, choose_anchors, frame_turn, nuggets_scores
from .probe import Prober, ProbeSettings, final_scores, plan_prompts, probe_all
from .prompts import BUILTIN_STYLES, ChatFrame, Example, task_style


logger = logging.getLogger(__name__)


@dataclass
class SelectionInputs:
    """Everything stage II needs from the run."""

    examples: list[Example]  # the training split, index = position
    token_lengths: list[int]  # prompt + response tokens per example
    max_length: int  # longer examples are not probed (counted, never selected)
    tokenizer: Any
    frame: ChatFrame
    load_model: Callable[[], nn.Module]
    layout: AttentionLayout
    head_set: HeadSet | None  # for p2d: the run's own stage I or a heads file
    output_dir: Path | None
    model_name: str
    data_fingerprint: str
    progress: bool = True


@dataclass
class Selection:
    method: str
    selected: list[int]
    scores: list[float]
    uses: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    attention: list[float] = field(default_factory=list)  # mean w per example (probing methods)
    anchors: list[int] = field(default_factory=list)  # the anchor examples (nuggets)
    inherited_from: str | None = None  # the p2d_data_scores_file whose scores these are (another run paid them)


def top_examples(scores: list[float], k: int, method: str, tie_break: list[float] | None = None) -> list[int]:
    """The k best-scoring examples (NaN never); ties go to the higher ``tie_break`` value, then the lower index.
    For IFD, scores >= 1 (the response is easier alone than with its instruction) rank last, as in Cherry LLM."""

    def key(i: int):
        s = scores[i]
        return (s >= 1.0 if method == "ifd" else False, -s, -tie_break[i] if tie_break else 0.0, i)

    ranked = sorted((i for i, s in enumerate(scores) if not math.isnan(s)), key=key)
    return sorted(ranked[:k])


def probe_heads(method: str, inputs: SelectionInputs) -> dict[int, list[int]] | None:
    """Heads whose attention is summed: the selected heads (p2d), or one middle layer (Data Whisperer)."""
    if method == "data_whisperer":
        return {inputs.layout.num_layers // 2: list(range(inputs.layout.num_heads))}
    if method == "p2d":
        if inputs.head_set is None:
            raise ValueError(
                "`p2d_data_selection: p2d` needs a head set: use `finetuning_type: p2d_heads` or `p2d_heads_file`."
            )
        return inputs.head_set.by_layer()
    return None


def probe_settings(args, metric: str) -> ProbeSettings:
    return ProbeSettings(
        num_demos=args.p2d_icl_demos,
        num_queries=args.p2d_icl_queries,
        rounds=args.p2d_icl_rounds,
        scoring=args.p2d_icl_scoring,
        metric=metric,
        max_new_tokens=args.p2d_icl_max_new_tokens,
        batch_size=args.p2d_icl_batch_size,
        seed=args.p2d_seed,
    )


def selection_settings(args, inputs: SelectionInputs, heads: dict[int, list[int]] | None) -> dict[str, Any]:
    """What identifies a selection result: every ``selection`` identity field, the model, data and heads."""
    heads_json = {str(k): list(v) for k, v in sorted(heads.items())} if heads else None
    return {
        **identity(args, "selection"),
        "model": inputs.model_name,
        "model_files": model_fingerprint(inputs.model_name),
        "data": inputs.data_fingerprint,
        "heads": heads_json,
        "max_length": inputs.max_length,
    }


def _probe(model: nn.Module, inputs: SelectionInputs, args, candidates, heads, checkpoint: ProbeCheckpoint | None):
    metric = resolve_metric(args.p2d_icl_metric, [inputs.examples[i].response for i in candidates])
    settings = probe_settings(args, metric)
    style = task_style(args.p2d_icl_instruction, metric)
    scorer = functools.partial(score_answers, echo_label=style.input_label)  # echoed queries end an answer
    prober = Prober(model, inputs.tokenizer, inputs.frame, style, heads, settings, scorer)
    done = checkpoint.load() if checkpoint else {}
    on_result = checkpoint.append if checkpoint else (lambda result: None)
    examples = {i: inputs.examples[i] for i in candidates}
    results = probe_all(prober, examples, plan_prompts(candidates, settings), done, on_result, inputs.progress)
    return final_scores(results, len(inputs.examples))


def _nuggets(
    model: nn.Module, inputs: SelectionInputs, args, candidates, settings
) -> tuple[list[float], list[int], float]:
    """Nuggets' golden scores of the candidates, the anchors, and the scoring seconds of interrupted sessions. The
    anchors are part of the checkpoint's identity: a resumed run with other anchors starts over."""
    nuggets = NuggetsSettings(
        args.p2d_nuggets_anchors, args.p2d_nuggets_anchor_sampling, args.p2d_nuggets_batch_size, args.p2d_seed
    )
    tokenizer = inputs.tokenizer
    pad = pad_id(tokenizer)
    turns = {i: frame_turn(tokenizer, inputs.frame, inputs.examples[i]) for i in candidates}
    anchors = from_rank0(choose_anchors(model, turns, nuggets, pad))
    checkpoint = None
    if inputs.output_dir is not None:
        checkpoint = ProbeCheckpoint(inputs.output_dir, {**settings, "anchors": anchors}, NuggetsResult, "candidate")
    done = checkpoint.load() if checkpoint else {}
    on_result = checkpoint.append if checkpoint else (lambda result: None)
    results = nuggets_scores(model, turns, anchors, nuggets, pad, done, on_result, inputs.progress)
    scores = [float("nan")] * len(inputs.examples)
    for i, result in results.items():
        scores[i] = result.score
    return scores, anchors, checkpoint.previous_seconds if checkpoint else 0.0


def check_selection(args, token_lengths: list[int], max_length: int) -> tuple[int, list[int], list[int]]:
    """(k, candidates, skipped): what selection keeps and scores; raises, before any model work, where it cannot
    (a ratio that keeps nothing, too few examples short enough for one probe prompt)."""
    n = len(token_lengths)
    k = count_for_ratio(args.p2d_data_ratio, n)
    if k < 1:
        raise ValueError(f"`p2d_data_ratio: {args.p2d_data_ratio}` keeps 0 of the {n} training examples.")
    skipped = [i for i, length in enumerate(token_lengths) if length > max_length]
    skipped_set = set(skipped)
    candidates = [i for i in range(n) if i not in skipped_set]
    if args.p2d_data_selection in PROBING_SELECTIONS:
        try:
            plan_prompts(candidates, ProbeSettings(args.p2d_icl_demos, args.p2d_icl_queries, 1))
        except ValueError as err:
            raise ValueError(
                f"{err} ({len(skipped)} of the {n} examples are longer than cutoff_len {max_length}); lower "
                "`p2d_icl_demos`/`p2d_icl_queries` or use more data."
            ) from None
    if args.p2d_data_selection == "nuggets" and args.p2d_nuggets_anchors > len(candidates):
        raise ValueError(
            f"`p2d_nuggets_anchors: {args.p2d_nuggets_anchors}` is larger than the pool the anchors are drawn from: "
            f"{len(candidates)} usable examples ({len(skipped)} of the {n} are longer than cutoff_len {max_length}); "
            "lower it or use more data."
        )
    return k, candidates, skipped


def check_instruction(args, tokenizer, max_length: int) -> None:
    """A custom ``p2d_icl_instruction`` must leave room in a probe prompt of ``max_length`` (cutoff_len) tokens for
    the demonstrations and queries; refused before any model work (a long one would only fail deep in probing, or
    exhaust memory)."""
    instruction = args.p2d_icl_instruction
    if args.p2d_data_selection not in PROBING_SELECTIONS or not instruction or instruction in BUILTIN_STYLES:
        return
    tokens = len(tokenizer.encode(instruction, add_special_tokens=False))
    room = f"for its {args.p2d_icl_demos} demonstrations and {args.p2d_icl_queries} queries"
    if tokens >= max_length:
        raise ValueError(
            f"`p2d_icl_instruction` is {tokens} tokens, more than a probe prompt holds (cutoff_len {max_length}), "
            f"with no room {room}. Shorten it, or use a built-in one (math, summarization, biomedical, general)."
        )
    if tokens >= max_length // 2:
        logger.warning(
            "P2D: `p2d_icl_instruction` is %d tokens, half or more of cutoff_len %d: probe prompts leave little room %s.",
            tokens,
            max_length,
            room,
        )


def select_examples(inputs: SelectionInputs, args) -> Selection:
    """Score the training examples with ``args.p2d_data_selection`` and keep the top ``p2d_data_ratio``."""
    method = args.p2d_data_selection
    n = len(inputs.examples)
    k, candidates, skipped = check_selection(args, inputs.token_lengths, inputs.max_length)
    heads = probe_heads(method, inputs)
    settings = selection_settings(args, inputs, heads)
    if (cached := _reusable_scores(inputs.output_dir, args.p2d_data_scores_file, settings)) is not None:
        return _cached_selection(method, cached)
    if skipped:
        logger.warning(
            "P2D: %d examples are longer than %d tokens and are not scored", len(skipped), inputs.max_length
        )
    start = time.perf_counter()
    uses: list[int] = []
    attention: list[float] = []
    anchors: list[int] = []
    earlier = 0.0  # scoring seconds of interrupted sessions of this run (probing resumes)
    if method == "random":
        scores = random_scores(n, args.p2d_seed)
    else:
        model = inputs.load_model()
        if method == "ifd":
            subset = [inputs.examples[i] for i in candidates]
            values = ifd_scores(
                model, inputs.tokenizer, inputs.frame, subset, args.p2d_icl_batch_size, inputs.progress
            )
            scores = [float("nan")] * n
            for i, value in zip(candidates, values):
                scores[i] = value
        elif method == "nuggets":
            scores, anchors, earlier = _nuggets(model, inputs, args, candidates, settings)
        else:
            checkpoint = ProbeCheckpoint(inputs.output_dir, settings) if inputs.output_dir is not None else None
            scores, uses, attention = _probe(model, inputs, args, candidates, heads, checkpoint)
            earlier = checkpoint.previous_seconds if checkpoint is not None else 0.0
    for i in skipped:
        scores[i] = float("nan")
    timings = {"data_scoring_seconds": earlier + time.perf_counter() - start}
    selected = top_examples(scores, k, method, attention or None)
    # every rank gathered the same scores; rank 0's selection is the one written and used
    selection = from_rank0(Selection(method, selected, scores, uses, skipped, timings, attention, anchors))
    if inputs.output_dir is not None and rank() == 0:
        atomic_write_json(inputs.output_dir / SCORES_FILE, _scores_record(selection, settings))
        for path in progress_files(inputs.output_dir):
            path.unlink()
    return selection


def _reusable_scores(output_dir: Path | None, given: str | None, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The scores record to reuse, if any: ``p2d_data_scores_file`` (copied into ``output_dir``; refused when made
    with other settings), else an identical finished run's in ``output_dir`` (rank 0 decides, every rank follows)."""
    own = output_dir / SCORES_FILE if output_dir is not None else None
    if given and not (own is not None and own.resolve() == Path(given).resolve()):
        cached = given_scores(given, settings)
        if own is not None and rank() == 0:  # the run's output dir holds the selection it trained on
            atomic_write_json(own, cached)
    else:
        cached = from_rank0(finished_scores(output_dir, settings) if own is not None and rank() == 0 else None)
    if cached is not None:
        logger.info("P2D: reusing the identical data scores in %s", cached.get("inherited_from") or own)
    return cached


def _cached_selection(method: str, cached: dict[str, Any]) -> Selection:
    scores = [float("nan") if s is None else s for s in cached["scores"]]
    return Selection(
        method,
        cached["selected"],
        scores,
        cached["uses"],
        cached["skipped_too_long"],
        cached["timings"],
        anchors=cached.get("anchors", []),
        inherited_from=cached.get("inherited_from"),
    )


def read_scores_file(path: str | Path, what: str = "`p2d_data_scores_file`") -> dict[str, Any]:
    """A scores record (``p2d_data_scores.json``), validated: types, finite numbers, the selected indices distinct
    and inside the data, one score per example; refused naming ``what``, the path and what is wrong."""
    record = read_json_file(path, what)
    where = f"{what} {str(path)!r}"
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise ValueError(f"{where} is not a P2D scores file (no `settings`).")
    n = record.get("num_examples")
    if not _is_count(n):
        raise ValueError(f"{where}: `num_examples` must be a whole number >= 0; got {n!r:.40}.")
    for key in ("selected", "skipped_too_long", "anchors", "uses"):
        values = record.get(key, [])
        limit = None if key == "uses" else n
        if not isinstance(values, list) or not all(_is_count(v) and (limit is None or v < limit) for v in values):
            raise ValueError(f"{where}: `{key}` must list example indices in [0, {n}); got {values!r:.60}.")
    selected = record.get("selected")
    if not selected or len(set(selected)) != len(selected):
        raise ValueError(f"{where}: `selected` must list distinct example indices, at least one.")
    scores = record.get("scores")
    if (
        not isinstance(scores, list)
        or len(scores) != n
        or not all(s is None or (isinstance(s, (int, float)) and not isinstance(s, bool)) for s in scores)
    ):
        raise ValueError(f"{where}: `scores` must hold one number (or null) per example, {n} in all.")
    if not all_finite([scores, record.get("timings", {}), record.get("attention", [])]):
        raise ValueError(f"{where} holds a number that is not finite (NaN or infinity).")
    ratio = record["settings"].get("p2d_data_ratio")
    if isinstance(ratio, (int, float)) and len(selected) > count_for_ratio(ratio, n):
        raise ValueError(f"{where}: {len(selected)} selected, more than `p2d_data_ratio` {ratio} of {n} keeps.")
    return record


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _differences(recorded: dict[str, Any], settings: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    return identity_differences(recorded, settings, "selection", ignore)


def check_scores_file(path: str, settings: dict[str, Any]) -> None:
    """Before stage I: ``p2d_data_scores_file`` is a valid scores file made with this run's selection settings,
    model and data (its heads are compared once stage I has them)."""
    differ = _differences(read_scores_file(path)["settings"], settings, ignore=("heads",))
    if differ:
        raise ValueError(
            f"`p2d_data_scores_file` {path!r} was made with other selection settings than this run's "
            f"({', '.join(differ)} differ); point it to a run with the same ones, or leave it out to score again."
        )


def given_scores(path: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The scores record of ``p2d_data_scores_file``, marked as inherited; refused (naming what differs) when it
    was made with other selection settings, model, data or heads than this run's."""
    record = read_scores_file(path)
    if not same_selection(record["settings"], settings):
        differ = _differences(record["settings"], settings)
        raise ValueError(
            f"`p2d_data_scores_file` {path!r} was made with other selection settings than this run's "
            f"({', '.join(differ)} differ); point it to a run with the same ones, or leave it out to score again."
        )
    return {**record, "inherited_from": record.get("inherited_from") or str(path)}


def _scores_record(selection: Selection, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "settings": settings,
        "method": selection.method,
        "num_examples": len(selection.scores),
        "num_selected": len(selection.selected),
        "selected": selection.selected,
        "scores": [None if math.isnan(s) else s for s in selection.scores],
        "uses": selection.uses,
        "attention": [None if math.isnan(a) else a for a in selection.attention],
        "skipped_too_long": selection.skipped,
        "anchors": selection.anchors,
        "timings": selection.timings,
    }
