"""Stage II metrics: split one multi-query generation into per-query answers and score each one.

The probing prompt asks the model to answer n_q queries in one generation, one block per query
(``Answer 1: ...``, ``Answer 2: ...``). Small models are messy, so :func:`split_answers` is lenient about
the marker spelling but never shifts answers between queries: a missing or garbled block costs only its
own score. Math data (GSM8K style, gold answers end with ``#### <number>``) is scored by exact match of the
final number, everything else by ROUGE-L F1 with stemming.
"""

import functools
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation


__all__ = [
    "METRIC_FUNCTIONS",
    "exact_match",
    "final_number",
    "resolve_metric",
    "rouge_l",
    "score_answers",
    "split_answers",
]

_FINAL_MARK = "####"
# First number token: optional sign and "$" (either order), digits with thousands commas, optional decimals.
# A trailing "." without digits (end of sentence) is not part of the number.
_NUMBER = re.compile(r"([-+\u2212]?)[ \t]*\$?[ \t]*([-+\u2212]?)[ \t]*(\d[\d,]*(?:\.\d+)?|\.\d+)")

# An answer marker: "Answer k:", "answer k :", "**Answer k:**", "**Answer k**:", "### Answer k:",
# "Question k Answer:", "Question k: Answer:", "**Question k Answer:**". The number comes from "Answer k"
# when present, else from "Question k". A lone "Question k:" (the model echoing a query) only ends the
# previous answer; a bare "Answer:" (no number anywhere) is a marker only at the start of a line right after
# such an echo (it then opens answer k), otherwise it is ordinary answer text.
_BOLD = r"(?:\*\*|__)"


@functools.lru_cache(maxsize=8)
def _marker(echo_label: str) -> re.Pattern:
    """``Answer k:`` markers and ``<echo_label> k:`` echoes of the queries (the style's input label)."""
    echo = re.escape(echo_label).replace(r"\ ", r"[ \t]*")
    return re.compile(
        r"(?:^[ \t]*\#{1,3}[ \t]*)?"  # markdown heading (at most 3 '#', so a '####' final line is never eaten)
        rf"{_BOLD}?[ \t]*\b(?:"
        rf"(?:question[ \t]*(?P<q>\d+)[ \t]*{_BOLD}?[ \t]*:?\s*{_BOLD}?[ \t]*)?"
        r"answer[ \t]*(?P<a>\d+)?"
        rf"|(?:question|{echo})[ \t]*(?P<echo>\d+)"
        rf")[ \t]*{_BOLD}?[ \t]*:(?:[ \t]*{_BOLD})?",
        re.IGNORECASE | re.MULTILINE,
    )


_METRIC_NAMES = ("auto", "em", "rougeL")
_scorer = None


def _canonical_number(text: str) -> str | None:
    """Canonical decimal string: no exponent, no trailing zeros, no "-0" ("2.50" -> "2.5", "3.0" -> "3")."""
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def final_number(text: str) -> str | None:
    """The first number token after the LAST ``####`` in ``text``, canonicalised; None if there is none.

    Commas are dropped ("1,000" -> "1000"), a sign before or after "$" is kept ("-5", "$-5", "-$5"), decimals
    are normalised ("2.50" -> "2.5", "3.0" -> "3"), and "$", spaces and a trailing period are tolerated
    ("#### $1,200." -> "1200"). Words before/after the number are skipped ("#### 42 apples" -> "42",
    "#### is 7" -> "7"). Only the text after the last ``####`` is searched, so "#### 5 ... ####" -> None.
    A comma is always a thousands separator ("1,5" -> "15").
    """
    if not text:
        return None
    pos = text.rfind(_FINAL_MARK)
    if pos < 0:
        return None
    match = _NUMBER.search(text, pos + len(_FINAL_MARK))
    if match is None:
        return None
    signs = (match.group(1) + match.group(2)).replace("\u2212", "-")
    negative = signs.count("-") % 2 == 1
    digits = match.group(3).replace(",", "")
    if digits.startswith("."):
        digits = "0" + digits
    return _canonical_number(("-" if negative else "") + digits)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if both texts have a final ``#### <number>`` and the numbers are equal, else 0.0."""
    pred, ref = final_number(prediction), final_number(reference)
    return 1.0 if pred is not None and ref is not None and pred == ref else 0.0


def _rouge_scorer():
    global _scorer
    if _scorer is None:
        from rouge_score import rouge_scorer

        _scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return _scorer


