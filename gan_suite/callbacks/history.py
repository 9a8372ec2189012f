"""The 50-image history buffer of CycleGAN (Shrivastava et al. 2017; CycleGAN section 4).

Discriminators are updated on a mix of the latest generated images and older ones, which
reduces model oscillation. The pools are callback state, so they survive a checkpoint.

A resumed run may differ from the one that wrote the checkpoint. Its configured ``pool_size``
wins over the checkpoint's (a larger restored pool is cut to it). A restored pool whose images
have another shape than the new run's fakes (``data.init_args.crop_size`` changed on resume)
is dropped with a warning at its first use and refills from the new fakes: the pool is a cache
of past fakes that the paper starts empty, the nets are fully convolutional, and refusing the
run would leave no way to continue it at the new size short of editing the checkpoint.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.utilities import rank_zero_warn
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

    def stored_shape(self) -> tuple[int, ...] | None:
        """(C, H, W) of the stored images, None while the pool is empty."""
        return tuple(self.images[0].shape) if self.images else None

    def query(self, images: Tensor) -> Tensor:
        """Return a batch of the same shape, drawn from ``images`` and the pool (detached).

        Raises:
            ValueError: the stored images have another (C, H, W) than ``images``
                (:class:`HistoryBuffer` drops such a pool first, with a warning).
        """
        if self.pool_size == 0:
            return images.detach()
        stored = self.stored_shape()
        if stored is not None and stored != tuple(images.shape[1:]):
            raise ValueError(
                f"ImagePool holds {stored} images but was given {tuple(images.shape[1:])} "
                "(C, H, W) images: clear() the pool when the image size changes"
            )
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

    def clear(self) -> None:
        """Forget every stored image."""
        self.images = []

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the stored images, keeping this pool's own ``pool_size`` (the resumed run's
        configuration): a restored pool larger than it is cut to its first ``pool_size``."""
        images = list(state["images"].unbind(0)) if state["images"].numel() else []
        self.images = images[: self.pool_size]


class HistoryBuffer(L.Callback):
    """Owns one :class:`ImagePool` per domain and hands them to the LightningModule.

    The module asks ``self.history.query("A", fake_A)`` before its discriminator step.
    Under DDP each rank keeps its own pools (as independent processes of the official code
    would), and the checkpoint stores every rank's pools and generator (``{"ranks": [...]}``),
    so a resumed DDP run continues each rank's history as the uninterrupted run does. A
    checkpoint of another number of processes gives every rank rank 0's pools (with a
    warning).

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
        self._rank, self._world_size = trainer.global_rank, trainer.world_size
        pl_module.history = self
        declared = getattr(trainer.datamodule, "input_sizes", None)
        self._data_sizes = dict(declared()) if declared is not None else {}

    _data_sizes: dict[str, tuple[int, int]] = {}

    def query(self, domain: str, images: Tensor) -> Tensor:
        """Fakes for D of ``domain`` (``(N, C, H, W)``), drawn from them and the pool.

        A restored pool of another image shape is dropped first, with a warning naming the
        data option and both sizes (module docstring).

        Raises:
            KeyError: no pool for ``domain``.
        """
        if domain not in self.pools:
            raise KeyError(f"no history pool for domain {domain!r}; pools: {sorted(self.pools)}")
        pool = self.pools[domain]
        stored = pool.stored_shape()
        if stored is not None and stored != tuple(images.shape[1:]):
            self._drop_stale(domain, stored, tuple(images.shape[1:]))
        return pool.query(images)

    def _drop_stale(self, domain: str, stored: tuple[int, ...], new: tuple[int, ...]) -> None:
        options = [k for k, size in self._data_sizes.items() if tuple(size) == new[1:]]
        option = f"{options[0]}={new[1]}" if options and new[1] == new[2] else None
        option = option or (f"{options[0]}={list(new[1:])}" if options else "the image size")
        rank_zero_warn(
            f"HistoryBuffer: the pool of domain {domain} restored from the checkpoint holds "
            f"{len(self.pools[domain].images)} images of {stored[1]}x{stored[2]} px "
            f"({stored[0]} channels), but this run makes {new[1]}x{new[2]} px ({new[0]} "
            f"channels): {option} differs from the checkpoint's run ({stored[1]}x{stored[2]}). "
            f"The stale pool is dropped and refills from the new fakes (pool_size="
            f"{self.pools[domain].pool_size})"
        )
        self.pools[domain].clear()

    _rank, _world_size = 0, 1  # set at setup, which Lightning runs before it restores state

    def state_dict(self) -> dict[str, Any]:
        """Every rank's pools and generator, ``{"ranks": [rank 0's, rank 1's, ...]}``.

        Lightning asks every rank for it before rank 0 writes the checkpoint, so under DDP
        the ranks' states are gathered here (a collective, as the module's RNG states)."""
        mine = {
            "pools": {d: p.state_dict() for d, p in self.pools.items()},
            "generator": self._generator.get_state(),
        }
        states = [mine]
        if self._world_size > 1 and dist.is_available() and dist.is_initialized():
            states = [None] * self._world_size
            dist.all_gather_object(states, mine)
        return {"ranks": states}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """This rank's pools and generator (rank 0's when the world size differs)."""
        ranks = state_dict.get("ranks", [state_dict])  # checkpoints before per-rank pools
        if len(ranks) != self._world_size and self._rank == 0:
            rank_zero_warn(
                f"HistoryBuffer: the checkpoint holds the pools of {len(ranks)} process(es), "
                f"this run has {self._world_size}: every rank starts from rank 0's pools"
            )
        state = ranks[self._rank] if len(ranks) == self._world_size else ranks[0]
        for d, s in state["pools"].items():
            self.pools.setdefault(d, ImagePool(self.pool_size, self._generator)).load_state_dict(s)
        self._generator.set_state(state["generator"])
        if len(ranks) != self._world_size and self._rank:
            self._generator.manual_seed(self.seed + self._rank)
