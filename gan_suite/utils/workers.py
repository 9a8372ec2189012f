"""Data-loader workers that leave preemption to the main process.

A cluster (SLURM, Kubernetes) sends SIGTERM to every process of a job, loader workers
included. A worker killed by it takes the main process down with "DataLoader worker ... killed
by signal: Terminated" before the main process can save its checkpoint
(:class:`gan_suite.callbacks.RunSafety`). Workers started with :class:`WorkerInit` ignore
SIGTERM; the main process saves, then shuts its workers down as usual (and a worker whose
parent is gone exits by itself).
"""

from __future__ import annotations

import os
import signal


class WorkerInit:
    """``worker_init_fn`` of the suite's loaders: ignore SIGTERM, then seed the worker exactly
    as Lightning's own ``pl_worker_init_function`` would (Lightning only installs its own when
    a loader has none, so this one calls it when ``seed_everything(workers=True)`` asked for it).

    Args:
        rank: the process's global rank (the seeds of Lightning's function depend on it).
    """

    def __init__(self, rank: int = 0) -> None:
        self.rank = rank

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if int(os.environ.get("PL_SEED_WORKERS", "0")):
            from lightning.fabric.utilities.seed import pl_worker_init_function

            pl_worker_init_function(worker_id, rank=self.rank)


def worker_init(datamodule: object) -> WorkerInit:
    """A :class:`WorkerInit` for a data module's loaders (its trainer's rank, else 0)."""
    trainer = getattr(datamodule, "trainer", None)
    return WorkerInit(int(getattr(trainer, "global_rank", 0) or 0))
