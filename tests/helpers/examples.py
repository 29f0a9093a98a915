"""The offline demo data (arithmetic word problems) in the forms the stages read."""

from p2d_llamafactory.assets.demo_data import make_demo_examples
from p2d_llamafactory.data.prompts import ChatFrame, Example


def demo_examples(n: int, seed: int = 1) -> list[dict[str, str]]:
    """``n`` alpaca-format examples (instruction, input, output)."""
    return make_demo_examples(n, seed=seed)


def tokenized_examples(tokenizer, n: int = 12, seed: int = 5) -> list[dict[str, list[int]]]:
    """Stage I's form: ChatML prompt + answer ids, with the prompt masked out of the labels."""
    examples = []
    for ex in make_demo_examples(n, seed=seed):
        messages = [{"role": "user", "content": ex["instruction"]}]
        prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
        answer = tokenizer(ex["output"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
        ids = list(prompt_ids) + answer
        examples.append(
            {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * len(prompt_ids) + answer}
        )
    return examples


def probe_examples(n: int = 24, seed: int = 3) -> list[Example]:
    """Stage II's form: indexed prompt/response pairs."""
    return [Example(i, ex["instruction"], ex["output"]) for i, ex in enumerate(make_demo_examples(n, seed=seed))]


def chatml_frame(tokenizer) -> ChatFrame:
    """The ChatML frame of the tiny tokenizer's template, as token ids."""
    enc = lambda text: tokenizer.encode(text, add_special_tokens=False)
    return ChatFrame(enc("<|im_start|>user\n"), enc("<|im_end|>\n<|im_start|>assistant\n"), enc("<|im_end|>\n"))
