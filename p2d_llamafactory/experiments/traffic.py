"""Gradient traffic per optimizer step: the bytes data-parallel training synchronises, by adaptation method.

Under plain data parallelism (torch DDP) every rank all-reduces the gradient of every *trainable* parameter once
per optimizer step, in the parameter's dtype: ``sum(numel x element size)`` over the parameters with
``requires_grad`` (frozen ones get no gradient and are not in DDP's buckets). That sum, the *gradient payload*, is
what :func:`predict` computes from a model (real or on the meta device) and a method, and what
:class:`AllReduceCounter`, a DDP communication hook, measures bucket by bucket:

- ``full``: every parameter (tied weights once);
- ``lora``: the A (r x in) and B (out x r) factors of a rank-``r`` LoRA on ``q_proj``/``k_proj``/``v_proj``
  (r = 128, the paper's baseline), as peft builds them;
- ``p2d_heads``: the head-slice adapter of :func:`~p2d_llamafactory.adapter.apply_head_slices` on 10 % of the
  heads, q rows and o columns. Its one-hot factors are frozen, so only the trainable factor, ``rank x hidden``
  per module, is reduced: :func:`~p2d_llamafactory.adapter.count_slice_params` weights.

**Element size.** By default (``element_size=None``) the parameters' own dtype, as DDP reduces them. peft builds
adapter weights in float32 on a bfloat16/float16 model (``autocast_adapter_dtype=True``), so ``lora`` and
``p2d_heads`` then count 4 bytes per weight. Under DeepSpeed with ``bf16`` every parameter is cast to bfloat16 at
engine start and gradients are reduced in bfloat16 (``communication_data_type`` defaults to the bf16 dtype): pass
``element_size=2`` for that, 4 for float32 gradients.

**Bytes on the wire.** A ring all-reduce of G bytes over N ranks is a reduce-scatter then an all-gather, each
sending (N - 1) / N x G per rank: :meth:`StepTraffic.wire_bytes_per_rank` = 2 (N - 1) / N x G, which tends to 2 G.

**What ZeRO changes.** ZeRO-1/2 replace the all-reduce by a reduce-scatter of the same gradient bytes (each rank
keeps the reduced shard it owns the optimizer state of) and, after the step, an all-gather of the updated
trainable parameters (DeepSpeed's ``all_gather_dp_groups`` of the bit16 partitions): G + P_train x (parameter
bytes), the same two phases as the all-reduce, so the payload above still sets the traffic, and the paper's
"2 x P_train x 2 bytes (bf16)" is 2 G at ``element_size=2``. Only ZeRO-3 shards the parameters themselves and
all-gathers every layer's weights in forward and again in backward. Those gathers move *all* the parameters, frozen
ones included, so the head-slice saving does not carry over to them.

**The paper's figures (Appendix I), Qwen2.5-7B.** Full fine-tuning: 7,615,616,512 weights, a bf16 payload of
15.23 GB, 2 G = 30.46 GB per step and GPU (the paper's 30.4 GB, from 7.6 B). P2D at 10 % of the heads (78 of 784,
q + o): 71,565,312 weights (0.94 %), 2 G = 0.286 GB (the paper's 0.30 GB), 106x less. Both paper figures are also
exactly the *float32* payload (4 bytes x P_train), so "bf16 reduce-scatter + all-gather" and "one fp32 all-reduce
payload" give the same numbers; the bf16 payload alone (one DDP all-reduce or one ZeRO-2 reduce-scatter) is half.
The ratio, 106x, does not depend on the assumption.

Torch-light: torch, transformers and peft are imported inside the functions that need them.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..hparams import DEFAULT_HEAD_MODULES, count_for_ratio


METHODS = ("full", "lora", "p2d_heads")
LORA_RANK = 128
LORA_TARGETS = ("q_proj", "k_proj", "v_proj")
HEAD_RATIO = 0.1


@dataclass(frozen=True)
class StepTraffic:
    """The gradient a method synchronises per optimizer step: trainable weights x bytes per gradient element."""

    method: str
    trainable_params: int
    element_size: int  # bytes per gradient element: 4 float32, 2 bfloat16/float16; 0 when the dtypes are mixed
    gradient_bytes: int  # the all-reduce payload: sum of numel x element size over the trainable parameters

    def wire_bytes_per_rank(self, world_size: int) -> float:
        """Bytes each rank sends in a ring all-reduce of the payload (reduce-scatter + all-gather phases)."""
        return 2 * (world_size - 1) / world_size * self.gradient_bytes


def gradient_bytes(model: Any, element_size: int | None = None) -> int:
    """Sum over the ``requires_grad`` parameters of numel x element size (theirs, or ``element_size``)."""
    return sum(p.numel() * (element_size or p.element_size()) for p in model.parameters() if p.requires_grad)


def trainable_traffic(model: Any, method: str = "", element_size: int | None = None) -> StepTraffic:
    """:class:`StepTraffic` of a model whose trainable parameters are already set (a PeftModel, a full model)."""
    params = [p for p in model.parameters() if p.requires_grad]  # a tied (shared) parameter once
    return StepTraffic(
        method,
        sum(p.numel() for p in params),
        _uniform({element_size or p.element_size() for p in params}),
        gradient_bytes(model, element_size),
    )


def _floating_dtype(model: Any) -> Any:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def _adapter_element_size(model: Any) -> int:
    """Bytes per weight of the adapter peft builds on ``model``: float32 over a half-precision base, else the base's."""
    import torch

    dtype = _floating_dtype(model)
    return 4 if dtype in (torch.float16, torch.bfloat16) else torch.empty((), dtype=dtype).element_size()


