"""P2D as a Python API: the three stages and the AER on a plain transformers model, outside ``llamafactory-cli``.

For a notebook, or a trainer other than LLaMA-Factory's (TRL's ``SFTTrainer``, a PyTorch loop). Each function takes
the same ``p2d_*`` keys as the YAML, validated by the same checks (a bad key or value raises before any model work,
naming the key and what is allowed), calls the same implementation as the CLI, and writes the same files into
``output_dir``::

    from p2d_llamafactory import api

    heads = api.identify_heads(model, tokenizer, examples, output_dir="out", p2d_head_ratio=0.1)  # stage I
    selection = api.select_data(model, tokenizer, examples, heads=heads, output_dir="out")        # stage II
    subset = [examples[i] for i in selection.selected]
    model = api.apply_head_adapter(model, heads, output_dir="out", learning_rate=1e-4)            # stage III
    ...  # train ``model`` (only the head slices require grad) at ``model.p2d_learning_rate``
    model.save_pretrained("out")  # a standard PEFT LoRA adapter + p2d_heads.json
    api.aer("out", training_seconds=..., t_fft=api.estimate_t_fft(full_model, batches, full_data_tokens=...))

``examples`` are dicts with ``prompt`` and ``response`` (or LLaMA-Factory's alpaca ``instruction``, ``input``,
``output``). Stage I and training read them through :func:`tokenize_examples`: the tokenizer's chat template around
the prompt, and the loss on the response only. Stage I also takes examples already tokenized (``input_ids``,
``labels``).

Under ``torchrun`` (a ``torch.distributed`` process group is initialized), call :func:`identify_heads` and
:func:`select_data` on every rank with the same arguments: the ranks share the work, every rank gets the same result,
and rank 0 writes the files.

This module never imports LLaMA-Factory.
"""

import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import pipeline
from .checks import (
    check_aer_reference,
    check_head_ratio,
    check_head_sources,
    check_output_dir,
    check_quantized_base,
)
from .checks import head_learning_rate as _head_learning_rate
from .data.prompts import ChatFrame, Example, examples_fingerprint
from .data.report import sharegpt_record
from .data.select import Selection, SelectionInputs, check_instruction, check_selection
from .distributed import rank
from .files import AER_FILE, HEADS_FILE
from .heads.headset import HeadSet
from .heads.layout import AttentionLayout, find_attention_layout
from .hparams import HEAD_LR_SCALE, P2DArguments, identity_keys, keys_of_concern, p2d_keys
from .io import OutputDirLock, atomic_write_json
from .models import is_quantized
from .report.aer import aer_record, read_timings, record_timings
from .report.aer import reference_training_seconds as _reference_training_seconds


__all__ = [
    "HeadSet",
    "Selection",
    "TFFT",
    "aer",
    "apply_head_adapter",
    "chat_frame",
    "estimate_t_fft",
    "head_learning_rate",
    "identify_heads",
    "select_data",
    "timed",
    "timing_callback",
    "tokenize_examples",
]

logger = logging.getLogger(__name__)

# the p2d_* keys each function takes, from the fields' declared concerns (never listed by hand)
HEAD_KEYS = (*keys_of_concern("heads"), *keys_of_concern("proxy"))
SELECT_KEYS = tuple(
    dict.fromkeys((*keys_of_concern("selection"), *keys_of_concern("probing"), *identity_keys("selection")))
)
ADAPTATION_KEYS = keys_of_concern("adaptation")
AER_KEYS = keys_of_concern("aer")
DEFAULT_MAX_LENGTH = 2048  # LLaMA-Factory's cutoff_len default
_PROMPT_MARK, _RESPONSE_MARK = "\x1fP2D-PROMPT\x1f", "\x1fP2D-RESPONSE\x1f"


# --- settings -------------------------------------------------------------------------------------------------------


