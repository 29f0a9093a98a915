"""Deterministic, offline GSM8K-like demo data for the quickstart (LLaMA-Factory alpaca format).

Every example is a short arithmetic word problem with a worked answer: each reasoning line holds one
equation written as ``a op b = c`` and the last line is ``#### <answer>``, as in GSM8K, so answers can be
checked with :func:`final_answer`. Examples are kept short (well under 60 tokens) because the quickstart
trains on CPU.
"""

import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..io import atomic_write_text


TRAIN_DATASET = "p2d_demo"
TEST_DATASET = "p2d_demo_test"
TRAIN_FILE = "p2d_demo_train.json"
TEST_FILE = "p2d_demo_test.json"

NAMES = (
    "Mia",
    "Tom",
    "Ava",
    "Leo",
    "Zoe",
    "Sam",
    "Eli",
    "Ivy",
    "Max",
    "Ana",
    "Ben",
    "Kai",
    "Lily",
    "Noah",
    "Emma",
    "Omar",
)
ITEMS = ("notebooks", "apples", "pens", "cups", "books", "toys", "plants", "candles")
GOODS = ("toys", "bottles", "chairs", "shirts", "bricks")

_OPS: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a // b,
}

Steps = list[str]


def _num(x: int) -> str:
    return f"{x:,}"


def _eq(a: int, op: str, b: int, steps: Steps, text: str = "{}") -> int:
    """Compute ``a op b``, append the reasoning line ``text`` with the equation filled in, return the result."""
    if op == "/" and a % b:
        raise ValueError(f"{a} / {b} is not an integer")
    c = _OPS[op](a, b)
    steps.append(text.format(f"{_num(a)} {op} {_num(b)} = {_num(c)}"))
    return c


