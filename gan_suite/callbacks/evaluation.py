"""One evaluation room: FID/KID and task metrics of every paper, every N epochs and at ``test``.

The callback owns the metric state, the evaluator network, DDP sharding and the reports; the
LightningModule only says what it produced for a batch, through the protocol of
:mod:`gan_suite.eval.protocol`: ``evaluation_outputs(batch) -> list[record]``. Scorers are
chosen by record type (:mod:`gan_suite.eval.scorers`): translations, class-conditional samples,
instance-conditioned samples, attribute-conditioned translations, segmentations.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn
from torch.utils.data import DataLoader, Subset

from gan_suite.eval.distributed import reduced_over_ranks
from gan_suite.eval.features import EvaluatorFeatures, make_feature_extractor
from gan_suite.eval.fid import FIDKID
from gan_suite.eval.metrics import TranslationMetrics
from gan_suite.eval.protocol import (
    AttributeTranslation,
    ClassSamples,
    InstanceSamples,
    SegmentationOutput,
    TaggedVectors,
    Translation,
)
from gan_suite.eval.scorers import (
    AttributeScorer,
    ClassScorer,
    InstanceScorer,
    SegmentationScorer,
)
from gan_suite.eval.tags import TagScorer
from gan_suite.utils import atomic_write


class Evaluation(L.Callback):
    """Evaluate what any paper generates: one callback, scorers chosen by record type.

    Evaluates the first ``n_images`` test items of the data module (all of them at most),
    sharded over DDP ranks without padding so that every image counts once whatever the
    number of processes. For each batch the model returns records
    (``evaluation_outputs(batch)``, :mod:`gan_suite.eval.protocol`); each record's name gets a
    scorer. Logs ``val/<name>/<metric>`` every ``every_n_epochs`` epochs and
    ``test/<name>/<metric>`` at ``test``, and after ``test`` writes ``metrics.json`` and
    ``report.html`` in the run directory (rank 0); ``metrics.json``'s ``extra.evaluator``
    names the evaluator checkpoint and its own held-out accuracy.

    Args:
        feature: FID/KID features: ``evaluator`` (the dataset's evaluator network; CPU runs and
            the embedded data), ``inception`` (the standard FID InceptionV3, from a local
            weights file), ``none``, or ``auto``: the evaluator where one exists (labelled
            data or ``evaluator_checkpoint``), else inception.
        inception_weights: path of the InceptionV3 weights file (else the torch hub cache or
            ``$GAN_SUITE_INCEPTION_WEIGHTS``).
        evaluator_checkpoint: an evaluator trained with ``experiments/evaluator.yaml``;
            default: the data's cached evaluator, trained on first use
            (:func:`~gan_suite.eval.judge.resolve_evaluator`).
        use_evaluator: measure what needs the evaluator (label/object preservation, class
            accuracy, class agreement, attribute accuracy).
        n_images: evaluated test items (also the number of real images).
        every_n_epochs: evaluation interval during fit (0: only at test).
        kid_subset_size: KID subset size (clipped to the number of images).
        batch_size: batch size of the evaluation loop.

    Raises:
        ValueError: ``feature='evaluator'`` on data without an evaluator; a class, instance or
            attribute record while no evaluator is available.
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
        self.metrics: dict[str, dict[str, nn.Module]] = {"val": {}, "test": {}}
        self.evaluator: nn.Module | None = None
        self.extractor: nn.Module | None = None
        self.last_results: dict[str, dict] = {}
        self._real_done: set[str] = set()  # stages whose real features are kept
        self._validation_unit: torch.Tensor | None = None

    # -- set-up ---------------------------------------------------------------------------
    def _load_evaluator(self, trainer: L.Trainer) -> nn.Module | None:
        from gan_suite.eval.judge import fill_evaluator_cache, has_evaluator, resolve_evaluator

        dm = trainer.datamodule
        if trainer.world_size > 1 and not self.evaluator_checkpoint and has_evaluator(dm):
            # A Trainer nested in a DDP process would join the outer process group and
            # deadlock: rank 0 trains a missing evaluator in a clean subprocess, the others
            # wait, then every rank reads the cached checkpoint.
            if trainer.is_global_zero:
                fill_evaluator_cache(dm)
            trainer.strategy.barrier("gan_suite_evaluator")
        return resolve_evaluator(dm, self.evaluator_checkpoint)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        wants_evaluator = self.use_evaluator or self.feature in {"auto", "evaluator"}
        if self.evaluator is None and wants_evaluator:
            self.evaluator = self._load_evaluator(trainer)
            if self.evaluator is not None:
                self.evaluator.to(pl_module.device)
        if self.feature == "auto":
            self.feature = "evaluator" if self.evaluator is not None else "inception"
        if self.feature == "inception" and self.inception_weights is None:
            self._ensure_inception_weights(trainer)
        if self.extractor is None and self.feature != "none":
            if self.feature == "evaluator":
                if self.evaluator is None:
                    raise ValueError(
                        "Evaluation(feature='evaluator') needs an evaluator: this dataset has no "
                        "labels (scenes.json or class labels); pass evaluator_checkpoint=... or "
                        "feature='inception'"
                    )
                net = EvaluatorFeatures(self.evaluator)
            else:
                net = None
            self.extractor = make_feature_extractor(
                self.feature, evaluator=net, weights_path=self.inception_weights
            ).to(pl_module.device)

    fid_skipped: str | None = None  # why FID/KID are not computed, for metrics.json

    def _ensure_inception_weights(self, trainer: L.Trainer) -> None:
        """Find the FID InceptionV3 weights, else fetch them once into the torch hub cache;
        where that fails (no network), train on without FID/KID and say so. Never loses a run
        to a missing metric. An explicit ``inception_weights`` path is never replaced."""
        from gan_suite.eval.features import (
            INCEPTION_WEIGHTS_ENV,
            InceptionWeightsNotFoundError,
            fetch_inception_weights,
            find_inception_weights,
            hub_inception_path,
        )

        try:
            find_inception_weights()
            return
        except InceptionWeightsNotFoundError:
            pass
        error = None
        if trainer.is_global_zero:
            try:
                path = fetch_inception_weights()
                rank_zero_info(f"[gan-suite] FID InceptionV3 weights fetched into {path}")
            except (OSError, ValueError) as err:
                error = err
        if trainer.world_size > 1:
            trainer.strategy.barrier("gan_suite_inception")
        try:
            find_inception_weights()
            return
        except InceptionWeightsNotFoundError:
            pass
        self.fid_skipped = (
            f"FID InceptionV3 weights not on disk and could not be fetched ({error or 'no file'})"
        )
        rank_zero_warn(
            f"{self.fid_skipped}: FID/KID are skipped in this run; every other metric is "
            f"computed. To enable them, put {hub_inception_path().name} at "
            f"{hub_inception_path()} (or point ${INCEPTION_WEIGHTS_ENV} or "
            "Evaluation(inception_weights=...) at it) and run `gan-suite test --ckpt_path ...`."
        )
        self.feature = "none"

    def _fidkid(self) -> FIDKID | None:
        if self.extractor is None:
            return None
        return FIDKID(self.extractor, kid_subset_size=self.kid_subset_size)

    def _judge(self, record) -> nn.Module:
        if self.evaluator is None or not self.use_evaluator:
            raise ValueError(
                f"{type(record).__name__} records ({record.name!r}) are judged by the data's "
                "evaluator, and there is none: use class-labelled data, pass "
                "evaluator_checkpoint=..., or set use_evaluator: true"
            )
        return self.evaluator

    @staticmethod
    def _check_attribute_judge(judge: nn.Module, record: AttributeTranslation) -> None:
        """The judge of attribute translations is an attribute evaluator of the same
        attributes, in the same order (``hparams.attribute_names``)."""
        names = getattr(judge, "hparams", {}).get("attribute_names")
        where = getattr(judge, "checkpoint_path", None) or type(judge).__name__
        n = record.target_attributes.shape[1]
        if record.single_choice:  # one-hot classes: a class evaluator of as many classes
            n_classes = getattr(judge, "hparams", {}).get("n_classes")
            if names is not None or n_classes != n:
                raise ValueError(
                    f"translations to one of {n} classes ({record.name!r}) need a class "
                    f"evaluator of {n} classes; the evaluator {where!r} has "
                    f"{'attributes ' + str(names) if names else f'{n_classes} classes'}"
                )
            return
        if names is None:
            raise ValueError(
                f"attribute translations ({record.name!r}) need an attribute evaluator, but "
                f"the evaluator {where!r} is a class evaluator (no attribute_names): use "
                "attribute-labelled data (LabelledDataModule with attributes=[...], or "
                "CelebA), whose evaluator is trained on first use, or pass "
                "evaluator_checkpoint=... of an attribute evaluator"
            )
        wanted = record.attribute_names or names
        if list(wanted) != list(names) or n != len(names):
            raise ValueError(
                f"attribute translations ({record.name!r}) ask for {n} attributes "
                f"{list(wanted)}, but the evaluator {where!r} judges {list(names)}"
            )

    def _scorer_for(self, record, stage: str) -> nn.Module:
        """The scorer of ``record``'s name in ``stage``, created on first sight by its type."""
        if record.name in self.metrics[stage]:
            return self.metrics[stage][record.name]
        if isinstance(record, Translation):
            evaluator = self.evaluator if self.use_evaluator else None
            n_classes = int(evaluator.hparams["n_classes"]) if evaluator is not None else 0
            scorer = TranslationMetrics(self._fidkid(), evaluator, n_classes)
        elif isinstance(record, ClassSamples):
            judge = self._judge(record)
            scorer = ClassScorer(judge, int(judge.hparams["n_classes"]), self._fidkid())
            scorer.class_names = record.class_names
            scorer.parzen_request = record.parzen_samples_per_class
        elif isinstance(record, InstanceSamples):
            scorer = InstanceScorer(self._judge(record), self._fidkid())
        elif isinstance(record, AttributeTranslation):
            judge = self._judge(record)
            self._check_attribute_judge(judge, record)
            scorer = AttributeScorer(
                judge,
                self._fidkid(),
                record.target_attributes.shape[1],
                single_choice=record.single_choice,
            )
            scorer.names = record.attribute_names
        elif isinstance(record, SegmentationOutput):
            scorer = SegmentationScorer(record)
        elif isinstance(record, TaggedVectors):
            scorer = TagScorer()
        else:
            raise TypeError(
                f"evaluation_outputs returned a {type(record).__name__}: expected a record of "
                "gan_suite.eval.protocol"
            )
        self.metrics[stage][record.name] = scorer
        return scorer

    def _subset(self, trainer: L.Trainer, split: str) -> tuple[Subset, bool]:
        """This rank's share of the first ``n_images`` items of ``split``, and whether the
        shares are disjoint (sharded: the scorers then reduce over ranks)."""
        dm = trainer.datamodule
        attr = "test_set" if split == "test" else "val_set"
        if getattr(dm, attr, None) is None:
            dm.setup("test" if split == "test" else "validate")
        dataset = getattr(dm, attr)
        n = min(self.n_images, len(dataset))
        if n < trainer.world_size:
            # fewer items than ranks: every rank scores all of them on its own (an empty
            # shard could not take part in the metrics' collective compute)
            return Subset(dataset, range(n)), False
        # every rank takes a disjoint stride of the first n items: no padding, no duplicates
        return Subset(dataset, range(trainer.global_rank, n, trainer.world_size)), True

    def _validation_images_unit(self, trainer: L.Trainer) -> torch.Tensor:
        """The first ``n_images`` validation images as (N, D) pixels in [0, 1], every rank
        (Parzen's bandwidth is chosen on them); read once a run."""
        if self._validation_unit is None:
            dm = trainer.datamodule
            if getattr(dm, "val_set", None) is None:
                dm.setup("validate")
            n = min(self.n_images, len(dm.val_set))
            images = torch.stack([torch.as_tensor(dm.val_set[i]["image"]) for i in range(n)])
            unit = images if getattr(dm, "normalize", "tanh") == "unit" else (images + 1) / 2
            self._validation_unit = unit.float().flatten(1)
        return self._validation_unit

    # -- the evaluation -----------------------------------------------------------------
    @torch.no_grad()
    def evaluate(
        self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str = "test"
    ) -> dict[str, dict]:
        """Evaluate the first ``n_images`` items of the ``stage`` split (``val``: the
        validation split, ``test``: the test split) and return ``{"<name>/<metric>": {...}}``."""
        was_training = pl_module.training
        pl_module.eval()
        paired = bool(getattr(trainer.datamodule, "ground_truth_pairs", False))
        subset, sharded = self._subset(trainer, stage)
        with_real = stage not in self._real_done
        for batch in DataLoader(subset, batch_size=self.batch_size, generator=torch.Generator()):
            batch = {
                k: v.to(pl_module.device) if isinstance(v, torch.Tensor) else v
                for k, v in batch.items()
            }
            for record in pl_module.evaluation_outputs(batch):
                if isinstance(record, Translation) and not paired:
                    record.paired_target = None  # aligned by order only, not a true pair
                scorer = self._scorer_for(record, stage).to(pl_module.device)
                scorer.update(record, with_real=with_real)
        self._real_done.add(stage)  # real features are computed once per run and kept
        results = {}
        for name, scorer in sorted(self.metrics[stage].items()):
            with reduced_over_ranks(scorer, sharded):
                entries = scorer.compute()
            if isinstance(scorer, ClassScorer) and scorer.parzen_request > 0:
                with reduced_over_ranks(scorer, sharded):
                    entries.update(
                        scorer.parzen(
                            pl_module.sample_classes,
                            self._validation_images_unit(trainer),
                            score_validation=stage != "test",
                        )
                    )
            for metric, info in entries.items():
                results[f"{name}/{metric}"] = info
            if isinstance(scorer, TagScorer) and stage == "test" and trainer.is_global_zero:
                tsv = Path(trainer.default_root_dir) / "tags.tsv"
                atomic_write(tsv, lambda p, text=scorer.tags_table(): p.write_text(text))
            scorer.reset()
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
        self._log(pl_module, "val", self.evaluate(trainer, pl_module, "val"))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        results = self.evaluate(trainer, pl_module, "test")
        self._log(pl_module, "test", results)
        if trainer.is_global_zero:
            self._write_reports(trainer, pl_module, results)

    def _write_reports(self, trainer: L.Trainer, pl_module, results: dict[str, dict]) -> None:
        from gan_suite.eval.evaluator import evaluator_summary
        from gan_suite.eval.report import write_run_reports

        dm = trainer.datamodule
        dataset = getattr(dm, "root", None) or getattr(dm, "data_dir", None)
        extra = {
            "feature": self.feature,
            "epoch": trainer.current_epoch,
            "iteration": int(getattr(pl_module, "iteration", trainer.global_step)),
        }
        # the judge's own held-out accuracy beside the numbers it judges
        if self.fid_skipped:
            extra["fid_skipped"] = self.fid_skipped
        if trainer.ckpt_path is None and int(getattr(pl_module, "iteration", 1)) == 0:
            extra["untrained"] = True  # `gan-suite test` without --ckpt_path
        judge = evaluator_summary(self.evaluator)  # None: no evaluator, or no known checkpoint
        if judge is not None:
            extra["evaluator"] = judge
        write_run_reports(
            trainer,
            results,
            model=type(pl_module).__name__,
            dataset=str(dataset or getattr(dm, "source", "")),
            extra=extra,
        )
