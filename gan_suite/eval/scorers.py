"""Scorers of the evaluation protocol, one per record type of :mod:`gan_suite.eval.protocol`.

Each scorer accumulates over the evaluated batches of one stage and returns the metrics.json
entries ``{metric: {"value": ..., "n_images": ..., ...}}``. Counts are summed over DDP ranks at
``compute`` (the callback shards the images without padding), and FID/KID states are gathered by
torchmetrics, so the numbers do not depend on the number of processes. ``compute`` is
collective: call it on every rank. ``reset`` forgets the generated side and keeps the real
images' features (the evaluated real images are the same at every evaluation).

- :class:`~gan_suite.eval.metrics.TranslationMetrics` (translations): FID/KID, PSNR/SSIM,
  domain, label and object preservation.
- :class:`ClassScorer` (class-conditional samples): ``class_acc`` (per class too) beside
  ``class_acc_real`` (the evaluator on real images) and ``class_acc_shuffled`` (the same fakes
  against permuted labels: chance), FID/KID, and the Parzen-window log-likelihood on request.
- :class:`InstanceScorer` (instance-conditioned samples): ``class_agreement`` beside
  ``class_agreement_other_instance`` (chance) and ``nn_class_purity`` (ceiling), FID/KID.
- :class:`AttributeScorer` (attribute-conditioned translations): ``target_attribute_acc`` on
  the attributes asked to change, ``attribute_preservation`` on the others, FID/KID.
- :class:`SegmentationScorer` (segmentations): ``iou/<class>`` and ``miou``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_suite.eval.distributed import all_gather_cat, all_reduce_sum
from gan_suite.eval.fid import FIDKID
from gan_suite.eval.metrics import SegmentationMetrics
from gan_suite.eval.parzen import DEFAULT_SIGMAS, parzen_estimate
from gan_suite.eval.protocol import (
    AttributeTranslation,
    ClassSamples,
    InstanceSamples,
    SegmentationOutput,
)

JUDGED = {"extractor": "evaluator"}


class _Counts:
    """Named integer counters summed over ranks at read time."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.values = torch.zeros(len(names), dtype=torch.float64)

    def add(self, **amounts: float) -> None:
        for name, amount in amounts.items():
            self.values[self.names.index(name)] += float(amount)

    def total(self) -> dict[str, float]:
        summed = all_reduce_sum(self.values)
        return dict(zip(self.names, summed.tolist()))

    def reset(self) -> None:
        self.values.zero_()


def _fid_entries(fidkid: FIDKID | None) -> dict[str, dict]:
    if fidkid is None or not fidkid.has_real:
        return {}
    n_real = int(all_reduce_sum(fidkid.fid.real_features_num_samples.detach().cpu()))
    n_fake = int(all_reduce_sum(fidkid.fid.fake_features_num_samples.detach().cpu()))
    if min(n_real, n_fake) < 2:  # FID needs two images on each side
        return {}
    s = fidkid.compute()
    info = {"extractor": s["extractor"], "n_images": s["n_fake"], "n_real": s["n_real"]}
    return {
        "fid": {"value": s["fid"], **info},
        "kid": {"value": s["kid_mean"], "std": s["kid_std"], **info},
    }