def _shopping(rng: random.Random) -> tuple[str, Steps, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    n, price, extra = rng.randint(2, 9), rng.randint(2, 12), rng.randint(1, 9)
    q = f"{name} buys {n} {item} at ${price} each and a bag for ${extra}. What is the total cost?"
    steps: Steps = []
    cost = _eq(n, "*", price, steps, item.capitalize() + ": {}.")
    total = _eq(cost, "+", extra, steps, "Total: {}.")
    return q, steps, total


def _change(rng: random.Random) -> tuple[str, Steps, int]:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    n, price = rng.randint(2, 6), rng.randint(2, 9)
    bill = rng.choice([b for b in (20, 50, 100) if b > n * price])
    q = f"{name} pays for {n} {item} at ${price} each with a ${bill} bill. How much change?"
    steps: Steps = []
    cost = _eq(n, "*", price, steps, "Cost: {}.")
    change = _eq(bill, "-", cost, steps, "Change: {}.")
    return q, steps, change


def _sharing(rng: random.Random) -> tuple[str, Steps, int]:
    name = rng.choice(NAMES)
    friends, each, eaten = rng.randint(2, 8), rng.randint(3, 12), rng.randint(1, 2)
    q = f"{name} shares {friends * each} cookies equally among {friends} friends. Each eats {eaten}. How many does each have left?"
    steps: Steps = []
    share = _eq(friends * each, "/", friends, steps, "Each gets {}.")
    left = _eq(share, "-", eaten, steps, "Left: {}.")
    return q, steps, left


def _speed(rng: random.Random) -> tuple[str, Steps, int]:
    name = rng.choice(NAMES)
    speed, hours, walk = rng.randint(3, 9) * 10, rng.randint(2, 5), rng.randint(1, 9)
    q = f"{name} drives {hours} hours at {speed} km/h, then walks {walk} km. How far in total?"
    steps: Steps = []
    drive = _eq(speed, "*", hours, steps, "Driving: {}.")
    total = _eq(drive, "+", walk, steps, "Total: {} km.")
    return q, steps, total


def _ages(rng: random.Random) -> tuple[str, Steps, int]:
    name = rng.choice(NAMES)
    age, factor, years = rng.randint(3, 12), rng.randint(3, 5), rng.randint(2, 10)
    q = f"{name} is {age}. {name}'s aunt is {factor} times as old. How old will the aunt be in {years} years?"
    steps: Steps = []
    aunt = _eq(age, "*", factor, steps, "Aunt now: {}.")
    later = _eq(aunt, "+", years, steps, "Later: {}.")
    return q, steps, later


def _saving(rng: random.Random) -> tuple[str, Steps, int]:
    name = rng.choice(NAMES)
    per_week, weeks = rng.randint(3, 15), rng.randint(4, 12)
    spent = rng.randint(5, per_week * weeks - 1)
    q = f"{name} saves ${per_week} a week for {weeks} weeks, then spends ${spent}. How much is left?"
    steps: Steps = []
    saved = _eq(per_week, "*", weeks, steps, "Saved: {}.")
    left = _eq(saved, "-", spent, steps, "Left: {}.")
    return q, steps, left


def _temperature(rng: random.Random) -> tuple[str, Steps, int]:
    start, drop, rise = rng.randint(-5, 10), rng.randint(8, 20), rng.randint(1, 6)
    q = f"It is {start} degrees. It drops {drop} degrees, then rises {rise}. What is the temperature now?"
    steps: Steps = []
    low = _eq(start, "-", drop, steps, "After the drop: {}.")
    now = _eq(low, "+", rise, steps, "Now: {}.")
    return q, steps, now


def _balance(rng: random.Random) -> tuple[str, Steps, int]:
    name = rng.choice(NAMES)
    balance, bills, bill = rng.randint(10, 60), rng.randint(2, 4), rng.randint(15, 40)
    q = f"{name} has ${balance} and pays {bills} bills of ${bill} each. What is the balance now?"
    steps: Steps = []
    paid = _eq(bills, "*", bill, steps, "Bills: {}.")
    left = _eq(balance, "-", paid, steps, "Balance: {}.")
    return q, steps, left


def _factory(rng: random.Random) -> tuple[str, Steps, int]:
    goods = rng.choice(GOODS)
    per_day, days = rng.randint(12, 60) * 25, rng.randint(3, 9)
    q = f"A factory makes {_num(per_day)} {goods} a day. How many {goods} does it make in {days} days?"
    steps: Steps = []
    total = _eq(per_day, "*", days, steps, "{} " + goods + ".")
    return q, steps, total


def _reading(rng: random.Random) -> tuple[str, Steps, int]:
    name = rng.choice(NAMES)
    per_day, days = rng.randint(5, 25), rng.randint(2, 7)
    pages = per_day * days + rng.randint(10, 60)
    q = f"A book has {pages} pages. {name} reads {per_day} pages a day for {days} days. How many pages remain?"
    steps: Steps = []
    read = _eq(per_day, "*", days, steps, "Read: {}.")
    left = _eq(pages, "-", read, steps, "Left: {}.")
    return q, steps, left


TEMPLATES: tuple[Callable[[random.Random], tuple[str, Steps, int]], ...] = (
    _shopping,
    _change,
    _sharing,
    _speed,
    _ages,
    _saving,
    _temperature,
    _balance,
    _factory,
    _reading,
)


def make_demo_examples(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Return ``n`` distinct alpaca-format word problems; the same ``seed`` gives the same list."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    examples: list[dict[str, str]] = []
    seen: set[str] = set()
    attempts = 0
    while len(examples) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ValueError(f"could not generate {n} distinct demo questions")
        question, steps, answer = rng.choice(TEMPLATES)(rng)
        if question in seen:
            continue
        seen.add(question)
        output = "\n".join([*steps, f"#### {answer}"])
        examples.append({"instruction": question, "input": "", "output": output})
    return examples


_ANSWER_RE = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")


def final_answer(text: str) -> str | None:
    """Return the number after the last ``####`` in ``text`` (commas and spaces removed), or None."""
    if "####" not in text:
        return None
    tail = text.rsplit("####", 1)[1].strip().split("\n", 1)[0]
    match = _ANSWER_RE.match(tail.replace(",", "").replace(" ", "").lstrip("$"))
    if match is None:
        return None
    return match.group(0).rstrip(".")


def write_demo_dataset(
    dataset_dir: str | Path = "data_info", n_train: int = 400, n_test: int = 50, seed: int = 0
) -> dict[str, Any]:
    """Write the demo train/test files into ``dataset_dir`` and register them in its dataset_info.json.

    The two splits share no question. Files are replaced atomically; other dataset_info.json entries are
    kept as they are. Returns the paths and counts.
    """
    dataset_dir = Path(dataset_dir)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    examples = make_demo_examples(n_train + n_test, seed=seed)
    train, test = examples[:n_train], examples[n_train:]
    train_path, test_path = dataset_dir / TRAIN_FILE, dataset_dir / TEST_FILE
    _write_text(train_path, _dumps(train))
    _write_text(test_path, _dumps(test))

    info_path = dataset_dir / "dataset_info.json"
    info: dict[str, Any] = {}
    if info_path.exists():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise ValueError(f"{info_path} is not valid JSON ({err}); fix or remove it and run again") from err
        if not isinstance(info, dict):
            raise ValueError(f"{info_path} must hold a JSON object")
    info[TRAIN_DATASET] = {"file_name": TRAIN_FILE}
    info[TEST_DATASET] = {"file_name": TEST_FILE}
    _write_text(info_path, _dumps(info))
    return {
        "dataset_dir": str(dataset_dir),
        "dataset_info": str(info_path),
        "train_file": str(train_path),
        "test_file": str(test_path),
        "train_dataset": TRAIN_DATASET,
        "test_dataset": TEST_DATASET,
        "n_train": len(train),
        "n_test": len(test),
        "seed": seed,
    }


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def _write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)
