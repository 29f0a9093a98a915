"""LoFiT's head selection (step 1 of ``finetuning_type: lofit``), as in its official code (fc2869/lo-fit).

LoFiT (Yin et al., NeurIPS 2024) rescales each head's attention output before ``o_proj``:
out_h <- (1 + A_h) * out_h (element-wise over ``head_dim``). Step 1 trains A of every head of the frozen model,
initialised N(0, 1e-3), with the task loss plus ``l1_lambda * sum |A|`` (AdamW without weight decay, linear decay
to 0, no warm-up: the Hugging Face Trainer defaults its code uses), then ranks the heads by ||A_h||_2. The rescaling
is a forward pre-hook on ``o_proj``, so it works with any attention implementation (SDPA, eager, FlashAttention).
"""

import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..files import LOFIT_HEADS_FILE, model_fingerprint
from ..hparams import count_for_ratio, default_of, identity
from .headset import HeadSet, reusable_head_set
from .identify import tokenized_fingerprint
from .layout import AttentionLayout
from .proxy import Batch, make_batches
from .scoring import select_top, trainable_layers


logger = logging.getLogger(__name__)


INIT_STD = 1e-3  # "miu_{A} = 0, sigma_{A} = 1e-3 as the default" (lofit_trainer.py), for A and for v


@dataclass(frozen=True)
class LofitSelectSettings:
    """Step 1's schedule."""

    l1_lambda: float = default_of("p2d_lofit_l1_lambda")
    lr: float = default_of("p2d_lofit_select_lr")
    epochs: float = default_of("p2d_lofit_select_epochs")
    seed: int = default_of("p2d_seed")


def _scale_heads(scale: nn.Parameter, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    x = args[0]
    heads = x.unflatten(-1, scale.shape)  # (..., num_heads, head_dim)
    return ((heads * (1.0 + scale).to(x.dtype)).flatten(-2), *args[1:])


@contextmanager
def head_scalings(model: nn.Module, layout: AttentionLayout, seed: int) -> Iterator[list[nn.Parameter]]:
    """One float32 A (num_heads x head_dim, N(0, INIT_STD)) per layer, applied to ``o_proj``'s input while the
    context is open; the hooks are removed on exit, leaving the model as it was."""
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    scales, handles = [], []
    try:
        for prefix in layout.attention_modules:
            o_proj = model.get_submodule(f"{prefix}.{layout.slot('o').module}")
            init = torch.randn(layout.num_heads, layout.head_dim, generator=generator) * INIT_STD
            scale = nn.Parameter(init.to(device))
            handles.append(o_proj.register_forward_pre_hook(partial(_scale_heads, scale)))
            scales.append(scale)
        yield scales
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """``model`` with no trainable parameter and in eval mode (no dropout, no gradient checkpointing) while the
    context is open; its flags and mode are restored on exit."""
    flags = [(param, param.requires_grad) for param in model.parameters()]
    was_training = model.training
    model.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
        model.train(was_training)


def epoch_order(num_examples: int, epochs: float, batch_size: int, seed: int) -> list[list[int]]:
    """The micro-batches of ``epochs`` passes over the data, each pass shuffled (seeded); a fractional last epoch
    takes the first batches of its pass."""
    per_epoch = math.ceil(num_examples / batch_size)
    total = math.ceil(epochs * per_epoch)
    rng = random.Random(seed)
    batches: list[list[int]] = []
    while len(batches) < total:
        order = list(range(num_examples))
        rng.shuffle(order)
        batches.extend(order[i : i + batch_size] for i in range(0, num_examples, batch_size))
    return batches[:total]


def train_head_scalings(
    model: nn.Module,
    layout: AttentionLayout,
    batches: Iterable[Batch],
    num_steps: int,
    settings: LofitSelectSettings,
    progress: bool = True,
) -> tuple[torch.Tensor, list[float]]:
    """Train A (every head) on the frozen ``model``, one step per batch of ``batches`` (``num_steps`` of them);
    returns ||A_h||_2 as a (num_layers, num_heads) tensor and the task loss per step."""
    if num_steps < 1:
        raise ValueError("LoFiT: no training batches for the head-selection step.")
    losses: list[float] = []
    with frozen(model), head_scalings(model, layout, settings.seed) as scales:
        optimizer = torch.optim.AdamW(scales, lr=settings.lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / num_steps)
        bar = tqdm(batches, total=num_steps, desc="LoFiT head selection (A)", disable=not progress)
        for batch in bar:
            optimizer.zero_grad(set_to_none=True)
            task_loss = model(**batch).loss
            l1 = sum(scale.abs().sum() for scale in scales)
            (task_loss + settings.l1_lambda * l1).backward()
            optimizer.step()
            schedule.step()
            losses.append(float(task_loss.detach()))
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
        norms = torch.stack([scale.detach().float().norm(dim=-1) for scale in scales]).cpu()
    return norms, losses


def lofit_identity(args: Any, model_name: str, fingerprint: str, batch_size: int) -> dict[str, Any]:
    """What identifies a step 1 result: the ``lofit`` identity keys, the model, the data and the batch size."""
    files = {"model_files": model_fingerprint(model_name)}
    return {**identity(args, "lofit"), "model": model_name, **files, "data": fingerprint, "batch_size": batch_size}


def select_lofit_heads(
    model: nn.Module,
    examples: Sequence[dict[str, Any]],
    collate: Callable[[list[dict]], Batch],
    layout: AttentionLayout,
    args: Any,
    batch_size: int,
    model_name: str,
    output_dir: str | None,
    progress: bool = True,
) -> HeadSet:
    """Step 1 of LoFiT on the run's training ``examples``: the top ``p2d_head_ratio`` heads by ||A_h||_2, written
    to ``<output_dir>/p2d_lofit_heads.json`` (reused by an identical rerun, so a resumed run keeps its heads)."""
    settings = lofit_identity(args, model_name, tokenized_fingerprint(examples), batch_size)
    path = Path(output_dir) / LOFIT_HEADS_FILE if output_dir else None
    if path is not None and (previous := reusable_head_set(path, settings, layout, "lofit")) is not None:
        logger.info("LoFiT: reusing the identical head selection in %s", path)
        return previous
    schedule = LofitSelectSettings(
        args.p2d_lofit_l1_lambda, args.p2d_lofit_select_lr, args.p2d_lofit_select_epochs, args.p2d_seed
    )
    order = epoch_order(len(examples), schedule.epochs, batch_size, args.p2d_seed)
    device = next(model.parameters()).device
    batches = (make_batches([examples[i] for i in ids], collate, batch_size, device)[0] for ids in order)
    logger.info(
        "LoFiT: step 1, head selection: %d examples, %d steps at %g, l1_lambda %g",
        len(examples),
        len(order),
        schedule.lr,
        schedule.l1_lambda,
    )
    start = time.perf_counter()
    norms, losses = train_head_scalings(model, layout, batches, len(order), schedule, progress)
    seconds = time.perf_counter() - start
    head_set = HeadSet(
        model=model_name,
        shape=layout.shape(),
        method="lofit",
        seed=args.p2d_seed,
        ratio=args.p2d_head_ratio,
        scores=norms.tolist(),
        selected=select_top(
            norms,
            count_for_ratio(args.p2d_head_ratio, layout.total_heads),
            trainable_layers(layout.num_layers, args.p2d_head_trainable_layers),
        ),
        settings=settings,
        timings={"total_seconds": seconds},
        proxy_loss=losses,
    )
    if path is not None:
        head_set.save(path)
        logger.info("LoFiT: wrote %s (%.1f s)", path, seconds)
    return head_set