class ClassScorer(nn.Module):
    """Class accuracy of class-conditional samples under the evaluator, and FID/KID.

    Args:
        evaluator: ``classify(x) -> (N, n_classes)`` logits on [-1, 1] images.
        n_classes: classes of the condition.
        fidkid: FID/KID in the chosen features, or None.
        shuffle_seed: seed of the label permutation of the chance level.
    """

    def __init__(
        self, evaluator: nn.Module, n_classes: int, fidkid: FIDKID | None, shuffle_seed: int = 0
    ) -> None:
        super().__init__()
        self.evaluator = [evaluator]  # a list: not a submodule, never saved twice
        self.n_classes = n_classes
        self.fidkid = fidkid
        self.generator = torch.Generator().manual_seed(shuffle_seed)
        self.counts = _Counts(("n", "hits", "shuffled", "n_real", "real_hits"))
        self.per_class = torch.zeros(2, n_classes, dtype=torch.float64)  # hits, n
        self.class_names: list[str] | None = None
        self.parzen_request = 0
        self.real_unit: list[Tensor] = []

    @torch.no_grad()
    def update(self, rec: ClassSamples, with_real: bool) -> None:
        classify = self.evaluator[0].classify
        predicted = classify(rec.output).argmax(1).cpu()  # judged once for all three numbers
        labels = rec.labels.cpu()
        hits = predicted == labels
        perm = torch.randperm(len(labels), generator=self.generator)
        self.counts.add(n=len(labels), hits=hits.sum(), shuffled=(predicted == labels[perm]).sum())
        self.per_class[0].index_add_(0, labels, hits.double())
        self.per_class[1].index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))
        real_pred = classify(rec.real).argmax(1).cpu()
        self.counts.add(n_real=len(real_pred), real_hits=(real_pred == rec.real_labels.cpu()).sum())
        if self.fidkid is not None:
            self.fidkid.update_fake(rec.output)
            if with_real:
                self.fidkid.update_real(rec.real)
        if with_real and rec.parzen_samples_per_class > 0:
            self.real_unit.append(((rec.real.float().clamp(-1, 1) + 1) / 2).cpu())

    def compute(self) -> dict[str, dict]:
        c = self.counts.total()
        if c["n"] == 0:
            return {}
        n = int(c["n"])
        out = {"class_acc": {"value": c["hits"] / n, "n_images": n, **JUDGED}}
        per_class = all_reduce_sum(self.per_class)
        names = self.class_names or [str(k) for k in range(self.n_classes)]
        for k, name in enumerate(names):
            if per_class[1, k] > 0:
                value = float(per_class[0, k] / per_class[1, k])
                out[f"class_acc/{name}"] = {
                    "value": value,
                    "n_images": int(per_class[1, k]),
                    **JUDGED,
                }
        out["class_acc_shuffled"] = {"value": c["shuffled"] / n, "n_images": n, **JUDGED}
        n_real = int(c["n_real"])
        out["class_acc_real"] = {"value": c["real_hits"] / n_real, "n_images": n_real, **JUDGED}
        out.update(_fid_entries(self.fidkid))
        return out

    @torch.no_grad()
    def parzen(
        self,
        sample_classes: Callable[[Tensor, int], Tensor],
        validation_unit: Tensor,
        score_validation: bool,
        seed: int = 2,
    ) -> dict[str, dict]:
        """The Parzen-window log-likelihood (nats) of the evaluated real images under
        ``parzen_samples_per_class`` samples per class, sigma by grid search on
        ``validation_unit`` (N_val, D) pixels in [0, 1] (Goodfellow et al. 2014's protocol,
        Mirza & Osindero 2014, Table 1). ``sample_classes(labels, seed)`` returns [-1, 1]
        images; every rank draws the same samples (seeded). ``score_validation``: report the
        validation images themselves (at validation)."""
        if self.parzen_request <= 0:
            return {}
        balanced = torch.arange(self.n_classes).repeat_interleave(self.parzen_request)
        dim = validation_unit.shape[1]

        def pixels(images: Tensor) -> Tensor:
            # grey data shown as 3 equal channels: the density is over the data's own pixels
            if images.shape[1] == 3 and images[0, 0].numel() == dim:
                images = images[:, :1]
            return images.flatten(1)

        samples = pixels((sample_classes(balanced, seed).float().clamp(-1, 1) + 1) / 2)
        test = None
        if not score_validation:
            local = pixels(torch.cat(self.real_unit)) if self.real_unit else validation_unit[:0]
            test = all_gather_cat(local.to(samples.device)).cpu()
        result = parzen_estimate(samples.cpu(), validation_unit, test, sigmas=DEFAULT_SIGMAS)
        return {"parzen_ll": result.as_metric()}

    def reset(self) -> None:
        self.counts.reset()
        self.per_class.zero_()
        if self.fidkid is not None:
            self.fidkid.reset_fake()


