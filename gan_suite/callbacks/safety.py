"""Run safety: a resumable checkpoint on SIGTERM, ``last.ckpt`` kept fresh, non-finite losses.

A cluster sends SIGTERM on preemption or at the end of a time limit. Lightning 2.6 catches it
(``trainer.received_sigterm``) and raises :class:`SIGTERMException` (a ``SystemExit`` with code
0) at the next batch or epoch boundary, where the loop state is consistent; every callback's
``on_exception`` sees it. :class:`RunSafety` then writes ``last.ckpt`` into the run's
checkpoints folder (every rank takes part, rank 0 writes), prints where it is and the command
that resumes, and turns the exit code into 143 (128 + SIGTERM), as a shell reports a process
killed by the signal.

Resuming mid-epoch: Lightning restores the loop counters and runs the epoch's remaining
batches, but the suite's data loaders are not resumable, so those batches are drawn afresh by
the sampler (an image of the epoch may be seen twice and another not at all); Lightning warns
"not resumable" once. The weights, optimizers, schedules, the model's iteration counter and the
callbacks' state (history buffer, K x N schedule) are exact.

Between signals, ``last.ckpt`` is refreshed at the end of every ``every_n_epochs`` epochs and,
on long epochs, every ``every_n_minutes`` minutes (at the start of a batch, so the model's
iteration counter and per-iteration schedules agree with the loop counters; after resuming
from such a file the logger's step is one batch ahead).

Non-finite losses are caught by ``GANModule.log_terms`` before backward. With
``on_nonfinite="stop"`` the run writes ``nonfinite-iter<I>-step<N>.ckpt`` (the weights before
the bad step) beside ``last.ckpt`` and stops with the error, which names the term, the
iteration, the global step and that file. With ``"skip"`` the step takes no backward and no
optimizer step, the count is logged as ``train/skipped_nonfinite``, and the run stops as above
once more than ``max_skipped`` steps were skipped.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn

SIGTERM_EXIT_CODE = 128 + 15  # what a shell reports for a process ended by SIGTERM


class RunSafety(Checkpoint):
    """Resumable checkpoints on SIGTERM, a fresh ``last.ckpt``, and a non-finite loss policy.

    List it *after* the ModelCheckpoint in ``trainer.callbacks``: Lightning takes the first
    checkpoint callback as ``trainer.checkpoint_callback`` (best/last paths), and both run
    after the model's ``on_train_epoch_end`` (the per-epoch LR step), so an epoch-end
    ``last.ckpt`` holds the stepped schedules.

    Args:
        every_n_epochs: refresh ``last.ckpt`` at the end of every n-th training epoch
            (0 = never; the ModelCheckpoint's own saves still happen).
        every_n_minutes: also refresh it when this many minutes (wall clock, rank 0's) have
            passed since the last save, checked at the start of each batch (None = never).
        on_nonfinite: ``"stop"``: a NaN/inf training loss stops the run after writing
            ``nonfinite-iter<I>-step<N>.ckpt``; ``"skip"``: that phase takes no step.
        max_skipped: with ``"skip"``, the run stops as with ``"stop"`` at the
            ``max_skipped + 1``-th non-finite step (counted over the whole run, resumes too).
        exit_code: process exit code after a SIGTERM checkpoint (default 128 + 15 = 143).

    Raises:
        ValueError: an option out of range (named in the message).
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        every_n_minutes: float | None = 30.0,
        on_nonfinite: Literal["stop", "skip"] = "stop",
        max_skipped: int = 10,
        exit_code: int = SIGTERM_EXIT_CODE,
    ) -> None:
        super().__init__()
        if every_n_epochs < 0:
            raise ValueError(f"RunSafety every_n_epochs={every_n_epochs}: expected >= 0")
        if every_n_minutes is not None and every_n_minutes <= 0:
            raise ValueError(
                f"RunSafety every_n_minutes={every_n_minutes}: expected > 0 minutes or null"
            )
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"RunSafety on_nonfinite={on_nonfinite!r}: expected 'stop' or 'skip'")
        if max_skipped < 0:
            raise ValueError(f"RunSafety max_skipped={max_skipped}: expected >= 0")
        self.every_n_epochs = every_n_epochs
        self.every_n_minutes = every_n_minutes
        self.on_nonfinite = on_nonfinite
        self.max_skipped = max_skipped
        self.exit_code = exit_code
        self.skipped_nonfinite = 0
        self._last_save = time.monotonic()

    # -- where and how ---------------------------------------------------------------------
    @staticmethod
    def checkpoint_dir(trainer: L.Trainer) -> Path:
        """The run's checkpoints folder: the first ModelCheckpoint's, else
        ``<default_root_dir>/checkpoints``."""
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath:
                return Path(cb.dirpath)
        return Path(trainer.default_root_dir) / "checkpoints"

    def _save_last(self, trainer: L.Trainer) -> Path:
        path = self.checkpoint_dir(trainer) / "last.ckpt"
        for cb in trainer.checkpoint_callbacks:
            if (
                isinstance(cb, ModelCheckpoint)
                and cb.save_last
                and Path(cb.dirpath or "") == path.parent
            ):
                # before the save, as ModelCheckpoint does: the path is part of its saved state,
                # and a later save of its own then overwrites this file instead of last-v1.ckpt
                cb.last_model_path = str(path)
        # full state (weights_only=False); every rank calls it; rank 0 writes
        trainer.save_checkpoint(path, weights_only=False)
        self._last_save = time.monotonic()
        return path

    # -- last.ckpt kept fresh --------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        first = trainer.checkpoint_callback
        if first is self and any(isinstance(c, ModelCheckpoint) for c in trainer.callbacks):
            raise ValueError(
                "trainer.callbacks: list gan_suite.callbacks.RunSafety after the ModelCheckpoint "
                "(Lightning takes the first checkpoint callback as trainer.checkpoint_callback)"
            )
        if stage == "fit":
            pl_module.nonfinite_handler = self

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if getattr(pl_module, "nonfinite_handler", None) is self:
            pl_module.nonfinite_handler = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_save = time.monotonic()

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.every_n_minutes is None or trainer.sanity_checking or trainer.fast_dev_run:
            return
        due = time.monotonic() - self._last_save >= 60.0 * self.every_n_minutes
        # rank 0's clock decides, so that every rank enters save_checkpoint together
        if trainer.strategy.broadcast(due) and batch_idx > 0:
            self._save_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_epochs < 1 or trainer.fast_dev_run:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        path = str(self.checkpoint_dir(trainer) / "last.ckpt")
        for cb in trainer.checkpoint_callbacks:
            saved_at = getattr(cb, "_last_global_step_saved", None)
            if getattr(cb, "last_model_path", None) == path and saved_at == trainer.global_step:
                return  # the ModelCheckpoint wrote last.ckpt at this very step (its n-th epoch)
        self._save_last(trainer)

    # -- non-finite losses -----------------------------------------------------------------
    def skip_step(self, pl_module: L.LightningModule, bad_terms: list[str]) -> bool:
        """Called by ``GANModule.log_terms`` with the names of the non-finite training terms:
        whether the phase skips its step (counted, logged) rather than stopping the run."""
        if self.on_nonfinite != "skip" or self.skipped_nonfinite >= self.max_skipped:
            return False
        self.skipped_nonfinite += 1
        rank_zero_warn(
            f"non-finite loss term(s) {', '.join(bad_terms)} at iteration "
            f"{int(pl_module.iteration)} (global step {pl_module.global_step}): step skipped "
            f"({self.skipped_nonfinite} of at most {self.max_skipped}, RunSafety max_skipped)"
        )
        pl_module.log("train/skipped_nonfinite", float(self.skipped_nonfinite), on_step=True)
        return True

    # -- failures --------------------------------------------------------------------------
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            if isinstance(exception, SIGTERMException):
                exception.code = self.exit_code
            return
        if isinstance(exception, SIGTERMException):
            self._on_sigterm(trainer, exception)
        elif isinstance(exception, FloatingPointError) and getattr(exception, "all_ranks", False):
            self._on_nonfinite(trainer, pl_module, exception)

    def _on_sigterm(self, trainer: L.Trainer, exception: SIGTERMException) -> None:
        # SIGTERMException is a SystemExit with code None (= exit 0): a scheduler or a shell
        # script must see that the run did not finish
        exception.code = self.exit_code
        if trainer.sanity_checking:
            # nothing trained since the start (or the restored checkpoint): keep what is on disk
            if trainer.is_global_zero:
                print("[gan-suite] SIGTERM before training started: no checkpoint written",
                      file=sys.stderr, flush=True)  # fmt: skip
            return
        path = self._save_last(trainer)
        if trainer.is_global_zero:
            print(
                f"[gan-suite] SIGTERM: saved a resumable checkpoint (epoch {trainer.current_epoch},"
                f" global step {trainer.global_step}) to {path}; resume with: "
                f"{resume_command(trainer, path)}",
                file=sys.stderr,
                flush=True,
            )

    def _on_nonfinite(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: FloatingPointError
    ) -> None:
        iteration = int(getattr(pl_module, "iteration", -1))
        path = (
            self.checkpoint_dir(trainer)
            / f"nonfinite-iter{iteration}-step{trainer.global_step}.ckpt"
        )
        # full state (weights_only=False); every rank raised together (log_terms syncs), so all save
        trainer.save_checkpoint(path, weights_only=False)
        weights_ok = all(p.isfinite().all() for p in pl_module.parameters())
        note = f"the weights before this step are saved in {path}"
        if not weights_ok:
            note += " (some weights are already NaN/inf: resume from an earlier checkpoint)"
        if self.skipped_nonfinite:
            note += f"; {self.skipped_nonfinite} earlier non-finite steps were skipped"
        exception.add_note(note)
        if trainer.is_global_zero:
            print(f"[gan-suite] {exception.args[0]}; {note}", file=sys.stderr, flush=True)

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"skipped_nonfinite": self.skipped_nonfinite}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_nonfinite = int(state_dict.get("skipped_nonfinite", 0))


