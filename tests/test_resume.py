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


def _fit(
    paper: str, make_trainer, ckpt_dir: Path, seed: int, ckpt_path: Path | None, **trainer_kw
) -> Run:
    model, data, callbacks = _build(paper)
    if trainer_kw.pop("sample_grid", False):
        from gan_suite.callbacks import SampleGrid

        callbacks.append(SampleGrid(n_images=2))
    log = StepLog()
    every_epoch = ModelCheckpoint(dirpath=ckpt_dir, filename="{epoch}", save_top_k=-1)
    trainer = make_trainer(
        seed=seed,
        max_epochs=EPOCHS,
        limit_train_batches=BATCHES,
        enable_checkpointing=True,
        callbacks=[*callbacks, log, every_epoch],
        **{"limit_val_batches": 0, "num_sanity_val_steps": 0, **trainer_kw},
    )
    trainer.fit(model, datamodule=data, ckpt_path=ckpt_path)
    assert trainer.num_training_batches == BATCHES
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Run(log.rows, weights)


# validation every 2nd epoch (cGAN's and MatchGAN's YAMLs validate every 5th / 50th): then
# ModelCheckpoint saves at the end of validation, before the epoch-end hooks (the per-epoch LR
# step), and Lightning runs those hooks again after the restore
VALIDATE_EVERY_2ND = {"limit_val_batches": 1, "check_val_every_n_epoch": 2,
                      "num_sanity_val_steps": 1}  # fmt: skip
# validation every epoch with SampleGrid, which reads the first validation batch once per
# process (rank 0): that read must not move the training's random stream (the unpaired
# data draws each item's B from it), else the resumed run drifts after its first validation
VALIDATE_WITH_SAMPLES = {"limit_val_batches": 1, "num_sanity_val_steps": 0, "sample_grid": True}
CASES = [(paper, {}) for paper in PAPERS] + [
    ("cyclegan", VALIDATE_EVERY_2ND),
    ("cyclegan", VALIDATE_WITH_SAMPLES),
]
IDS = [p + ("-val1-samples" if "sample_grid" in kw else "-val2" if kw else "") for p, kw in CASES]


@pytest.mark.parametrize(("paper", "trainer_kw"), CASES, ids=IDS)
def test_resume_repeats_the_uninterrupted_run_exactly(paper, trainer_kw, make_trainer, tmp_path):
    straight = _fit(paper, make_trainer, tmp_path / "straight", 0, None, **trainer_kw)
    ckpt = tmp_path / "straight" / f"epoch={RESUME_AFTER - 1}.ckpt"
    resumed = _fit(paper, make_trainer, tmp_path / "resumed", 1234, ckpt, **trainer_kw)

    # the values logged after the checkpoint: from the resumed epoch on, and, when the
    # checkpoint was saved at validation end, the epoch-end values of the epoch before (the
    # resumed fit runs those hooks again, as the uninterrupted one ran them after its save)
    at_validation_end = trainer_kw.get("check_val_every_n_epoch", 1) > 1
    after = RESUME_AFTER * BATCHES if at_validation_end else EPOCHS * BATCHES + 1
    later = [row for row in straight.rows if row[0] >= RESUME_AFTER or row[1] >= after]
    # iterations 4..7, and 8 = the end of the last epoch where per-epoch schedules log
    iterations = {row[1] for row in later} - {EPOCHS * BATCHES}
    assert iterations == set(range(RESUME_AFTER * BATCHES, EPOCHS * BATCHES))
    assert len(resumed.rows) == len(later)
    for want, got in zip(later, resumed.rows):
        assert got == want, f"epoch {want[0]}, iteration {want[1]}: logged {got} instead"
    assert straight.weights.keys() == resumed.weights.keys()
    differ = [k for k, v in straight.weights.items() if not torch.equal(v, resumed.weights[k])]
    assert not differ, f"final weights differ: {differ[:5]}"


# ---------------------------------------------------------------------------- atomic saves
# A child process trains cGAN with AtomicCheckpointIO; its 2nd save of last.ckpt writes half
# the file, says so, and sleeps until the test SIGKILLs it.
KILLED_DURING_SAVE = """
import os, sys, io, time, torch
from lightning.pytorch.callbacks import ModelCheckpoint
from test_registry import Case, build
from gan_suite.utils import AtomicCheckpointIO, quiet
import lightning as L

ckpt_dir, marker = sys.argv[1], sys.argv[2]
real_save, last_saves = torch.save, []

def half_then_hang(obj, f, *args, **kwargs):
    last_saves.extend([1] if str(getattr(f, "name", "")).endswith("last.ckpt.tmp") else [])
    if len(last_saves) < 2:
        return real_save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer)
    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    f.flush()
    open(marker, "w").close()
    time.sleep(120)

torch.save = half_then_hang
L.seed_everything(0, verbose=False)
model, data, _ = build(Case("cgan"))
every_epoch = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=-1)
with quiet("lightning.pytorch", "lightning.fabric"):
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, max_epochs=3,
                        limit_train_batches=2, limit_val_batches=0, num_sanity_val_steps=0,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[every_epoch], plugins=[AtomicCheckpointIO()])
trainer.fit(model, datamodule=data)
"""