class InstanceScorer(nn.Module):
    """Class agreement of instance-conditioned samples with their instance, and FID/KID.

    Args:
        evaluator: ``classify(x) -> (N, n_classes)`` logits on [-1, 1] images.
        fidkid: FID/KID of the samples against the conditioning images, or None.
    """

    def __init__(self, evaluator: nn.Module, fidkid: FIDKID | None) -> None:
        super().__init__()
        self.evaluator = [evaluator]
        self.fidkid = fidkid
        self.counts = _Counts(("n", "agree", "n_other", "other", "n_instances", "purity"))

    @torch.no_grad()
    def update(self, rec: InstanceSamples, with_real: bool) -> None:
        classify = self.evaluator[0].classify
        classes = rec.instance_labels
        if classes is None or classes.dim() != 1:  # no ground-truth class: the evaluator's
            classes = classify(rec.instances).argmax(1)
        per_sample = classes.to(rec.output.device).repeat_interleave(rec.n)
        agree = (classify(rec.output).argmax(1) == per_sample).sum()
        self.counts.add(n=rec.output.shape[0], agree=agree)
        if rec.other_output is not None:
            other = (classify(rec.other_output).argmax(1) == per_sample).sum()
            self.counts.add(n_other=rec.other_output.shape[0], other=other)
        if rec.neighbour_labels is not None:
            same = rec.neighbour_labels.to(classes.device) == classes[:, None]
            self.counts.add(n_instances=len(same), purity=same.float().mean(1).sum())
        if self.fidkid is not None:
            self.fidkid.update_fake(rec.output)
            if with_real:
                self.fidkid.update_real(rec.instances)

    def compute(self) -> dict[str, dict]:
        c = self.counts.total()
        if c["n"] == 0:
            return {}
        out = {"class_agreement": {"value": c["agree"] / c["n"], "n_images": int(c["n"]), **JUDGED}}
        if c["n_other"]:
            out["class_agreement_other_instance"] = {
                "value": c["other"] / c["n_other"],
                "n_images": int(c["n_other"]),
                **JUDGED,
            }
        if c["n_instances"]:
            out["nn_class_purity"] = {
                "value": c["purity"] / c["n_instances"],
                "n_images": int(c["n_instances"]),
                **JUDGED,
            }
        out.update(_fid_entries(self.fidkid))
        return out

    def reset(self) -> None:
        self.counts.reset()
        if self.fidkid is not None:
            self.fidkid.reset_fake()


