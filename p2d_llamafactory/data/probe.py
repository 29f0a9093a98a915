"""ICL probing (paper Eq. 8-10): score every candidate by task metric x attention mass it draws as a demo."""

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..distributed import gather, shard
from ..hparams import default_of
from ..tokens import pad_batch, pad_id
from .attention import AttentionProbe, probing
from .prompts import ChatFrame, Example, ProbePrompt, TaskStyle, build_prompt


@dataclass(frozen=True)
class ProbeSettings:
    num_demos: int = default_of("p2d_icl_demos")
    num_queries: int = default_of("p2d_icl_queries")
    rounds: int = default_of("p2d_icl_rounds")
    scoring: str = default_of("p2d_icl_scoring")  # generate or teacher_forced
    metric: str = "em"  # resolved: em or rougeL (p2d_icl_metric's auto picks one)
    max_new_tokens: int = default_of("p2d_icl_max_new_tokens")
    batch_size: int = default_of("p2d_icl_batch_size")
    seed: int = default_of("p2d_seed")


@dataclass
class PromptResult:
    """What one probe contributes: per-demo attention weight w (Eq. 9) and per-query metric s."""

    plan: int
    demos: list[int]
    weights: list[float]
    query_scores: list[float]

    @property
    def score(self) -> float:  # Eq. 8
        return sum(self.query_scores) / len(self.query_scores)


def plan_prompts(candidates: Sequence[int], settings: ProbeSettings) -> list[tuple[list[int], list[int]]]:
    """(demos, queries) per prompt: every candidate is a demo at least ``rounds`` times; queries are other
    candidates than the prompt's demos."""
    n_d, n_q = settings.num_demos, settings.num_queries
    if len(candidates) < n_d + n_q:
        raise ValueError(
            f"Data selection needs at least {n_d + n_q} usable examples for one prompt "
            f"({n_d} demos + {n_q} queries); got {len(candidates)}."
        )
    rng = random.Random(settings.seed)
    plans = []
    for _ in range(settings.rounds):
        order = list(candidates)
        rng.shuffle(order)
        for start in range(0, len(order), n_d):
            demos = order[start : start + n_d]
            if len(demos) < n_d:  # top up the last chunk with other candidates
                rest = [c for c in order[:start] if c not in demos]
                demos += rng.sample(rest, n_d - len(demos))
            pool = [c for c in candidates if c not in set(demos)]
            plans.append((demos, rng.sample(pool, n_q)))
    return plans


def _shift(spans: Iterable[tuple[int, int]], offset: int) -> list[tuple[int, int]]:
    return [(start + offset, end + offset) for start, end in spans]


def _answer_positions(prompts: Sequence[ProbePrompt], offsets: Sequence[int]) -> list[int]:
    """Positions whose logits predict a gold answer token (the position before each), over the batch."""
    return sorted(
        {
            i - 1
            for p, off in zip(prompts, offsets)
            for start, end in _shift(p.answer_spans, off)
            for i in range(start, end)
        }
    )


def _gold_likelihoods(
    logits: torch.Tensor, ids: torch.Tensor, prompt: ProbePrompt, offset: int, column: Mapping[int, int]
) -> list[float]:
    """Per query: geometric-mean probability of its gold answer tokens (teacher forcing).

    ``logits`` holds only the kept positions; ``column`` maps a position to its row in ``logits``.
    """
    scores = []
    for start, end in _shift(prompt.answer_spans, offset):
        rows = torch.tensor([column[i - 1] for i in range(start, end)], device=logits.device)
        log_probs = torch.log_softmax(logits[rows].float(), dim=-1)
        token_lp = log_probs.gather(-1, ids[start:end, None]).squeeze(-1)
        scores.append(float(token_lp.mean().exp()))
    return scores