def test_sigkill_while_saving_leaves_the_previous_checkpoint_resumable(tmp_path, make_trainer):
    import os
    import signal
    import subprocess
    import sys
    import time

    from gan_suite.utils import AtomicCheckpointIO

    tests = Path(__file__).resolve().parent
    script, ckpt_dir, marker = tmp_path / "child.py", tmp_path / "checkpoints", tmp_path / "half"
    script.write_text(KILLED_DURING_SAVE)
    pythonpath = os.pathsep.join([str(tests.parent), str(tests)])
    env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, str(script), str(ckpt_dir), str(marker)], env=env,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            ended = child.poll() is not None
            assert not ended, f"the child ended before its 2nd save: {child.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "the child never reached its 2nd save"
            time.sleep(0.1)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()

    last, tmp = ckpt_dir / "last.ckpt", ckpt_dir / "last.ckpt.tmp"
    # the kill came mid-write: half a file under the temporary name, which does not load ...
    assert tmp.is_file() and tmp.stat().st_size > 0
    with pytest.raises(Exception):  # noqa: B017 - torch raises several kinds for a truncated zip
        torch.load(tmp, weights_only=False)
    # ... and the previous checkpoint, complete: the first epoch's
    saved = torch.load(last, weights_only=False)
    assert saved["epoch"] == 0 and int(saved["state_dict"]["iteration"]) == 2

    # `ckpt_path="last"` (what a resume command passes) finds last.ckpt, not the .tmp
    model, data, _ = build(Case("cgan"))
    trainer = make_trainer(
        max_epochs=3,
        limit_train_batches=2,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=-1)],
        plugins=[AtomicCheckpointIO()],
    )
    trainer.fit(model, datamodule=data, ckpt_path="last")
    assert trainer.ckpt_path == str(last)
    assert trainer.current_epoch == 3 and int(model.iteration) == 6  # 2 more epochs of 2
    assert torch.load(last, weights_only=False)["epoch"] == 2
    assert not tmp.exists(), "the next save of last.ckpt replaces the stale temporary file"


def test_a_failed_save_keeps_the_previous_file_and_removes_the_temporary(tmp_path):
    from gan_suite.utils import AtomicCheckpointIO

    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    class DiskFull:  # fails while torch.save is writing, as a full disk does
        def __reduce__(self):
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"epoch": 2, "w": torch.zeros(3), "x": DiskFull()}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_the_labelled_split_is_in_the_checkpoint_and_a_different_one_is_refused():
    from test_registry import TINY, _config, _instantiate

    def matchgan_data(**overrides):
        data = _instantiate(_config("matchgan")["data"], {**TINY["matchgan"].data, **overrides})
        data.setup("fit")
        return data

    data = matchgan_data()
    state = data.state_dict()
    labelled = data._labelled_mask
    assert 0 < len(state["labelled_keys"]) == labelled.sum() < len(labelled)
    matchgan_data().load_state_dict(state)  # the same options draw the same split
    with pytest.raises(ValueError, match="labelled examples.*labelled_list"):
        matchgan_data(seed=1).load_state_dict(state)


def test_rng_states_round_trip_through_a_checkpoint_and_other_world_sizes_warn():
    import random

    import numpy as np
    from test_registry import TINY

    from gan_suite.models.base import RNG_STATES_KEY
    from gan_suite.models.cgan import CGAN

    model = CGAN(**TINY["cgan"].model)
    torch.manual_seed(5)
    checkpoint: dict = {}
    model.on_save_checkpoint(checkpoint)
    want = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    saved = torch.load(_bytes(checkpoint), weights_only=True)  # loads without pickled objects
    assert len(saved[RNG_STATES_KEY]) == 1  # one process

    L.seed_everything(99, verbose=False)
    model.on_load_checkpoint(saved)
    assert torch.rand(1).item() != want[0][0].item(), "restored at train start, not at load"
    model.on_train_start()
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2]

    # a checkpoint of 2 processes resumed by 1: rank 0 continues rank 0's streams, with a warning
    two = {**saved, RNG_STATES_KEY: saved[RNG_STATES_KEY] * 2}
    with pytest.warns(UserWarning, match="RNG states of 2 process"):
        model.on_load_checkpoint(two)
    model.on_train_start()
    assert torch.equal(torch.rand(4), want[0])


def _bytes(obj):
    import io

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer
