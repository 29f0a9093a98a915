"""ICL probe prompts (paper Appendix J) with exact token spans of every demonstration and query.

Each segment is tokenized on its own and the ids are concatenated, so the recorded spans are exact by
construction: no offsets guessed from re-tokenizing text, no off-by-one from BOS tokens or padding.
"""

import hashlib
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ChatFrame:
    """Token ids the chat template puts around the probe: before the user turn, between it and the
    answer, and after the answer."""

    prefix: list[int]
    suffix: list[int]
    answer_end: list[int]


@dataclass(frozen=True)
class Example:
    """One training example as text: its index in the training split, input and response."""

    index: int
    prompt: str
    response: str


def examples_fingerprint(examples: list[Example]) -> str:
    """A short hash of the examples' prompt and response texts, in order: stage II's data identity."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(example.prompt.encode() + b"\0" + example.response.encode() + b"\1")
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class TaskStyle:
    instruction: str
    input_label: str
    output_label: str


_FORMAT_RULES = (
    "Your responses must be concise, accurate and in the exact format specified. "
    "Do not add commentary, questions, greetings or extra remarks."
)
BUILTIN_STYLES = {
    "math": TaskStyle(
        "You are an expert math assistant. Solve each problem with step-by-step calculations and deliver the "
        "correct final answer. " + _FORMAT_RULES + " The final line of each answer must be formatted as: "
        "#### <number>.",
        "Question",
        "Answer",
    ),
    "summarization": TaskStyle(
        "You are an expert assistant. Provide clear, concise and complete summaries of the given dialogues that "
        "capture all main points. " + _FORMAT_RULES,
        "Dialogue",
        "Summary",
    ),
    "biomedical": TaskStyle(
        "You are a medical expert. Given an instruction and its input, respond with the correct and concise "
        "answer based on the provided context. Follow the order of the questions; do not skip or merge "
        "responses. " + _FORMAT_RULES,
        "Question",
        "Answer",
    ),
    "general": TaskStyle(
        "You are a helpful expert assistant. Answer each question following the demonstrations. " + _FORMAT_RULES,
        "Question",
        "Answer",
    ),
}


def task_style(instruction: str | None, metric: str) -> TaskStyle:
    """A built-in style by name (math, summarization, biomedical, general), or a custom instruction text."""
    if instruction is None:
        return BUILTIN_STYLES["math" if metric == "em" else "general"]
    if instruction in BUILTIN_STYLES:
        return BUILTIN_STYLES[instruction]
    return TaskStyle(instruction, "Question", "Answer")


@dataclass
class ProbePrompt:
    """Token ids of one probe and where its parts are (token positions, end exclusive)."""

    demos: list[int]
    queries: list[int]
    input_ids: list[int] = field(default_factory=list)
    demo_spans: list[tuple[int, int]] = field(default_factory=list)
    query_spans: list[tuple[int, int]] = field(default_factory=list)
    answer_spans: list[tuple[int, int]] = field(default_factory=list)  # teacher-forced gold answers
    references: list[str] = field(default_factory=list)
    answer_prefix: str = ""  # generation starts after this text (part of the assistant turn)

    @property
    def query_rows(self) -> list[int]:
        return [i for start, end in self.query_spans for i in range(start, end)]


def demo_text(example: Example, style: TaskStyle) -> str:
    return f"{style.input_label}: {example.prompt.strip()}\n{style.output_label}: {example.response.strip()}\n\n"


def answer_text(number: int, response: str) -> str:
    return f"Answer {number}: {response.strip()}\n"


def build_prompt(
    tokenizer,
    frame: ChatFrame,
    style: TaskStyle,
    demos: list[Example],
    queries: list[Example],
    teacher_forced: bool = False,
) -> ProbePrompt:
    """Instruction, demonstrations and numbered queries in one user turn; with ``teacher_forced`` the
    gold answers follow as the assistant turn."""
    prompt = ProbePrompt(
        [d.index for d in demos], [q.index for q in queries], references=[q.response for q in queries]
    )
    ids = list(frame.prefix)

    def add(text: str) -> tuple[int, int]:
        start = len(ids)
        ids.extend(tokenizer.encode(text, add_special_tokens=False))
        return start, len(ids)

    add(f"{style.instruction}\n\nBelow are some demonstrations of how to format your answers:\n\n")
    prompt.demo_spans = [add(demo_text(demo, style)) for demo in demos]
    fmt = "".join(answer_text(k, f"<your answer to {style.input_label} {k}>") for k in range(1, len(queries) + 1))
    add(f"**Strictly use the format specified below:**\n{fmt}\nNow respond to the following:\n")
    prompt.query_spans = [
        add(f"{style.input_label} {k}: {query.prompt.strip()}\n") for k, query in enumerate(queries, start=1)
    ]
    ids.extend(frame.suffix)
    if teacher_forced:
        for k, query in enumerate(queries, start=1):
            add(f"Answer {k}: ")
            prompt.answer_spans.append(add(query.response.strip() + "\n"))
        ids.extend(frame.answer_end)
    else:  # open the answer format, so that even a weak model's first answer is parsed
        prompt.answer_prefix = "Answer 1: "
        add(prompt.answer_prefix)
    prompt.input_ids = ids
    return prompt