def lora_linears(model: Any, targets: Sequence[str] = LORA_TARGETS) -> list[tuple[str, Any]]:
    """The ``nn.Linear`` modules a peft ``target_modules`` list selects (full name or its last components)."""
    from torch import nn

    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and any(name == t or name.endswith(f".{t}") for t in targets)
    ]


def lora_params(model: Any, rank: int = LORA_RANK, targets: Sequence[str] = LORA_TARGETS) -> int:
    """Trainable weights of a rank-``rank`` LoRA on ``targets``: r x (in + out) per targeted linear (A and B)."""
    linears = lora_linears(model, targets)
    if not linears:
        raise ValueError(f"No linear layer of {type(model).__name__} matches the LoRA targets {list(targets)}.")
    return sum(rank * (m.in_features + m.out_features) for _, m in linears)


def default_heads(layout: Any, ratio: float = HEAD_RATIO, seed: int = 0) -> list[tuple[int, int]]:
    """A fixed head set: the top ``ratio`` of ``random_scores(layout, seed)`` (the paper's random-heads draw)."""
    from ..heads.scoring import random_scores, select_top

    return select_top(random_scores(layout, seed), count_for_ratio(ratio, layout.total_heads))


@dataclass(frozen=True)
class MethodSetup:
    """What each method trains: the head set (default: :func:`default_heads` of ``head_ratio`` and ``seed``; with q
    and o slices only the number of heads matters) and its slices, and the LoRA baseline's rank and targets."""

    heads: tuple[tuple[int, int], ...] | None = None
    head_modules: tuple[str, ...] = DEFAULT_HEAD_MODULES
    head_ratio: float = HEAD_RATIO
    seed: int = 0
    lora_rank: int = LORA_RANK
    lora_targets: tuple[str, ...] = tuple(LORA_TARGETS)

    def layout_and_heads(self, model: Any) -> tuple[Any, list[tuple[int, int]]]:
        from ..heads.layout import find_attention_layout

        layout = find_attention_layout(model)
        heads = default_heads(layout, self.head_ratio, self.seed) if self.heads is None else list(self.heads)
        return layout, heads


def predict(
    model: Any, method: str, *, element_size: int | None = None, setup: MethodSetup = MethodSetup()
) -> StepTraffic:
    """The gradient payload of ``method`` on the plain (unwrapped) ``model``, counted from its shapes alone.

    ``element_size`` defaults to what the method's trainable parameters are stored in (see the module docstring).
    """
    if method == "full":  # every parameter, in its own dtype unless ``element_size`` says otherwise
        params = list(model.parameters())  # a tied (shared) parameter once, as DDP buckets it
        sizes = [element_size or p.element_size() for p in params]
        return StepTraffic(
            method,
            sum(p.numel() for p in params),
            _uniform(set(sizes)),
            sum(p.numel() * s for p, s in zip(params, sizes)),
        )
    if method == "lora":
        count = lora_params(model, setup.lora_rank, setup.lora_targets)
    elif method == "p2d_heads":
        from ..adapter import count_slice_params

        layout, heads = setup.layout_and_heads(model)
        count = count_slice_params(layout, heads, setup.head_modules)
    else:
        raise ValueError(f"Unknown method {method!r}; expected one of {', '.join(METHODS)}.")
    size = element_size or _adapter_element_size(model)
    return StepTraffic(method, count, size, count * size)


def _uniform(sizes: set[int]) -> int:
    return sizes.pop() if len(sizes) == 1 else 0


def prepare(model: Any, method: str, setup: MethodSetup = MethodSetup()) -> Any:
    """``model`` set up to train with ``method``: all parameters, a peft LoRA (alpha = 2 r), or the head-slice
    adapter."""
    if method == "full":
        return model.requires_grad_(True)
    if method == "lora":
        from peft import LoraConfig, TaskType, get_peft_model

        config = LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=setup.lora_rank,
            lora_alpha=2 * setup.lora_rank,
            target_modules=list(setup.lora_targets),
            lora_dropout=0.0,
        )
        return get_peft_model(model, config)
    if method == "p2d_heads":
        from ..adapter import apply_head_slices

        layout, heads = setup.layout_and_heads(model)
        return apply_head_slices(model, layout, heads, setup.head_modules)
    raise ValueError(f"Unknown method {method!r}; expected one of {', '.join(METHODS)}.")


def meta_model(config: Any, dtype: Any = None) -> Any:
    """The causal LM a transformers config describes, on the meta device (shapes only, nothing allocated)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=dtype or torch.bfloat16)


class AllReduceCounter:
    """A DDP communication hook that counts the bytes of every gradient bucket it all-reduces.

    ``ddp.register_comm_hook(counter, AllReduceCounter.hook)``; read and :meth:`reset` ``bytes`` (and ``buckets``)
    around each optimizer step. The all-reduce itself is torch's default one (``allreduce_hook``: sum, then divide
    by the world size), so training is unchanged.
    """

    def __init__(self, process_group: Any = None):
        self.process_group = process_group
        self.bytes = 0
        self.buckets = 0

    def reset(self) -> None:
        self.bytes = 0
        self.buckets = 0

    @staticmethod
    def hook(state, bucket):  # no annotations: DDP accepts only its own (dist.GradBucket, Future[Tensor])
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        buffer = bucket.buffer()
        state.bytes += buffer.numel() * buffer.element_size()
        state.buckets += 1
        return allreduce_hook(state.process_group, bucket)