class Prober:
    """Runs probe prompts in batches through the model with the restricted attention probe."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        frame: ChatFrame,
        style: TaskStyle,
        heads_by_layer: Mapping[int, Sequence[int]],
        settings: ProbeSettings,
        score_answers: Callable[[str, list[str], str], list[float]],
    ) -> None:
        self.model, self.tokenizer, self.frame, self.style = model, tokenizer, frame, style
        self.heads_by_layer, self.settings, self.score_answers = heads_by_layer, settings, score_answers
        self.pad_id = pad_id(tokenizer)

    def run_batch(self, plans: Sequence[tuple[int, list[int], list[int]]], examples: Mapping[int, Example]):
        """Probe a batch of (plan index, demo ids, query ids); returns one PromptResult per plan."""
        teacher_forced = self.settings.scoring == "teacher_forced"
        prompts = [
            build_prompt(
                self.tokenizer,
                self.frame,
                self.style,
                [examples[i] for i in d],
                [examples[i] for i in q],
                teacher_forced,
            )
            for _, d, q in plans
        ]
        ids, mask, offsets = pad_batch([p.input_ids for p in prompts], self.pad_id, left=True)
        device = next(self.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        probe = AttentionProbe(self.heads_by_layer)
        probe.start(
            [[r + off for r in p.query_rows] for p, off in zip(prompts, offsets)],
            [_shift(p.demo_spans, off) for p, off in zip(prompts, offsets)],
        )
        with torch.no_grad(), probing(self.model, probe):
            if teacher_forced:  # logits only where a gold answer token is predicted
                positions = _answer_positions(prompts, offsets)
                keep = torch.tensor(positions, device=device)
                logits = self.model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
                column = {pos: j for j, pos in enumerate(positions)}
                query_scores = [
                    _gold_likelihoods(logits[b], ids[b], p, offsets[b], column) for b, p in enumerate(prompts)
                ]
            else:
                out = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=self.settings.max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.pad_id,
                )
                texts = self.tokenizer.batch_decode(out[:, ids.shape[1] :], skip_special_tokens=True)
                query_scores = [
                    self.score_answers(p.answer_prefix + text, p.references, self.settings.metric)
                    for text, p in zip(texts, prompts)
                ]
        results = []
        for b, ((plan, demos, _), prompt) in enumerate(zip(plans, prompts)):
            lengths = [end - start for start, end in prompt.demo_spans]
            weights = [float(probe.mass[b, d]) / lengths[d] for d in range(len(demos))]  # Eq. 9
            results.append(PromptResult(plan, list(demos), weights, query_scores[b]))
        return results


def final_scores(results: Iterable[PromptResult], num_examples: int) -> tuple[list[float], list[int], list[float]]:
    """Eq. 10: mean of s * w over each example's uses as a demo (NaN if never used); also the uses and the
    mean attention weight w alone, which breaks ties (e.g. when every answer of a weak model scores 0)."""
    totals, uses, weights = [0.0] * num_examples, [0] * num_examples, [0.0] * num_examples
    for result in results:
        for example, weight in zip(result.demos, result.weights):
            totals[example] += result.score * weight
            weights[example] += weight
            uses[example] += 1
    nan = float("nan")
    return (
        [t / n if n else nan for t, n in zip(totals, uses)],
        uses,
        [w / n if n else nan for w, n in zip(weights, uses)],
    )


def probe_all(
    prober: Prober,
    examples: Mapping[int, Example],
    plans: Sequence[tuple[list[int], list[int]]],
    done: Mapping[int, PromptResult],
    on_result: Callable[[PromptResult], None],
    progress: bool = True,
) -> list[PromptResult]:
    """Probe every plan not in ``done`` (resuming), reporting each finished prompt to ``on_result``; returns every
    plan's result, in plan order. Under ``torchrun`` the batches of pending plans are shared by the ranks (each
    reports its own) and every rank gets every result."""
    pending = [(i, d, q) for i, (d, q) in enumerate(plans) if i not in done]
    size, per_prompt = prober.settings.batch_size, prober.settings.num_demos
    batches = shard([pending[start : start + size] for start in range(0, len(pending), size)])
    bar = tqdm(
        total=(len(done) + sum(len(batch) for batch in batches)) * per_prompt,
        initial=len(done) * per_prompt,
        desc="P2D data probing",
        unit="example",
        disable=not progress,
    )
    mine = []
    for batch in batches:
        for result in prober.run_batch(batch, examples):
            on_result(result)
            mine.append(result)
            bar.update(per_prompt)
    bar.close()
    results = {result.plan: result for part in gather(mine) for result in part}
    results.update(done)
    return [results[i] for i in sorted(results)]
