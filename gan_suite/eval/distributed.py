"""Reductions over DDP ranks for the scorers, and a switch to compute from one rank's state.

The Evaluation callback shards the evaluated items over ranks and the scorers sum their counts
over ranks (:func:`all_reduce_sum`); when there are fewer items than ranks every rank scores all
of them and computes alone (:func:`reduced_over_ranks` with ``reduce=False``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

_LOCAL = [False]  # inside reduced_over_ranks(..., False): no collective at all


def _distributed() -> bool:
    if _LOCAL[0]:
        return False
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@contextlib.contextmanager
def reduced_over_ranks(scorer: nn.Module, reduce: bool) -> Iterator[None]:
    """Compute ``scorer`` over all DDP ranks (``reduce``: each rank scored its own shard) or
    from this rank's state alone (every rank scored the same items). Switches torchmetrics'
    own synchronisation the same way and restores it after."""
    from torchmetrics import Metric

    metrics = [m for m in scorer.modules() if isinstance(m, Metric)]
    saved = [(m.sync_on_compute, m._to_sync) for m in metrics]
    if not reduce:
        for m in metrics:
            m.sync_on_compute = m._to_sync = False
    _LOCAL[0] = not reduce
    try:
        yield
    finally:
        _LOCAL[0] = False
        for m, (sync, to_sync) in zip(metrics, saved):
            m.sync_on_compute, m._to_sync = sync, to_sync


def _comm_device(t: Tensor) -> torch.device:
    """NCCL reduces CUDA tensors only; gloo takes CPU tensors."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return t.device


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum of ``t`` over DDP ranks (``t`` itself without DDP)."""
    if _distributed():
        summed = t.to(_comm_device(t), copy=True)
        torch.distributed.all_reduce(summed)
        return summed.to(t.device)
    return t


def all_gather_cat(t: Tensor) -> Tensor:
    """Concatenate a (N_rank, ...) tensor over DDP ranks (ranks may hold different N)."""
    if not _distributed():
        return t
    home, t = t.device, t.to(_comm_device(t))
    world = torch.distributed.get_world_size()
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    torch.distributed.all_gather(sizes, n)
    biggest = int(max(int(s) for s in sizes))
    padded = torch.zeros((biggest, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)]).to(home)
