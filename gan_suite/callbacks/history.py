"""The 50-image history buffer of CycleGAN (Shrivastava et al. 2017; CycleGAN section 4).

Discriminators are updated on a mix of the latest generated images and older ones, which
reduces model oscillation. The pools are callback state, so they survive a checkpoint.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import Tensor


class ImagePool:
    """One domain's pool of previously generated images.

    While the pool holds fewer than ``pool_size`` images, each new image is stored and
    returned. Once full, each image is with probability 0.5 swapped for a random stored one
    (the stored one is returned, the new one takes its place), else returned as is.
    ``pool_size=0`` disables the pool (the input is returned unchanged).
    """

    def __init__(self, pool_size: int = 50, generator: torch.Generator | None = None) -> None:
        if pool_size < 0:
            raise ValueError(f"pool_size={pool_size}: expected >= 0")
        self.pool_size = pool_size
        self.images: list[Tensor] = []
        self.generator = generator

    def _rand(self) -> float:
        return torch.rand((), generator=self.generator).item()

    def query(self, images: Tensor) -> Tensor:
        """Return a batch of the same shape, drawn from ``images`` and the pool (detached)."""
        if self.pool_size == 0:
            return images.detach()
        out = []
        for image in images.detach():
            if len(self.images) < self.pool_size:
                self.images.append(image.cpu().clone())
                out.append(image)
            elif self._rand() > 0.5:
                idx = int(torch.randint(self.pool_size, (), generator=self.generator))
                old = self.images[idx]
                self.images[idx] = image.cpu().clone()
                out.append(old.to(images.device, images.dtype))
            else:
                out.append(image)
        return torch.stack(out)

    def state_dict(self) -> dict[str, Any]:
        stacked = torch.stack(self.images) if self.images else torch.empty(0)
        return {"pool_size": self.pool_size, "images": stacked}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pool_size = int(state["pool_size"])
        self.images = list(state["images"].unbind(0)) if state["images"].numel() else []


class HistoryBuffer(L.Callback):
    """Owns one :class:`ImagePool` per domain and hands them to the LightningModule.

    The module asks ``self.history.query("A", fake_A)`` before its discriminator step.
    Under DDP each rank keeps its own pools (as independent processes of the official code
    would); the checkpoint stores rank 0's pools.

    Args:
        pool_size: images kept per domain (50 in the paper; 0 disables the buffer).
        domains: names of the pools.
        seed: seed of the pool's own random draws (offset by the global rank), so that the
            choice of stored images is reproducible and independent of the model's noise.
    """

    def __init__(self, pool_size: int = 50, domains: tuple[str, ...] = ("A", "B"), seed: int = 0):
        self.pool_size = pool_size
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self.pools = {d: ImagePool(pool_size, self._generator) for d in domains}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._generator.manual_seed(self.seed + trainer.global_rank)
        pl_module.history = self

    def query(self, domain: str, images: Tensor) -> Tensor:
        if domain not in self.pools:
            raise KeyError(f"no history pool for domain {domain!r}; pools: {sorted(self.pools)}")
        return self.pools[domain].query(images)

    def state_dict(self) -> dict[str, Any]:
        return {
            "pools": {d: p.state_dict() for d, p in self.pools.items()},
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for d, s in state_dict["pools"].items():
            self.pools.setdefault(d, ImagePool(self.pool_size, self._generator)).load_state_dict(s)
        self._generator.set_state(state_dict["generator"])
