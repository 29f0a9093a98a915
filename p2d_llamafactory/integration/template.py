"""The run's LLaMA-Factory chat template as fixed token frames around a user message and an answer."""

from ..data.prompts import ChatFrame


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _frame(a: list[int], b: list[int]) -> tuple[list[int], list[int]]:
    """Token ids before and after the part where two encodings of different contents differ."""
    head = _common_prefix(a, b)
    tail = _common_prefix(a[head:][::-1], b[head:][::-1])
    return a[:head], a[len(a) - tail :]


def chat_frame(template, tokenizer, system: str | None = None) -> ChatFrame:
    """Frame the run's template puts around one user turn and its answer, read off ``encode_oneturn``."""
    encodings = []
    for content in ("A", "B"):
        messages = [{"role": "user", "content": content}, {"role": "assistant", "content": content}]
        encodings.append(template.encode_oneturn(tokenizer, messages, system))
    (prompt_a, answer_a), (prompt_b, answer_b) = encodings
    user_prefix, user_suffix = _frame(prompt_a, prompt_b)
    answer_prefix, answer_suffix = _frame(answer_a, answer_b)
    return ChatFrame(user_prefix + [], user_suffix + answer_prefix, answer_suffix)
