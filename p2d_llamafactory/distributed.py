"""The ranks of a ``torchrun`` / DeepSpeed run sharing stages I and II: who am I, my share of a list, and the few
collectives the stages need. Outside a process group every function is the single-process identity, so the stages
have one code path.

Work is sharded by whole units (micro-batches, probe batches, candidates) in the order one process would run them:
rank r takes units r, r + W, r + 2W, ... Each unit then runs exactly as in a single-process run (same batch, same
padding), so the gathered results equal the single-process ones; only sums of gradients change their order.
"""

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
import torch.distributed as dist


T = TypeVar("T")
R = TypeVar("R")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def shard(units: Sequence[T]) -> list[T]:
    """This rank's units: every ``world_size()``-th one, starting at ``rank()``."""
    return list(units[rank() :: world_size()])


def _collective_device(tensor: torch.Tensor) -> torch.device:
    """NCCL reduces only CUDA tensors: a CPU tensor travels through this rank's GPU; gloo takes it as it is."""
    if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor.device


BUCKET_BYTES = 64 * 2**20


def _buckets(tensors: Sequence[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive tensors of one dtype and device, up to ``BUCKET_BYTES`` per bucket (a larger tensor alone)."""
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for tensor in tensors:
        last = buckets[-1] if buckets else None
        nbytes = tensor.numel() * tensor.element_size()
        fits = last is not None and size + nbytes <= BUCKET_BYTES
        if fits and (last[0].dtype, last[0].device) == (tensor.dtype, tensor.device):
            last.append(tensor)
            size += nbytes
        else:
            buckets.append([tensor])
            size = nbytes
    return buckets


def all_reduce_sum_(tensors: Sequence[torch.Tensor]) -> None:
    """Sum each tensor over the ranks, in place: one collective per bucket of ``BUCKET_BYTES``, so the extra memory
    is one bucket, not a copy of every gradient."""
    if not is_distributed():
        return
    for bucket in _buckets(tensors):
        flat = torch.cat([t.reshape(-1) for t in bucket]).to(_collective_device(bucket[0]))
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for t in bucket:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def sum_over_ranks(value: float) -> float:
    """A Python number summed over the ranks (float64)."""
    if not is_distributed():
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    all_reduce_sum_([tensor])
    return float(tensor.item())


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def from_rank0(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (what rank 0 decided and wrote is what every rank uses)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def map_sharded(function: Callable[[T], R], units: Sequence[T]) -> list[R]:
    """``[function(u) for u in units]``, each rank computing its :func:`shard`; every rank gets the whole list, in
    unit order."""
    mine = shard(range(len(units)))
    results: list[Any] = [None] * len(units)
    for part in gather([(i, function(units[i])) for i in mine]):
        for i, result in part:
            results[i] = result
    return results


@contextmanager
def whole_models() -> Iterator[None]:
    """Models built or loaded inside are whole on every rank even when DeepSpeed ZeRO-3 is configured (transformers
    would partition their weights over the ranks as it builds them): stages I and II read whole weights."""
    from transformers.integrations import deepspeed as hf_deepspeed

    reference = hf_deepspeed._hf_deepspeed_config_weak_ref
    config = reference() if reference is not None else None
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if config is not None:
            hf_deepspeed.set_hf_deepspeed_config(config)