# options that pick the checkpoint or the run directory: the resume command sets its own
_RUN_OPTIONS = ("--ckpt_path", "--run_id", "--resume")


def resume_command(trainer: L.Trainer, ckpt: Path) -> str:
    """The command that resumes this run from ``ckpt``: ``gan-suite fit --resume <run_dir>``
    for a run directory's ``last.ckpt``; else the ``gan-suite fit`` command line
    of this process with ``--ckpt_path`` (its own ``--ckpt_path``, ``--run_id`` and ``--resume``
    dropped); else a ``fit`` on the run directory's resolved ``config.yaml``."""
    run_dir = Path(ckpt).parent.parent
    if Path(ckpt).name == "last.ckpt" and (run_dir / "config.yaml").is_file():
        # the run's own config.yaml holds every option it ran with
        return shlex.join(["gan-suite", "fit", "--resume", str(run_dir)])
    argv = list(sys.argv[1:])
    if "fit" not in argv:
        config = Path(trainer.default_root_dir) / "config.yaml"
        return shlex.join(["gan-suite", "fit", "--config", str(config), "--ckpt_path", str(ckpt)])
    kept: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
            continue
        if arg in _RUN_OPTIONS:
            skip_next = True
            continue
        if arg.startswith(tuple(f"{o}=" for o in _RUN_OPTIONS)):
            continue
        kept.append(arg)
    return shlex.join(["gan-suite", *kept, "--ckpt_path", str(ckpt)])
