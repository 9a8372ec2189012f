"""Exact resume: for every paper, 2 epochs + a resume from the epoch-end checkpoint + 2 more
epochs log the same losses, step for step, and end with the same weights as 4 epochs straight.

The resumed fit starts from a fresh process state: other seeds (``seed_everything(1234)``),
freshly built model, data module and callbacks. Everything it continues with must therefore
come from the checkpoint: nets, optimizers, schedulers, history buffers, the iteration counter,
phases and BDL's stage, the data module's shuffle generator and the global RNG streams (noise,
B partners, crops, flips). The comparison is exact (``==`` on floats), not a tolerance: both
fits run the same CPU kernels on the same inputs in one process with one thread count, so any
difference at all means some state was not restored.

The resumed fit continues from the checkpoint the straight run wrote after its 2nd epoch (the
file a fit with ``max_epochs=2`` would end with; BDL's schedule callback refuses a
``max_epochs`` other than its plan, so a 2-epoch BDL fit cannot be run on its own).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from test_registry import Case, build

PAPERS = ["cyclegan", "discogan", "opgan", "cgan", "icgan", "stargan", "matchgan", "bdl"]
EPOCHS, RESUME_AFTER, BATCHES = 4, 2, 2

pytestmark = pytest.mark.usefixtures("shared_digits")  # the cGAN case reads the digits


class StepLog(L.Callback):
    """Every value the module logs while training, in order, as (epoch, iteration, key,
    value): the loss terms of each step and the epoch-end values (the learning rate)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, int, str, float]] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        log = pl_module.log

        def spy(name: str, value, *args, **kwargs) -> None:
            if name.startswith("train/"):
                value_ = float(value.detach() if torch.is_tensor(value) else value)
                row = (trainer.current_epoch, int(pl_module.iteration), name, value_)
                self.rows.append(row)
            log(name, value, *args, **kwargs)

        pl_module.log = spy  # an instance attribute shadows the method


def _build(paper: str):
    """(model, data module, training callbacks) of ``paper``, tiny."""
    if paper != "bdl":
        model, data, callbacks = build(Case(paper))
        # the YAML's own checkpointing (RunSafety's last.ckpt) is not what is compared here
        return model, data, [c for c in callbacks if not isinstance(c, Checkpoint)]
    from test_bdl import TINY

    from datamodules import SegmentationDataModule
    from gan_suite.callbacks import HistoryBuffer
    from gan_suite.callbacks.bdl_schedule import BDLSchedule
    from gan_suite.models.bdl import BDL

    # the K x N loop in 4 epochs: M0, F1, M1, SSL1.1 (the resume lands at M1's start)
    schedule = BDLSchedule(K=1, N=1, m0_epochs=1, f_epochs=1, m_epochs=1, ssl_epochs=1,
                           batch_size=4, evaluate=False)  # fmt: skip
    embedded = {"dataset": "shapes", "n_train": 12, "n_test": 4, "image_size": 32}
    data = SegmentationDataModule(embedded=embedded, batch_size=2, num_workers=0)
    return BDL(**TINY), data, [schedule, HistoryBuffer()]  # as experiments/bdl.yaml


@dataclass
class Run:
    rows: list[tuple[int, int, str, float]]
    weights: dict[str, torch.Tensor]


def _fit(paper: str, make_trainer, ckpt_dir: Path, seed: int, ckpt_path: Path | None) -> Run:
    model, data, callbacks = _build(paper)
    log = StepLog()
    every_epoch = ModelCheckpoint(dirpath=ckpt_dir, filename="{epoch}", save_top_k=-1)
    trainer = make_trainer(
        seed=seed,
        max_epochs=EPOCHS,
        limit_train_batches=BATCHES,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=True,
        callbacks=[*callbacks, log, every_epoch],
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    assert trainer.num_training_batches == BATCHES
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Run(log.rows, weights)


@pytest.mark.parametrize("paper", PAPERS)
def test_resume_repeats_the_uninterrupted_run_exactly(paper, make_trainer, tmp_path):
    straight = _fit(paper, make_trainer, tmp_path / "straight", seed=0, ckpt_path=None)
    ckpt = tmp_path / "straight" / f"epoch={RESUME_AFTER - 1}.ckpt"
    resumed = _fit(paper, make_trainer, tmp_path / "resumed", seed=1234, ckpt_path=ckpt)

    # the values logged from the resumed epoch on
    later = [row for row in straight.rows if row[0] >= RESUME_AFTER]
    # iterations 4..7, and 8 = the end of the last epoch where per-epoch schedules log
    iterations = {row[1] for row in later} - {EPOCHS * BATCHES}
    assert iterations == set(range(RESUME_AFTER * BATCHES, EPOCHS * BATCHES))
    assert len(resumed.rows) == len(later)
    for want, got in zip(later, resumed.rows):
        assert got == want, f"epoch {want[0]}, iteration {want[1]}: logged {got} instead"
    assert straight.weights.keys() == resumed.weights.keys()
    differ = [k for k, v in straight.weights.items() if not torch.equal(v, resumed.weights[k])]
    assert not differ, f"final weights differ: {differ[:5]}"
