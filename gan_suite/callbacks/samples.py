"""Sample grids: fixed inputs -> input | translation | reconstruction, as PNG and to the logger."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor
from torchvision.utils import make_grid, save_image


def to_unit_range(images: Tensor) -> Tensor:
    """Map generator outputs in [-1, 1] to [0, 1] for saving and display."""
    return ((images.float().clamp(-1, 1) + 1) / 2).cpu()


def panels_to_grid(panels: dict[str, list[Tensor]], padding: int = 2) -> Tensor:
    """Arrange panels side by side; in a panel, each row is one input and its outputs.

    ``panels`` maps a direction name (``"A->B"``) to its columns, each (N, 3, H, W) in [-1, 1],
    e.g. [input, translation, reconstruction]. Returns one (3, H', W') image in [0, 1].
    """
    grids = []
    for columns in panels.values():
        n = columns[0].shape[0]
        # interleave so that row i = (col0[i], col1[i], ...)
        tiles = torch.stack([to_unit_range(c) for c in columns], dim=1).flatten(0, 1)
        grids.append(make_grid(tiles, nrow=len(columns), padding=padding, pad_value=1.0))
        assert grids[-1].shape[1] == grids[0].shape[1] or n == 0, "panels need equal row counts"
    return torch.cat(grids, dim=2)


class SampleGrid(L.Callback):
    """Translate the same validation images at every validation and save the grid.

    The LightningModule provides ``sample_panels(batch) -> dict[str, list[Tensor]]``. The
    grid goes to ``<run_dir>/samples/epoch=<e>-step=<s>.png`` (and ``latest.png``) and to the
    logger (W&B image, or TensorBoard's add_image).

    Args:
        n_images: inputs per panel (the first n of the validation set, fixed for the run).
        every_n_epochs: make a grid at every n-th validation epoch.
        dirname: sub-folder of the run directory.
    """

    def __init__(self, n_images: int = 4, every_n_epochs: int = 1, dirname: str = "samples"):
        self.n_images = n_images
        self.every_n_epochs = every_n_epochs
        self.dirname = dirname
        self._fixed: dict | None = None
        self.last_path: Path | None = None

    def _fixed_batch(self, trainer: L.Trainer) -> dict | None:
        if self._fixed is None:
            loaders = trainer.val_dataloaders
            if loaders is None:
                return None
            loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
            items, count = [], 0
            for batch in loader:
                items.append(batch)
                count += len(next(iter(v for v in batch.values() if isinstance(v, Tensor))))
                if count >= self.n_images:
                    break
            self._fixed = {
                k: (torch.cat([b[k] for b in items])[: self.n_images])
                for k, v in items[0].items()
                if isinstance(v, Tensor)
            }
        return self._fixed

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch % self.every_n_epochs):
            return
        self.make_grid(trainer, pl_module)

    @rank_zero_only
    def make_grid(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path | None:
        batch = self._fixed_batch(trainer)
        if batch is None:
            return None
        batch = {k: v.to(pl_module.device) for k, v in batch.items()}
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            grid = panels_to_grid(pl_module.sample_panels(batch))
        pl_module.train(was_training)
        out_dir = Path(trainer.default_root_dir) / self.dirname
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"epoch={trainer.current_epoch:04d}-step={trainer.global_step}.png"
        save_image(grid, path)
        save_image(grid, out_dir / "latest.png")
        self.last_path = path
        caption = " || ".join(pl_module.sample_panels_caption())
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image("samples", [grid], step=trainer.global_step, caption=[caption])
            elif hasattr(logger.experiment, "add_image"):
                logger.experiment.add_image("samples", grid, trainer.global_step)
        return path