class AttributeScorer(nn.Module):
    """Target-attribute accuracy and attribute preservation of attribute translations.

    ``target_attribute_acc``: over the requests that change their attribute, the share the
    judge sees changed (with ``rec.requested``, only the requested attribute counts; without
    it, every changed entry); per attribute the same over the requests for it.
    ``attribute_preservation``: over the entries a request leaves unchanged, the share the
    judge sees unchanged (not reported for one-hot classes, ``single_choice``).

    Args:
        evaluator: ``classify_attributes(x) -> (N, A)`` logits of binary attributes (or, with
            ``single_choice``, ``classify(x) -> (N, A)`` logits of A classes).
        fidkid: FID/KID of the translations against the source images, or None.
        n_attributes: A.
        single_choice: the attributes are one-hot classes, judged by the argmax.
    """

    def __init__(
        self,
        evaluator: nn.Module,
        fidkid: FIDKID | None,
        n_attributes: int,
        single_choice: bool = False,
    ) -> None:
        super().__init__()
        self.evaluator = [evaluator]
        self.single_choice = single_choice
        self.fidkid = fidkid
        self.counts = _Counts(("n", "n_changed", "changed_hits", "n_kept", "kept_hits"))
        self.per_attribute = torch.zeros(2, n_attributes, dtype=torch.float64)  # hits, n changed
        self.names: list[str] | None = None

    @torch.no_grad()
    def update(self, rec: AttributeTranslation, with_real: bool) -> None:
        judge = self.evaluator[0]
        if self.single_choice:  # one-hot classes (RaFD): the class evaluator's argmax
            logits = judge.classify(rec.output)
            predicted = F.one_hot(logits.argmax(1), logits.shape[1]).bool().cpu()
        else:
            predicted = (judge.classify_attributes(rec.output) > 0).cpu()
        target = rec.target_attributes.cpu() > 0.5
        changed = target != (rec.source_attributes.cpu() > 0.5)
        hits = predicted == target
        scored = changed
        if rec.requested is not None:
            # a request is judged on the attribute it asks for (the official GAN-test
            # accuracy), not on its side effects (blond hair switching black hair off)
            rows, asked = torch.arange(len(target)), rec.requested.cpu().long()
            scored = torch.zeros_like(changed)
            scored[rows, asked] = changed[rows, asked]
        # one-hot classes have no "other attributes" to preserve
        kept = torch.zeros_like(changed) if self.single_choice else ~changed
        self.counts.add(
            n=len(target),
            n_changed=scored.sum(),
            changed_hits=(hits & scored).sum(),
            n_kept=kept.sum(),
            kept_hits=(hits & kept).sum(),
        )
        self.per_attribute[0] += (hits & scored).sum(0)
        self.per_attribute[1] += scored.sum(0)
        self.names = rec.attribute_names
        if self.fidkid is not None:
            self.fidkid.update_fake(rec.output)
            if with_real:
                self.fidkid.update_real(rec.source)

    def compute(self) -> dict[str, dict]:
        c = self.counts.total()
        if c["n"] == 0:
            return {}
        out: dict[str, dict] = {}
        if c["n_changed"]:
            out["target_attribute_acc"] = {
                "value": c["changed_hits"] / c["n_changed"],
                "n_images": int(c["n"]),
                "n_attributes": int(c["n_changed"]),
                **JUDGED,
            }
        if c["n_kept"]:
            out["attribute_preservation"] = {
                "value": c["kept_hits"] / c["n_kept"],
                "n_images": int(c["n"]),
                "n_attributes": int(c["n_kept"]),
                **JUDGED,
            }
        per = all_reduce_sum(self.per_attribute)
        names = self.names or [str(a) for a in range(per.shape[1])]
        for a, name in enumerate(names):
            if per[1, a] > 0:
                out[f"target_attribute_acc/{name}"] = {
                    "value": float(per[0, a] / per[1, a]),
                    "n_images": int(c["n"]),
                    "n_attributes": int(per[1, a]),
                    **JUDGED,
                }
        out.update(_fid_entries(self.fidkid))
        return out

    def reset(self) -> None:
        self.counts.reset()
        self.per_attribute.zero_()
        if self.fidkid is not None:
            self.fidkid.reset_fake()


class SegmentationScorer(nn.Module):
    """Per-class IoU and mIoU of segmentations (torchmetrics' Jaccard index, DDP-synced)."""

    def __init__(self, rec: SegmentationOutput) -> None:
        super().__init__()
        self.metrics = SegmentationMetrics(rec.n_classes, rec.ignore_index, rec.class_names)
        self.n = 0

    @torch.no_grad()
    def update(self, rec: SegmentationOutput, with_real: bool) -> None:
        self.metrics = self.metrics.to(rec.target.device)
        self.metrics.update(rec.prediction, rec.target)
        self.n += rec.target.shape[0]

    def compute(self) -> dict[str, dict]:
        n = int(all_reduce_sum(torch.tensor(float(self.n))))
        if n == 0:
            return {}
        return {k: {"value": v, "n_images": n} for k, v in self.metrics.compute().items()}

    def reset(self) -> None:
        self.metrics.reset()
        self.n = 0
