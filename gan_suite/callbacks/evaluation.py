"""FID/KID and task metrics during training (every N epochs) and at ``test``.

The callback owns the metric state; the LightningModule only says what it generated for a
batch, through ``evaluation_translations(batch) -> list[Translation]``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from gan_suite.eval.features import make_feature_extractor
from gan_suite.eval.fid import FIDKID
from gan_suite.eval.metrics import TranslationMetrics

_DISTRIBUTED_ENV = (
    "LOCAL_RANK",
    "RANK",
    "WORLD_SIZE",
    "NODE_RANK",
    "GROUP_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def _train_evaluator_in_subprocess(root: Path) -> None:
    """``load_or_train_evaluator(root)`` in a fresh single-process Python (cache hit: instant)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _DISTRIBUTED_ENV and not k.startswith(("TORCHELASTIC_", "PL_"))
    }
    code = (
        "import sys; from gan_suite.eval.evaluator import load_or_train_evaluator as f; "
        "f(sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(root)], env=env, check=True)


class _EvaluatorFeatures(nn.Module):
    """The evaluator's penultimate features as an (N, D) feature net."""

    def __init__(self, evaluator: nn.Module) -> None:
        super().__init__()
        self.evaluator = evaluator

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.evaluator.features(images)


class Evaluation(L.Callback):
    """Evaluate translations with FID/KID, paired PSNR/SSIM, label and object preservation.

    Evaluates the first ``n_images`` test items of the data module (all of them at most),
    sharded over DDP ranks without padding so that every image counts once whatever the
    number of processes. Logs ``val/<direction>/<metric>`` every ``every_n_epochs`` epochs
    and ``test/<direction>/<metric>`` at ``test``, and after ``test`` writes ``metrics.json``
    and ``report.html`` in the run directory (rank 0).

    Args:
        feature: FID/KID features: ``evaluator`` (the dataset's evaluator network; CPU runs and
            the embedded data), ``inception`` (the standard FID InceptionV3, from a local
            weights file), ``none``, or ``auto``: the evaluator where one exists (labelled
            data or ``evaluator_checkpoint``), else inception.
        inception_weights: path of the InceptionV3 weights file (else the torch hub cache or
            ``$GAN_SUITE_INCEPTION_WEIGHTS``).
        evaluator_checkpoint: an evaluator trained with ``experiments/evaluator.yaml`` for
            label/object preservation and evaluator features; default: the cached evaluator
            of the embedded data, trained on first use.
        use_evaluator: measure label and object preservation (needs labels/masks in the data).
        n_images: evaluated test items per direction (also the number of real images).
        every_n_epochs: evaluation interval during fit (0: only at test).
        kid_subset_size: KID subset size (clipped to the number of images).
        batch_size: batch size of the evaluation loop.
    """

    def __init__(
        self,
        feature: str = "auto",
        inception_weights: str | None = None,
        evaluator_checkpoint: str | None = None,
        use_evaluator: bool = True,
        n_images: int = 200,
        every_n_epochs: int = 1,
        kid_subset_size: int = 100,
        batch_size: int = 50,
    ) -> None:
        if feature not in {"auto", "evaluator", "inception", "none"}:
            raise ValueError(
                f"feature={feature!r}: expected 'auto', 'evaluator', 'inception' or 'none'"
            )
        self.feature = feature
        self.inception_weights = inception_weights
        self.evaluator_checkpoint = evaluator_checkpoint
        self.use_evaluator = use_evaluator
        self.n_images = n_images
        self.every_n_epochs = every_n_epochs
        self.kid_subset_size = kid_subset_size
        self.batch_size = batch_size
        self.metrics: dict[str, TranslationMetrics] = {}
        self.evaluator: nn.Module | None = None
        self.extractor: nn.Module | None = None
        self.last_results: dict[str, dict] = {}
        self._real_done = False

    # -- set-up ---------------------------------------------------------------------------
    def _load_evaluator(self, trainer: L.Trainer) -> nn.Module | None:
        from gan_suite.eval.evaluator import load_evaluator, load_or_train_evaluator

        if self.evaluator_checkpoint:
            return load_evaluator(self.evaluator_checkpoint)
        dm = trainer.datamodule
        if getattr(dm, "labels", None) is None:
            return None  # no labelled data: no evaluator
        if trainer.world_size > 1:
            # A Trainer nested in a DDP process would join the outer process group and
            # deadlock: rank 0 trains a missing evaluator in a clean subprocess, the others
            # wait, then every rank reads the cached checkpoint.
            if trainer.is_global_zero:
                _train_evaluator_in_subprocess(dm.root)
            trainer.strategy.barrier("gan_suite_evaluator")
        return load_or_train_evaluator(dm.root)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        wants_evaluator = self.use_evaluator or self.feature in {"auto", "evaluator"}
        if self.evaluator is None and wants_evaluator:
            self.evaluator = self._load_evaluator(trainer)
            if self.evaluator is not None:
                self.evaluator.to(pl_module.device)
        if self.feature == "auto":
            self.feature = "evaluator" if self.evaluator is not None else "inception"
        if self.extractor is None and self.feature != "none":
            if self.feature == "evaluator":
                if self.evaluator is None:
                    raise ValueError(
                        "Evaluation(feature='evaluator') needs an evaluator: this dataset has no "
                        "labels (scenes.json); pass evaluator_checkpoint=... or "
                        "feature='inception'"
                    )
                net = _EvaluatorFeatures(self.evaluator)
            else:
                net = None
            self.extractor = make_feature_extractor(
                self.feature, evaluator=net, weights_path=self.inception_weights
            ).to(pl_module.device)

    def _metrics_for(self, direction: str) -> TranslationMetrics:
        if direction not in self.metrics:
            fidkid = (
                FIDKID(self.extractor, kid_subset_size=self.kid_subset_size)
                if self.extractor is not None
                else None
            )
            evaluator = self.evaluator if self.use_evaluator else None
            n_classes = int(evaluator.hparams["n_classes"]) if evaluator is not None else 0
            self.metrics[direction] = TranslationMetrics(fidkid, evaluator, n_classes)
        return self.metrics[direction]

    def _loader(self, trainer: L.Trainer) -> DataLoader:
        dm = trainer.datamodule
        if dm.test_set is None:
            dm.setup("test")
        n = min(self.n_images, len(dm.test_set))
        # every rank takes a disjoint stride of the first n items: no padding, no duplicates
        indices = range(trainer.global_rank, n, trainer.world_size)
        return DataLoader(Subset(dm.test_set, indices), batch_size=self.batch_size)

    # -- the evaluation -----------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, dict]:
        """Run the evaluation loop and return ``{"<direction>/<metric>": {...}}``."""
        was_training = pl_module.training
        pl_module.eval()
        paired = bool(getattr(trainer.datamodule, "ground_truth_pairs", False))
        for batch in self._loader(trainer):
            batch = {
                k: v.to(pl_module.device) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()
            }
            for t in pl_module.evaluation_translations(batch):
                if not paired:
                    t.paired_target = None  # aligned by order only, not a true pair
                m = self._metrics_for(t.direction).to(pl_module.device)
                m.update(t, with_real=not self._real_done)
        self._real_done = True  # real features are computed once per run and kept
        results = {}
        for direction, m in sorted(self.metrics.items()):
            for name, info in m.compute().items():
                results[f"{direction}/{name}"] = info
            m.reset()
        pl_module.train(was_training)
        self.last_results = results
        return results

    def _log(self, pl_module: L.LightningModule, prefix: str, results: dict[str, dict]) -> None:
        for key, info in results.items():
            pl_module.log(f"{prefix}/{key}", float(info["value"]), rank_zero_only=True)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.every_n_epochs <= 0:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        self._log(pl_module, "val", self.evaluate(trainer, pl_module))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = self.evaluate(trainer, pl_module)
        self._log(pl_module, "test", results)
        if trainer.is_global_zero:
            self._write_reports(trainer, pl_module, results)

    def _write_reports(self, trainer: L.Trainer, pl_module, results: dict[str, dict]) -> None:
        from gan_suite.eval.report import write_run_reports

        write_run_reports(
            trainer,
            results,
            model=type(pl_module).__name__,
            dataset=str(getattr(trainer.datamodule, "root", "")),
            extra={
                "feature": self.feature,
                "epoch": trainer.current_epoch,
                "global_step": trainer.global_step,
            },
        )