def rouge_l(prediction: str, reference: str | list[str]) -> float:
    """ROUGE-L F1 (Porter stemming, ``rouge_score`` tokenisation); max over a list of references.

    An empty (or whitespace-only) prediction, or no references, scores 0.0.
    """
    if not prediction or not prediction.strip():
        return 0.0
    references = [reference] if isinstance(reference, str) else list(reference)
    scorer = _rouge_scorer()
    best = 0.0
    for ref in references:
        if ref and ref.strip():
            best = max(best, float(scorer.score(ref, prediction)["rougeL"].fmeasure))
    return best


METRIC_FUNCTIONS: dict[str, Callable[[str, str], float]] = {"em": exact_match, "rougeL": rouge_l}


def resolve_metric(name: str, references: list[str]) -> str:
    """Metric name for ``p2d_icl_metric``: "em" / "rougeL" as is; "auto" -> "em" if at least 90% of the
    references contain ``#### <number>``, else "rougeL" (also "rougeL" for no references).
    """
    if name not in _METRIC_NAMES:
        raise ValueError(f"`p2d_icl_metric` must be one of auto, em, rougeL; got '{name}'.")
    if name != "auto":
        return name
    if not references:
        return "rougeL"
    with_number = sum(final_number(ref) is not None for ref in references)
    return "em" if with_number >= 0.9 * len(references) else "rougeL"


def _at_line_start(text: str, pos: int) -> bool:
    """Whether only whitespace or markdown ("*", "_", "#") precedes ``pos`` on its line."""
    line_start = text.rfind("\n", 0, pos) + 1
    return not text[line_start:pos].strip(" \t*_#")


def split_answers(generated: str, num_queries: int, echo_label: str = "Question") -> list[str]:
    """Split one generation into exactly ``num_queries`` answers (a missing one is "").

    Markers are ``Answer k:`` in any case, optionally bold (``**Answer k:**``, ``**Answer k**:``), a markdown
    heading, with a space before the colon, or ``Question k Answer:``. Answer k is the stripped text after
    the FIRST marker for k up to the next marker of any number (markers with k outside 1..num_queries, and
    a lone ``Question k:`` or ``<echo_label> k:`` (the prompt style's input label, e.g. ``Dialogue``) echoing
    a query, still end the previous answer but give no answer themselves; a bare ``Answer:`` at the start of a
    line right after such an echo opens answer k).
    Text before the first marker is ignored. With no marker for any k in 1..num_queries: for
    ``num_queries == 1`` the text before the first out-of-range ``Answer k:`` marker (usually the whole
    generation), stripped; otherwise all answers are "".
    """
    if num_queries < 1:
        raise ValueError(f"num_queries must be >= 1; got {num_queries}.")
    generated = generated or ""
    markers: list[tuple[int, int, int]] = []  # (k, start, end); k = 0 for a "Question k:" delimiter
    echo = None  # number of a "Question k:" echo that is the latest marker so far
    for match in _marker(echo_label).finditer(generated):
        number = match.group("a") or match.group("q")
        if number is not None:
            markers.append((int(number), match.start(), match.end()))
            echo = None
        elif match.group("echo") is not None:
            markers.append((0, match.start(), match.end()))
            echo = int(match.group("echo"))
        elif echo is not None and _at_line_start(generated, match.start()):
            # "Question k: <query>\nAnswer: ..." -> the bare "Answer:" opens answer k
            markers.append((echo, match.start(), match.end()))
            echo = None

    answers: list[str | None] = [None] * num_queries
    for i, (k, _, end) in enumerate(markers):
        if 1 <= k <= num_queries and answers[k - 1] is None:
            stop = markers[i + 1][1] if i + 1 < len(markers) else len(generated)
            answers[k - 1] = generated[end:stop].strip()

    if all(answer is None for answer in answers) and num_queries == 1:
        answer_starts = [start for k, start, _ in markers if k != 0]
        return [generated[: answer_starts[0] if answer_starts else len(generated)].strip()]
    return [answer or "" for answer in answers]


def score_answers(generated: str, references: list[str], metric: str, echo_label: str = "Question") -> list[float]:
    """Per-query scores of one generation: split into ``len(references)`` answers (queries echoed as
    ``<echo_label> k:`` end an answer), score each with ``METRIC_FUNCTIONS[metric]`` against its own reference ("auto" must
    be resolved with :func:`resolve_metric` first).
    """
    if metric not in METRIC_FUNCTIONS:
        raise ValueError(
            f"metric must be one of {', '.join(METRIC_FUNCTIONS)} (resolve 'auto' first); got '{metric}'."
        )
    if not references:
        return []
    fn = METRIC_FUNCTIONS[metric]
    answers = split_answers(generated, len(references), echo_label)
    return [fn(answer, ref) for answer, ref in zip(answers, references)]