def _settings(function: str, keys: Mapping[str, Any], allowed: Sequence[str], **defaults: Any) -> P2DArguments:
    """``P2DArguments`` of ``keys``, refusing keys that ``function`` does not take, naming the key and the allowed
    ones; values go through the CLI's own checks (types, choices, ranges)."""
    for key in keys:
        if key in allowed:
            continue
        takes = f"{function}() takes {', '.join(allowed)}"
        if key in p2d_keys():
            raise ValueError(f"`{key}` is not a setting of {function}(); {takes}.")
        hint = f" Did you mean `p2d_{key}`?" if f"p2d_{key}" in allowed else ""
        raise ValueError(f"`{key}` is not a P2D key; {takes}.{hint}")
    return P2DArguments(**{**defaults, **keys})


def _warn_ineffective(args: P2DArguments, keys: Mapping[str, Any], finetuning_type: str | None) -> None:
    """The CLI's warnings for keys that change nothing in this call (``p2d_fhi_*`` with a heads file, ...)."""
    args.finetuning_type = finetuning_type  # what P2DArguments reads to tell which stages run
    for key, why in args.ineffective_keys().items():
        if key in keys:
            logger.warning("P2D: `%s` has no effect in this call: %s.", key, why)


def _output_dir(output_dir: str | Path | None) -> Path | None:
    if output_dir is None:
        return None
    check_output_dir(str(output_dir))
    return Path(output_dir)


def _lock(output_dir: Path | None, function: str):
    """The output dir's lock, held by rank 0 (under ``torchrun`` every rank runs the function together)."""
    if output_dir is None or rank() != 0:
        return nullcontext()
    return OutputDirLock(output_dir, command=f"p2d_llamafactory.api.{function}")


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode for scoring and probing; the model's own mode afterwards."""
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)


def _model_name(model: nn.Module, model_name: str | None) -> str:
    if model_name:
        return model_name
    config = getattr(model, "config", None)
    return getattr(config, "_name_or_path", "") or type(model).__name__


# --- examples -------------------------------------------------------------------------------------------------------


def _text_pair(example: Mapping[str, Any], index: int) -> tuple[str, str]:
    """(prompt, response) of a ``prompt``/``response`` or alpaca (``instruction``, ``input``, ``output``) example."""
    if not isinstance(example, Mapping):
        raise ValueError(f"Example {index} is a {type(example).__name__}, not a `prompt`/`response` dict.")
    if "prompt" in example and "response" in example:
        prompt, response = example["prompt"], example["response"]
    elif "instruction" in example and "output" in example:
        query = [example["instruction"], *([example["input"]] if example.get("input") else [])]
        prompt, response = "\n".join(str(part) for part in query), example["output"]  # as LLaMA-Factory's alpaca
    else:
        raise ValueError(
            f"Example {index} (keys {sorted(example)}) is not a `prompt`/`response` dict nor an alpaca `instruction`/`input`/`output` "
            "dict."
        )
    for name, text in (("prompt", prompt), ("response", response)):
        if not isinstance(text, str):
            raise ValueError(f"Example {index}'s {name} is {type(text).__name__} {text!r:.40}, not a text.")
    if not response.strip():
        raise ValueError(f"Example {index} has no response; P2D scores and trains prompt/response pairs.")
    return prompt, response


def _text_examples(examples: Sequence[Mapping[str, Any]]) -> list[Example]:
    return [Example(i, *_text_pair(example, i)) for i, example in enumerate(examples)]


