"""BDL's K x N alternating schedule as a callback: it owns the phase (k, stage, n), switches
the module between its stages at epoch boundaries, writes the translated source set and the
pseudo labels under the run directory, and keeps all of it in the checkpoint.

The loop (BDL section 3.4, K = 2 and N = 3 in the paper)::

    M0                      M trained with the segmentation loss only          m0_epochs
    for k = 1..K:
        F(k)                F trained with the perceptual loss through M(k-1)  f_epochs
        M(k)                source re-translated with F(k) -> <run>/bdl/k<k>/translated/;
                            M trained on it: segmentation + adversarial        m_epochs
        for n = 1..N:
            SSL(k, n)       pseudo labels from the current M -> <run>/bdl/k<k>/pseudo<n>/;
                            M trained with segmentation + adversarial + SSL    ssl_epochs

``trainer.max_epochs`` must equal the schedule's length (checked at fit start). The next
stage is entered at the end of the previous epoch (before the checkpoint of that epoch is
written and before the next epoch's loader workers start), so a checkpoint always holds the
stage its next epoch trains in, and a resumed run continues in that stage with the same files.
After each stage that trains M, the target validation mIoU is measured, printed as a progress
line, logged as ``bdl/miou/<stage>`` and appended to ``<run>/bdl/progress.json``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Subset

from gan_suite.callbacks.pseudo_labels import (
    N_BINS,
    class_thresholds,
    prediction_histogram,
    threshold_predictions,
    write_image_png,
    write_label_png,
)
from gan_suite.utils import atomic_write


@dataclass(frozen=True)
class Step:
    """One stage of the loop: ``stage`` in M0/F/M/SSL, round ``k``, self-training round ``n``,
    its first epoch and its number of epochs."""

    stage: str
    k: int
    n: int
    start: int
    epochs: int

    @property
    def name(self) -> str:
        if self.stage == "M0":
            return "M0"
        return f"{self.stage}{self.k}" + (f".{self.n}" if self.stage == "SSL" else "")


def bdl_plan(
    K: int, N: int, m0_epochs: int, f_epochs: int, m_epochs: int, ssl_epochs: int
) -> list[Step]:
    """The stages of the K x N loop in order, with their epochs (a 0-epoch stage is skipped,
    except that M and SSL stages always follow their F: the files they need are written when
    they begin)."""
    steps: list[Step] = []
    epoch = 0

    def add(stage: str, k: int, n: int, epochs: int) -> None:
        nonlocal epoch
        if epochs > 0:
            steps.append(Step(stage, k, n, epoch, epochs))
            epoch += epochs

    add("M0", 0, 0, m0_epochs)
    for k in range(1, K + 1):
        add("F", k, 0, f_epochs)
        add("M", k, 0, m_epochs)
        for n in range(1, N + 1):
            add("SSL", k, n, ssl_epochs)
    return steps


class BDLSchedule(L.Callback):
    """BDL's K x N loop: stages, re-translation, pseudo labels, mIoU after each stage.

    Args:
        K: rounds of the bidirectional loop (2 in the paper).
        N: self-supervised rounds per loop round (3 in the paper).
        m0_epochs: epochs of M(0), the source-only segmentation model.
        f_epochs: epochs of the translator in each round.
        m_epochs: epochs of M on the translated source (segmentation + adversarial).
        ssl_epochs: epochs of each self-supervised round.
        pseudo_label_threshold: ``median`` (per class, the official rule, capped at
            ``threshold_cap``) or a fixed confidence in (0, 1) (e.g. 0.9).
        threshold_cap: cap of the per-class median thresholds (0.9).
        batch_size: batch size of re-translation and pseudo labelling.
        evaluate: measure the target validation mIoU after each stage that trains M.

    Raises:
        ValueError: bad arguments; at fit start, ``trainer.max_epochs`` differing from the
            schedule's length, or a model without BDL's stages.
    """

    def __init__(
        self,
        K: int = 2,
        N: int = 3,
        m0_epochs: int = 1,
        f_epochs: int = 1,
        m_epochs: int = 1,
        ssl_epochs: int = 1,
        pseudo_label_threshold: str | float = "median",
        threshold_cap: float = 0.9,
        batch_size: int = 8,
        evaluate: bool = True,
    ) -> None:
        if K < 0 or N < 0 or min(m0_epochs, f_epochs, m_epochs, ssl_epochs) < 0:
            raise ValueError("BDLSchedule: K, N and the stage epochs must be >= 0")
        if K > 0 and (f_epochs < 1 or m_epochs < 1):
            raise ValueError("BDLSchedule: with K >= 1, f_epochs and m_epochs must be >= 1")
        if pseudo_label_threshold != "median" and not 0 < float(pseudo_label_threshold) < 1:
            raise ValueError(
                f"pseudo_label_threshold={pseudo_label_threshold!r}: expected 'median' or a "
                "confidence in (0, 1)"
            )
        self.plan = bdl_plan(K, N, m0_epochs, f_epochs, m_epochs, ssl_epochs)
        if not self.plan:
            raise ValueError("BDLSchedule: the schedule has no epoch")
        self.pseudo_label_threshold = pseudo_label_threshold
        self.threshold_cap = threshold_cap
        self.batch_size = batch_size
        self.evaluate = evaluate
        self.current: Step | None = None
        self.translated_dir: str | None = None
        self.pseudo_dir: str | None = None
        self.thresholds: list[float] | None = None
        self.history: list[dict[str, Any]] = []

    @property
    def total_epochs(self) -> int:
        return self.plan[-1].start + self.plan[-1].epochs

    def _describe(self) -> str:
        return ", ".join(f"{s.name}: {s.epochs}" for s in self.plan)

    def step_at(self, epoch: int) -> Step:
        """The stage that trains in ``epoch`` (0-based)."""
        for step in self.plan:
            if step.start <= epoch < step.start + step.epochs:
                return step
        raise IndexError(f"epoch {epoch} is past the schedule's {self.total_epochs} epochs")

    # -- lifecycle ----------------------------------------------------------------------------
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not hasattr(pl_module, "enter_stage"):
            raise ValueError(
                f"BDLSchedule drives BDL's stages; {type(pl_module).__name__} has none"
            )
        if trainer.fast_dev_run:
            rank_zero_info("BDL: fast_dev_run: only the schedule's first stage runs")
        elif trainer.max_epochs != self.total_epochs:
            raise ValueError(
                f"trainer.max_epochs={trainer.max_epochs} but the BDL schedule lasts "
                f"{self.total_epochs} epochs ({self._describe()}); "
                f"set trainer.max_epochs: {self.total_epochs}"
            )
        if self.current is None:  # a fresh run: the first stage, no files yet
            self._enter(trainer, pl_module, self.step_at(trainer.current_epoch))
        else:  # resumed: the same stage with the same files
            self._apply(trainer, pl_module)
            rank_zero_info(
                f"BDL: resuming in stage {self.current.name} (epoch {trainer.current_epoch})"
            )

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.fast_dev_run:
            return
        epoch = trainer.current_epoch
        step = self.step_at(epoch)
        if epoch != step.start + step.epochs - 1:
            return
        self._finish(trainer, pl_module, step)
        if epoch + 1 < self.total_epochs:
            self._enter(trainer, pl_module, self.step_at(epoch + 1))

    # -- stages ------------------------------------------------------------------------------
    def _run_dir(self, trainer: L.Trainer) -> Path:
        return Path(trainer.default_root_dir) / "bdl"

    def _enter(self, trainer: L.Trainer, pl_module: L.LightningModule, step: Step) -> None:
        """Write what ``step`` needs, then switch the data and the module to it."""
        if step.stage == "F":
            self.translated_dir, self.pseudo_dir = None, None  # F learns from the real source
        elif step.stage == "M":
            folder = self._run_dir(trainer) / f"k{step.k}" / "translated"
            self._publish(trainer, folder, lambda d: self._translate(trainer, pl_module, d))
            self.translated_dir, self.pseudo_dir = str(folder), None
        elif step.stage == "SSL":
            folder = self._run_dir(trainer) / f"k{step.k}" / f"pseudo{step.n}"
            self._publish(trainer, folder, lambda d: self._pseudo_label(trainer, pl_module, d))
            self.pseudo_dir = str(folder)
        self.current = step
        self._apply(trainer, pl_module, enter=True)
        rank_zero_info(f"BDL: stage {step.name} for {step.epochs} epoch(s) from epoch {step.start}")

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule, enter: bool = False) -> None:
        """Point the data module at the current files and the module at the current stage
        (``enter``: a new stage; else a resumed one, which the module's checkpoint holds)."""
        dm = trainer.datamodule
        dm.use_translated_source(self.translated_dir)
        dm.use_pseudo_labels(self.pseudo_dir)
        step = self.current
        same = (pl_module.stage, pl_module.round_k, pl_module.round_n) == (
            step.stage,
            step.k,
            step.n,
        )
        if enter or not same:
            pl_module.enter_stage(step.stage, step.k, step.n, step.epochs)

    def _publish(self, trainer: L.Trainer, folder: Path, write) -> None:
        """Every rank writes its share into ``<folder>.partial``; rank 0 then renames it to
        ``folder`` (replacing an older one), so a complete folder is all a reader ever sees."""
        partial = folder.with_name(folder.name + ".partial")
        if trainer.is_global_zero:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        trainer.strategy.barrier("bdl_publish_start")
        write(partial)
        trainer.strategy.barrier("bdl_publish_written")
        if trainer.is_global_zero:
            shutil.rmtree(folder, ignore_errors=True)
            partial.rename(folder)
        trainer.strategy.barrier("bdl_publish_done")

    def _shard(self, trainer: L.Trainer, dataset) -> DataLoader:
        rank, world = trainer.global_rank, trainer.world_size
        return DataLoader(
            Subset(dataset, range(rank, len(dataset), world)),
            batch_size=self.batch_size,
            generator=torch.Generator(),  # iterating must not draw from the global stream
        )

    @torch.no_grad()
    def _translate(self, trainer: L.Trainer, pl_module: L.LightningModule, folder: Path) -> None:
        """F(k)(S) for every source training image -> ``folder/<stem>.png`` (at the trainer's
        precision: these images are M's training data, as F makes them in training)."""
        was_training = pl_module.training
        pl_module.eval()
        for batch in self._shard(trainer, trainer.datamodule.source_images()):
            with trainer.precision_plugin.forward_context():
                fake = pl_module(batch["image"].to(pl_module.device), "AtoB")
            for image, stem in zip(fake, batch["stem"]):
                write_image_png(folder / f"{stem}.png", image)
        pl_module.train(was_training)

    @torch.no_grad()
    def _pseudo_label(self, trainer: L.Trainer, pl_module: L.LightningModule, folder: Path) -> None:
        """M's confident predictions on every target training image -> ``folder/<stem>.png``.

        The per-class thresholds need M's predictions on the whole set before any label is
        written. While this rank's predictions (arg-max and confidence, 5 bytes a pixel) fit
        in ``PREDICTIONS_LIMIT_BYTES`` they are kept from the one pass over the set (the
        official code keeps them all); beyond, M runs a second pass. Both give the same files.
        """
        was_training = pl_module.training
        pl_module.eval()
        images = trainer.datamodule.target_images()
        n_classes = pl_module.hparams.n_classes

        def predictions():
            for batch in self._shard(trainer, images):
                with trainer.precision_plugin.forward_context():
                    logits = pl_module(batch["image"].to(pl_module.device), "segment")
                conf, label = F.softmax(logits.float(), dim=1).max(1)
                yield conf.cpu(), label.to(torch.uint8).cpu(), batch["stem"]

        kept: list | None = [] if self.pseudo_label_threshold == "median" else None
        if self.pseudo_label_threshold == "median":
            hist, nbytes = torch.zeros(n_classes, N_BINS, dtype=torch.float64), 0
            for conf, label, stems in predictions():
                hist += prediction_histogram(conf, label, n_classes)
                nbytes += conf.numel() * 5  # float32 confidence + uint8 label per pixel
                if kept is not None and nbytes <= self.PREDICTIONS_LIMIT_BYTES:
                    kept.append((conf, label, stems))
                else:  # too many to keep: a second pass writes the labels
                    kept = None
            hist = trainer.strategy.reduce(hist.to(pl_module.device), reduce_op="sum").cpu()
            thresholds = class_thresholds(hist, self.threshold_cap)
        else:
            thresholds = torch.full((n_classes,), float(self.pseudo_label_threshold))
        self.thresholds = [float(t) for t in thresholds]
        ignore = pl_module.hparams.ignore_index
        for conf, label, stems in kept or predictions():
            for labels, stem in zip(threshold_predictions(conf, label, thresholds, ignore), stems):
                write_label_png(folder / f"{stem}.png", labels)
        pl_module.train(was_training)

    #: the most bytes of M's kept target predictions per rank (else a second pass over the set)
    PREDICTIONS_LIMIT_BYTES = 2 * 2**30

    def _finish(self, trainer: L.Trainer, pl_module: L.LightningModule, step: Step) -> None:
        """After a stage that trained M: the target mIoU, printed, logged and recorded."""
        if step.stage == "F" or not self.evaluate:
            rank_zero_info(f"BDL: stage {step.name} done")
            return
        from gan_suite.callbacks.evaluation import Evaluation

        evaluation = next((c for c in trainer.callbacks if isinstance(c, Evaluation)), None)
        if evaluation is None:
            evaluation = Evaluation(
                feature="none", use_evaluator=False, n_images=10**9, every_n_epochs=0
            )
            evaluation.setup(trainer, pl_module, "fit")
        results = evaluation.evaluate(trainer, pl_module, "val")
        miou = float(results["target/miou"]["value"])
        record = {
            **asdict(step),
            "name": step.name,
            "epoch": trainer.current_epoch,
            "miou": miou,
            "iou": {
                k.split("/", 2)[-1]: v["value"]
                for k, v in results.items()
                if k.startswith("target/iou/")
            },
        }
        if step.stage == "SSL" and self.thresholds is not None:
            record["pseudo_label_thresholds"] = self.thresholds
        self.history.append(record)
        pl_module.log(f"bdl/miou/{step.name}", miou, rank_zero_only=True)
        rank_zero_info(
            f"BDL: stage {step.name} done (epoch {trainer.current_epoch}): target mIoU {miou:.4f}"
        )
        if trainer.is_global_zero:
            path = self._run_dir(trainer) / "progress.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps(self.history, indent=2)
            atomic_write(path, lambda p: p.write_text(text))

    # -- checkpoint ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "current": None if self.current is None else asdict(self.current),
            "translated_dir": self.translated_dir,
            "pseudo_dir": self.pseudo_dir,
            "thresholds": self.thresholds,
            "history": self.history,
            "plan": [asdict(s) for s in self.plan],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        plan = [Step(**s) for s in state_dict.get("plan", [])]
        if plan and plan != self.plan:
            raise ValueError(
                "the checkpoint's BDL schedule differs from this run's "
                f"({[s.name for s in plan]} vs {[s.name for s in self.plan]}); resume with the "
                "same K, N and stage epochs"
            )
        current = state_dict.get("current")
        self.current = None if current is None else Step(**current)
        self.translated_dir = state_dict.get("translated_dir")
        self.pseudo_dir = state_dict.get("pseudo_dir")
        self.thresholds = state_dict.get("thresholds")
        self.history = list(state_dict.get("history", []))
