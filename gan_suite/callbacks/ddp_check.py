"""DDP consistency check: all ranks must hold identical weights after optimizer steps."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from torch import Tensor


def weight_fingerprint(module: torch.nn.Module, buffers: bool = True) -> Tensor:
    """A float64 (4,) summary of all parameters (and, if ``buffers``, floating buffers): sum,
    sum of squares, max |w| and a sum weighted by fixed pseudo-random signs (catches
    permutations the others miss)."""
    tensors = module.state_dict().values() if buffers else module.parameters()
    vec = torch.cat([t.detach().flatten().double().cpu() for t in tensors if t.is_floating_point()])
    signs = torch.randint(0, 2, (vec.numel(),), generator=torch.Generator().manual_seed(0))
    signs = signs.double() * 2 - 1
    return torch.stack([vec.sum(), (vec * vec).sum(), vec.abs().max(), (vec * signs).sum()])


def max_divergence(fingerprints: Tensor) -> float:
    """Largest relative difference between any rank's fingerprint and rank 0's. (world, 4)."""
    ref = fingerprints[0]
    return float(((fingerprints - ref).abs() / (ref.abs() + 1e-12)).max())


class DDPConsistencyCheck(L.Callback):
    """After every training epoch, gather each rank's weight fingerprint and compare.

    Raises if ranks diverge by more than ``tolerance`` (relative), which is what happens when
    a GAN step skips DDP's gradient all-reduce or a rank draws different data for a net that
    is not synchronised. Writes ``ddp_check.json`` in the run directory on rank 0.

    Args:
        tolerance: largest accepted relative difference between ranks.
        include_buffers: also compare floating buffers (BatchNorm statistics, EMA copies).
            Set False for BatchNorm nets under DDP without SyncBatchNorm (CPU runs: it needs
            GPUs), where each rank keeps statistics of its own shard by design.
    """

    def __init__(self, tolerance: float = 1e-6, include_buffers: bool = True) -> None:
        self.tolerance, self.include_buffers = tolerance, include_buffers
        self.history: list[float] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        local = weight_fingerprint(pl_module, self.include_buffers).to(pl_module.device)
        gathered = pl_module.all_gather(local)
        gathered = gathered.reshape(-1, 4).cpu() if trainer.world_size > 1 else local[None].cpu()
        divergence = max_divergence(gathered)
        self.history.append(divergence)
        pl_module.log("ddp/weight_divergence", divergence, rank_zero_only=True)
        if trainer.is_global_zero:
            out = Path(trainer.default_root_dir) / "ddp_check.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(
                json.dumps(
                    {
                        "world_size": trainer.world_size,
                        "epoch": trainer.current_epoch,
                        "divergence": self.history,
                    }
                )
            )
        if divergence > self.tolerance:
            raise RuntimeError(
                f"DDP ranks diverged: relative weight difference {divergence:.3g} > "
                f"{self.tolerance:g} after epoch {trainer.current_epoch}"
            )