def chat_frame(tokenizer: Any, system: str | None = None) -> ChatFrame:
    """The token ids the tokenizer's chat template puts before a user prompt, between it and the answer, and after
    the answer (with ``system`` as the system turn). Without a chat template: nothing, a newline, and EOS."""
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
    if not getattr(tokenizer, "chat_template", None):
        return ChatFrame([], encode("\n"), [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": _PROMPT_MARK}, {"role": "assistant", "content": _RESPONSE_MARK}]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    if text.count(_PROMPT_MARK) != 1 or text.count(_RESPONSE_MARK) != 1:
        raise ValueError("The tokenizer's chat template does not render a user turn and an answer verbatim.")
    before, rest = text.split(_PROMPT_MARK)
    between, after = rest.split(_RESPONSE_MARK)
    return ChatFrame(encode(before), encode(between), encode(after))


def tokenize_examples(
    tokenizer: Any,
    examples: Sequence[Mapping[str, Any]],
    max_length: int = DEFAULT_MAX_LENGTH,
    system: str | None = None,
) -> list[dict[str, list[int]]]:
    """``input_ids``, ``attention_mask`` and ``labels`` of each example: the chat-framed prompt and the response,
    with the prompt masked out of the labels (-100), cut at ``max_length``. Examples already holding ``input_ids``
    are kept (``labels`` default to the ids). Stage I reads this form; it is also ready for a Trainer or a loop."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"`max_length` must be a whole number of tokens >= 1; got {max_length!r}.")
    frame = chat_frame(tokenizer, system)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False)
    rows = []
    for index, example in enumerate(examples):
        if isinstance(example, Mapping) and "input_ids" in example:
            ids = list(example["input_ids"])
            labels = list(example.get("labels", ids))
            mask = list(example.get("attention_mask", [1] * len(ids)))
        else:
            prompt, response = _text_pair(example, index)
            source = frame.prefix + encode(prompt) + frame.suffix
            target = encode(response) + frame.answer_end
            ids, labels, mask = source + target, [-100] * len(source) + target, [1] * (len(source) + len(target))
        rows.append(
            {"input_ids": ids[:max_length], "attention_mask": mask[:max_length], "labels": labels[:max_length]}
        )
    return rows


# --- stage I --------------------------------------------------------------------------------------------------------


def identify_heads(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Mapping[str, Any]],
    *,
    output_dir: str | Path | None = None,
    model_name: str | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    micro_batch_size: int = 4,
    system: str | None = None,
    progress: bool = True,
    **settings: Any,
) -> HeadSet:
    """Stage I: the task-sensitive attention heads of ``model`` for ``examples``.

    Takes the stage I keys of the YAML (``p2d_head_ratio``, ``p2d_head_selection``, ``p2d_heads_file``,
    ``p2d_seed``, ``p2d_fhi_samples``, ``p2d_fhi_steps``, ``p2d_fhi_lr``, ``p2d_temperature``, ``p2d_task_model``),
    with the same defaults, and ``p2d_fhi_trainable``. ``model`` is left as it is (the proxy is a float32 copy, or
    float32 q/k/v copies swapped in for the proxy steps and out again). ``micro_batch_size`` only bounds
    memory (the proxy's steps are full-batch). ``model_name`` (default: the model's ``name_or_path``) is recorded.

    With ``output_dir``, writes ``p2d_heads.json``, ``p2d_heads.png`` and the time in ``p2d_timings.json``, as
    ``llamafactory-cli train`` does, and reuses an identical finished identification found there.
    """
    args = _settings("identify_heads", settings, HEAD_KEYS)
    if not examples and not args.p2d_heads_file and args.p2d_head_selection != "random" and not args.p2d_task_model:
        raise ValueError("identify_heads() got no `examples`; stage I scores heads on the task's examples.")
    _warn_ineffective(args, settings, "p2d_heads")
    layout = find_attention_layout(model)
    check_head_ratio(args.p2d_head_ratio, layout, args.p2d_head_trainable_layers)
    check_head_sources(args, model.config, layout)
    if is_quantized(model):
        check_quantized_base(args)
    out = _output_dir(output_dir)
    rows = tokenize_examples(tokenizer, examples, max_length, system)
    name = _model_name(model, model_name)
    place = pipeline.Output(out, rank() == 0, progress)
    with _lock(out, "identify_heads"), _eval_mode(model):
        return pipeline.find_heads(model, rows, layout, args, tokenizer, name, micro_batch_size, place)


def _as_head_set(heads: Any, layout: AttentionLayout, model_name: str, source: str) -> HeadSet:
    """A HeadSet from a HeadSet, a p2d_heads.json path, or [layer, head] pairs; checked against the layout."""
    if isinstance(heads, HeadSet):
        head_set = heads
    elif isinstance(heads, (str, Path)):
        head_set = HeadSet.load(heads, source=source)
    elif isinstance(heads, Sequence) and heads:
        pairs = [tuple(pair) for pair in heads]
        integer = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0  # True is not head 1
        if not all(len(p) == 2 and all(integer(v) for v in p) for p in pairs):
            raise ValueError(f"`{source}` pairs must be [layer, head] integers; got {list(heads)!r:.80}.")
        if len(set(pairs)) != len(pairs):
            raise ValueError(f"`{source}` repeats a [layer, head] pair.")
        head_set = HeadSet(
            model=model_name,
            shape=layout.shape(),
            method="given",
            seed=0,
            ratio=len(pairs) / layout.total_heads,
            scores=[],
            selected=pairs,
        )
    else:
        raise ValueError(
            f"`{source}` must be a HeadSet (from identify_heads), a p2d_heads.json path or a non-empty list of "
            f"[layer, head] pairs; got {heads!r:.80}."
        )
    head_set.check_shape(layout, source)
    return head_set


# --- stage II -------------------------------------------------------------------------------------------------------


def select_data(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Mapping[str, Any]],
    *,
    heads: HeadSet | str | Path | Sequence[Sequence[int]] | None = None,
    output_dir: str | Path | None = None,
    model_name: str | None = None,
    max_length: int = DEFAULT_MAX_LENGTH,
    system: str | None = None,
    progress: bool = True,
    **settings: Any,
) -> Selection:
    """Stage II: keep ``p2d_data_ratio`` of ``examples``, scored by ``p2d_data_selection`` (default ``p2d``:
    in-context probing with attention summed over ``heads``; also ``data_whisperer``, ``ifd``, ``random``).

    Takes the stage II keys of the YAML (``p2d_data_*``, ``p2d_icl_*``, ``p2d_seed``). ``heads`` (for ``p2d``): the
    head set of :func:`identify_heads`, a ``p2d_heads.json`` path, or [layer, head] pairs. Examples longer than
    ``max_length`` tokens (the CLI's ``cutoff_len``) are not probed and never selected. The selected indices are
    ``selection.selected``: ``[examples[i] for i in selection.selected]`` is the subset.

    With ``output_dir``, writes ``p2d_data_scores.json``, ``p2d_data_selected.json``, ``p2d_data_stats.json``,
    ``p2d_data_hist.png`` and the time in ``p2d_timings.json``, as ``llamafactory-cli train`` does; an interrupted
    probing resumes there and an identical finished one is reused.
    """
    args = _settings("select_data", settings, SELECT_KEYS, p2d_data_selection="p2d")
    if args.p2d_data_selection == "none":
        raise ValueError("`p2d_data_selection` must be one of p2d, random, ifd, data_whisperer for select_data().")
    _warn_ineffective(args, settings, None)
    texts = _text_examples(examples)
    layout = find_attention_layout(model)
    name = _model_name(model, model_name)
    head_set = None
    if args.p2d_data_selection == "p2d":
        if heads is None:
            raise ValueError("`p2d_data_selection: p2d` needs `heads`: the result of identify_heads() or a path.")
        head_set = _as_head_set(heads, layout, name, "heads")
    encode = lambda text: len(tokenizer.encode(text, add_special_tokens=False))
    token_lengths = [encode(ex.prompt) + encode(ex.response) for ex in texts]
    check_selection(args, token_lengths, max_length)  # before any model work, as the CLI
    check_instruction(args, tokenizer, max_length)
    out = _output_dir(output_dir)
    inputs = SelectionInputs(
        examples=texts,
        token_lengths=token_lengths,
        max_length=max_length,
        tokenizer=tokenizer,
        frame=chat_frame(tokenizer, system),
        load_model=lambda: model,
        layout=layout,
        head_set=head_set,
        output_dir=out,
        model_name=name,
        data_fingerprint=examples_fingerprint(texts),
        progress=progress,
    )
    chat = lambda ex: [{"role": "user", "content": ex.prompt}, {"role": "assistant", "content": ex.response}]
    records = lambda selected: [sharegpt_record(chat(texts[i]), system) for i in selected]
    with _lock(out, "select_data"), _eval_mode(model):
        return pipeline.select_data(inputs, args, rank() == 0, records)


# --- stage III ------------------------------------------------------------------------------------------------------


def head_learning_rate(learning_rate: float, p2d_head_lr_scale: float = HEAD_LR_SCALE) -> float:
    """The rate the head slices train at: ``learning_rate x p2d_head_lr_scale`` (default 10, so LoRA's usual 1e-4
    becomes 1e-3), with the CLI's warning where it is too low to move them."""
    args = _settings("head_learning_rate", {"p2d_head_lr_scale": p2d_head_lr_scale}, ADAPTATION_KEYS)
    return _head_learning_rate(learning_rate, args.p2d_head_lr_scale)


def apply_head_adapter(
    model: nn.Module,
    heads: HeadSet | str | Path | Sequence[Sequence[int]],
    *,
    learning_rate: float | None = None,
    output_dir: str | Path | None = None,
    model_name: str | None = None,
    **settings: Any,
) -> Any:
    """Stage III: wrap ``model`` (in place, as peft does) into a ``PeftModel`` whose only trainable weights are the
    slices of ``heads`` (q rows and o columns by default: ``p2d_head_modules``).

    ``heads``: the head set of :func:`identify_heads`, a ``p2d_heads.json`` path, or [layer, head] pairs. The
    trainable slices are float32, also on a half-precision model. With ``learning_rate`` (the rate you would give
    LoRA), ``model.p2d_learning_rate`` is the rate the slices should train at
    (``learning_rate x p2d_head_lr_scale``). ``model.p2d_heads`` is the head set.

    ``model.save_pretrained(dir)`` writes a standard PEFT LoRA adapter (stock ``peft`` and LLaMA-Factory load it)
    plus ``p2d_heads.json``, also for a Trainer's checkpoints. With ``output_dir``, writes ``p2d_heads.json`` there
    now and, with ``learning_rate``, ``p2d_run.json`` (what trains, at which rate) as the CLI does.
    """
    args = _settings("apply_head_adapter", settings, ADAPTATION_KEYS)
    if hasattr(model, "peft_config"):
        raise ValueError(
            "apply_head_adapter() wraps a base model; this one already carries a PEFT adapter "
            f"({', '.join(model.peft_config)}). Merge it first (merge_and_unload()) or start from the base model."
        )
    layout = find_attention_layout(model)
    head_set = _as_head_set(heads, layout, _model_name(model, model_name), "heads")
    out = _output_dir(output_dir)
    rate = head_learning_rate(learning_rate, args.p2d_head_lr_scale) if learning_rate is not None else None
    place = pipeline.Output(out, rank() == 0)
    if place.written_dir is not None:
        head_set.save(place.written_dir / HEADS_FILE)
    peft_model = pipeline.adapt_heads(model, layout, head_set, args, place, rate)  # float32 slices
    peft_model.p2d_learning_rate = rate
    return peft_model


# --- cost: timing and AER -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TFFT:
    """t_FFT of the AER: the seconds full fine-tuning on the full data takes, how they were obtained, and from what."""

    seconds: float
    mode: str  # "measured" or "estimated"
    inputs: dict[str, Any] = field(default_factory=dict)


def timing_callback(p2d_aer_reference: str | None = None) -> Any:
    """The CLI's P2D timing callback for any ``transformers.Trainer`` (TRL's too): records ``training_seconds`` in
    ``<output_dir>/p2d_timings.json`` and a P2D line in ``trainer_log.jsonl``; with ``p2d_aer_reference`` (the
    output dir of a full fine-tuning run) it also writes ``p2d_aer.json``."""
    args = _settings("timing_callback", {"p2d_aer_reference": p2d_aer_reference}, AER_KEYS)
    check_aer_reference(args)
    from .report.timing import AERRequest, P2DTimingCallback

    return P2DTimingCallback(AERRequest(reference_dir=args.p2d_aer_reference))


def estimate_t_fft(
    full_model: nn.Module,
    batches: Sequence[Mapping[str, torch.Tensor]],
    *,
    full_data_tokens: int,
    epochs: float = 1.0,
    learning_rate: float = 2e-5,
    p2d_aer_estimate_steps: int = 3,
) -> TFFT:
    """t_FFT estimated as ``p2d_aer_estimate_steps`` does: that many timed full-parameter AdamW steps of
    ``full_model`` (trained in place: give a copy of the base model) on ``batches`` (dicts of tensors with
    ``input_ids``, ``attention_mask``, ``labels``; one step each, after one untimed warm-up step), extrapolated per
    token to ``full_data_tokens`` (tokens of the full training data, e.g. ``sum(len(row["input_ids"]) for row in
    tokenize_examples(...))``) and ``epochs``."""
    from .report.timing import estimate_t_fft as estimate

    args = _settings("estimate_t_fft", {"p2d_aer_estimate_steps": p2d_aer_estimate_steps}, AER_KEYS)
    steps = [[dict(batch)] for batch in batches][: args.p2d_aer_estimate_steps]
    if not steps:
        raise ValueError("estimate_t_fft() needs at least one batch to time.")
    return TFFT(*estimate(full_model, steps, learning_rate, full_data_tokens, epochs))


def aer(
    output_dir: str | Path,
    *,
    training_seconds: float | None = None,
    t_fft: float | TFFT | None = None,
    p2d_aer_reference: str | None = None,
) -> dict[str, Any]:
    """The Alignment Efficiency Ratio, (selection time + training time) / t_FFT, written to ``p2d_aer.json``.

    The selection time is what :func:`identify_heads` and :func:`select_data` recorded in ``output_dir``
    (``p2d_timings.json``; a heads file's identification counts as inherited). ``training_seconds`` is recorded
    there too; without it, the time :func:`timing_callback` recorded is used. t_FFT: ``t_fft`` (seconds you
    measured, or :func:`estimate_t_fft`) or ``p2d_aer_reference`` (a finished full fine-tuning run's output dir).
    Returns the record, with ``aer`` and ``aer_this_run``, as the CLI writes it.
    """
    args = _settings("aer", {"p2d_aer_reference": p2d_aer_reference}, AER_KEYS)
    if (t_fft is None) == (args.p2d_aer_reference is None):
        raise ValueError("aer() needs exactly one of `t_fft` and `p2d_aer_reference`.")
    check_aer_reference(args)
    if t_fft is not None:
        t_fft = t_fft if isinstance(t_fft, TFFT) else TFFT(float(t_fft), "measured", {"reference": "given"})
    else:
        seconds, source = _reference_training_seconds(args.p2d_aer_reference)
        t_fft = TFFT(seconds, "measured", {"reference": source})
    if not (math.isfinite(t_fft.seconds) and t_fft.seconds > 0):
        raise ValueError(f"t_FFT must be a finite number of seconds > 0; got {t_fft.seconds!r}.")
    output_dir = Path(output_dir)
    if training_seconds is not None:
        seconds = training_seconds
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not (math.isfinite(seconds) and seconds >= 0)
        ):
            raise ValueError(f"`training_seconds` must be a finite number of seconds >= 0; got {training_seconds!r}.")
        record_timings(output_dir, {"training_seconds": float(training_seconds)})
    timings = read_timings(output_dir)
    if "training_seconds" not in timings:
        raise ValueError(
            f"{output_dir} has no training time: pass `training_seconds` or train with timing_callback()."
        )
    from .report.timing import split_timings

    selection, inherited = split_timings(timings)
    record = aer_record(
        selection, float(timings["training_seconds"]), t_fft.seconds, t_fft.mode, t_fft.inputs, inherited
    )
    atomic_write_json(output_dir / AER_FILE, record)
    return record


@contextmanager
def timed() -> Iterator[dict[str, float]]:
    """``with timed() as t: train()``; then ``t["seconds"]`` is the wall-clock time, for :func:`aer`."""
    result: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield result
    finally:
        result["seconds"] = time.perf_counter() - start
