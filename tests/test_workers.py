"""Loader workers ignore SIGTERM (the main process saves first) and are seeded as Lightning's."""

from __future__ import annotations

import os
import signal
from functools import partial

import pytest
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset

from gan_suite.utils.workers import WorkerInit


class _TermsItself(Dataset):
    """Each item sends SIGTERM to the worker serving it (what a cluster sends every process),
    unless ``term`` is off."""

    def __init__(self, term: bool = True) -> None:
        self.term = term

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.term and torch.utils.data.get_worker_info() is not None:
            os.kill(os.getpid(), signal.SIGTERM)
        return torch.rand(1)


def _loader(worker_init_fn, term: bool = True) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    return DataLoader(_TermsItself(term), batch_size=2, num_workers=1, generator=g,
                      worker_init_fn=worker_init_fn)  # fmt: skip


def test_a_worker_survives_sigterm_with_worker_init():
    with pytest.raises(RuntimeError, match="killed by signal|exited unexpectedly"):
        list(_loader(None))  # the fault: the worker dies and takes the epoch down
    assert len(list(_loader(WorkerInit(0)))) == 2


def test_workers_are_seeded_as_lightning_seeds_them(monkeypatch):
    monkeypatch.setenv("PL_SEED_WORKERS", "1")
    ours = torch.cat(list(_loader(WorkerInit(1), term=False)))
    lightning = torch.cat(list(_loader(partial(pl_worker_init_function, rank=1), term=False)))
    assert torch.equal(ours, lightning)
    other_rank = torch.cat(list(_loader(WorkerInit(0), term=False)))
    assert not torch.equal(ours, other_rank)  # the rank enters the seed
