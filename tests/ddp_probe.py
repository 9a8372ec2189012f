"""A test-only callback for the DDP tests: what each rank drew on its first training batch."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch


class RankStreams(L.Callback):
    """Writes ``rank<r>.json`` in the run directory: the first z this rank's model draws and
    the neighbour indices (IC-GAN) or item indices of its first batch, so a test can compare
    ranks."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if batch_idx or trainer.current_epoch:
            return
        state = torch.get_rng_state()  # probe without moving the stream the run uses
        z = pl_module.sample_z(2) if hasattr(pl_module, "sample_z") else torch.randn(2, 4)
        torch.set_rng_state(state)
        out = {"z": z.flatten().tolist()}
        if "neighbour_index" in batch:
            out["neighbours"] = batch["neighbour_index"].flatten().tolist()
        if "index" in batch:  # which items this rank's first batch holds
            out["index"] = batch["index"].flatten().tolist()
            out["labelled"] = batch["labelled"].flatten().tolist() if "labelled" in batch else []
        path = Path(trainer.default_root_dir) / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(out))
