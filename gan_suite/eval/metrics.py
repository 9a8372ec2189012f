"""Task metrics of a translation or generation, on torchmetrics, one bundle per direction.

Each direction (``"A->B"``) gets a :class:`TranslationMetrics` that accumulates, over the
evaluated images:

- ``fid``, ``kid`` — against real images of the target domain, in the features of the
  chosen extractor (``inception`` or the dataset's ``evaluator``); the extractor's name is
  reported with every number;
- ``psnr``, ``ssim`` — paired fidelity of the translation to the true target, where
  ground-truth pairs exist (the embedded data, paired datasets);
- ``domain_acc`` — the evaluator places the output in the target domain (did it translate?);
- ``label_acc`` — the evaluator's class of the translation equals the source's label (or the
  requested target label, for conditional generators);
- ``object_iou`` — foreground IoU between the source's object mask and the evaluator's
  segmentation of the translation (object preservation, the quantity OP-GAN claims to improve),
  and ``object_miou``, the same per class, averaged;
:class:`SegmentationMetrics` gives per-class IoU and mIoU for segmentation models (BDL).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchmetrics.classification import (
    BinaryJaccardIndex,
    MulticlassAccuracy,
    MulticlassJaccardIndex,
)
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from gan_suite.eval.fid import FIDKID


@dataclass
class Translation:
    """One direction of a model's output on an evaluation batch (images in [-1, 1]).

    Attributes:
        direction: e.g. ``"A->B"``; metric keys are ``<direction>/<metric>``.
        output: the generated images (N, 3, H, W).
        real_target: real images of the output's domain, for FID/KID (any N).
        source_label: class the output should show (N,), or None.
        source_mask: semantic mask the output should keep (N, H, W), or None.
        paired_target: the ground-truth translation (N, 3, H, W), or None.
        target_domain: index of the domain the output should belong to (0 = A, 1 = B), for
            the evaluator's domain accuracy, or None.
    """

    direction: str
    output: Tensor
    real_target: Tensor | None = None
    source_label: Tensor | None = None
    source_mask: Tensor | None = None
    paired_target: Tensor | None = None
    target_domain: int | None = None

    @property
    def name(self) -> str:
        """The protocol's key prefix: the direction."""
        return self.direction


def two_way_translations(batch: dict, fake_B: Tensor, fake_A: Tensor) -> list[Translation]:
    """Both directions of an A<->B translator on an aligned evaluation batch.

    A->B is judged against the real B images (FID/KID), against the aligned B as ground truth
    where the data has true pairs, and against A's label and mask (the translation must keep
    the source's object); B->A symmetrically."""
    return [
        Translation(
            "A->B",
            fake_B,
            batch["B"],
            batch.get("A_label"),
            batch.get("A_mask"),
            paired_target=batch["B"],
            target_domain=1,
        ),
        Translation(
            "B->A",
            fake_A,
            batch["A"],
            batch.get("B_label"),
            batch.get("B_mask"),
            paired_target=batch["A"],
            target_domain=0,
        ),
    ]


def _unit(images: Tensor) -> Tensor:
    return ((images.float().clamp(-1, 1) + 1) / 2).contiguous()


_EVALUATOR_METRICS = ("domain_acc", "object_iou", "object_miou")


class TranslationMetrics(nn.Module):
    """The metrics of one direction. ``update`` takes a :class:`Translation`.

    Args:
        fidkid: FID/KID over the chosen feature extractor, or None to skip them.
        evaluator: a net with ``classify(x)`` and ``segment(x)`` (the dataset's evaluator), or
            None to skip label and object preservation.
        n_classes: classes of the evaluator (segmentation has ``1 + n_classes`` labels).
    """

    def __init__(
        self, fidkid: FIDKID | None, evaluator: nn.Module | None, n_classes: int = 0
    ) -> None:
        super().__init__()
        self.fidkid = fidkid
        self.evaluator = [evaluator]  # a list: not a submodule, never moved or saved twice
        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        if evaluator is not None:
            # 3: a judge of the domains alone may also answer "neither" (2), never right
            self.domain_acc = MulticlassAccuracy(num_classes=3, average="micro")
        if evaluator is not None and n_classes > 0:  # 0: a judge of the domains alone
            # label preservation per source class, (kept, total): label_acc is their ratio of
            # sums, and a translator that redraws whole classes (a 1 as a 2) shows per class
            self.register_buffer("label_per_class", torch.zeros(2, n_classes, dtype=torch.float64))
            self.object_iou = BinaryJaccardIndex()
            self.object_miou = MulticlassJaccardIndex(num_classes=1 + n_classes, average="macro")
        self.counts: dict[str, int] = {}

    def _count(self, name: str, n: int) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    @torch.no_grad()
    def update(self, t: Translation, with_real: bool) -> None:
        n = t.output.shape[0]
        if self.fidkid is not None:
            self.fidkid.update_fake(t.output)
            if with_real and t.real_target is not None:
                self.fidkid.update_real(t.real_target)
        if t.paired_target is not None:
            self.psnr.update(_unit(t.output), _unit(t.paired_target))
            self.ssim.update(_unit(t.output), _unit(t.paired_target))
            self._count("paired", n)
        evaluator = self.evaluator[0]
        if evaluator is None:
            return
        if t.target_domain is not None and hasattr(evaluator, "classify_domain"):
            pred = evaluator.classify_domain(t.output).argmax(1)
            self.domain_acc.update(pred, torch.full_like(pred, t.target_domain))
            self._count("domain", n)
        if t.source_label is not None and hasattr(self, "label_per_class"):
            # an evaluator with a classifier per domain reads the output as the target
            # domain writes that class
            if getattr(evaluator, "class_heads", None) is not None:
                logits = evaluator.classify(t.output, t.target_domain)
            else:
                logits = evaluator.classify(t.output)
            kept = (logits.argmax(1) == t.source_label).double().cpu()
            source = t.source_label.cpu()
            self.label_per_class[0].index_add_(0, source, kept.to(self.label_per_class))
            self.label_per_class[1].index_add_(
                0, source, torch.ones_like(kept).to(self.label_per_class)
            )
            self._count("label", n)
        if t.source_mask is not None and hasattr(self, "object_iou"):
            seg = evaluator.segment(t.output).argmax(1)
            self.object_iou.update(seg > 0, t.source_mask > 0)
            self.object_miou.update(seg, t.source_mask)
            self._count("mask", n)

    def compute(self) -> dict[str, dict]:
        """Every metric with the number of images behind it (and the extractor for FID/KID).

        Collective under DDP: call it on every rank."""
        out: dict[str, dict] = {}
        if self.fidkid is not None and self.fidkid.has_real:
            s = self.fidkid.compute()
            info = {"extractor": s["extractor"], "n_images": s["n_fake"], "n_real": s["n_real"]}
            out["fid"] = {"value": s["fid"], **info}
            out["kid"] = {"value": s["kid_mean"], "std": s["kid_std"], **info}
        pairs = {
            "psnr": ("paired", self.psnr),
            "ssim": ("paired", self.ssim),
            "domain_acc": ("domain", getattr(self, "domain_acc", None)),
            "object_iou": ("mask", getattr(self, "object_iou", None)),
            "object_miou": ("mask", getattr(self, "object_miou", None)),
        }
        if hasattr(self, "label_per_class") and self._global_count("label") > 0:
            from gan_suite.eval.distributed import all_reduce_sum

            kept, total = all_reduce_sum(self.label_per_class.detach().cpu())
            out["label_acc"] = {
                "value": float(kept.sum() / total.sum()),
                "n_images": int(total.sum()),
                "extractor": "evaluator",
            }
            for c in torch.nonzero(total).flatten().tolist():
                out[f"label_acc/{c}"] = {
                    "value": float(kept[c] / total[c]),
                    "n_images": int(total[c]),
                    "extractor": "evaluator",
                }
        for name, (kind, metric) in pairs.items():
            n = self._global_count(kind)
            if metric is not None and n > 0:
                out[name] = {"value": float(metric.compute()), "n_images": n}
                if name.startswith(("domain", "label", "object")):
                    out[name]["extractor"] = "evaluator"
        return out

    def _global_count(self, kind: str) -> int:
        from gan_suite.eval.distributed import all_reduce_sum

        return int(all_reduce_sum(torch.tensor(self.counts.get(kind, 0), dtype=torch.long)))

    def reset(self) -> None:
        """Forget the generated images; keep the real-image features (computed once a run)."""
        if self.fidkid is not None:
            self.fidkid.reset_fake()
        for m in (
            self.psnr,
            self.ssim,
            *(getattr(self, k, None) for k in _EVALUATOR_METRICS),
        ):
            if m is not None:
                m.reset()
        if hasattr(self, "label_per_class"):
            self.label_per_class.zero_()
        self.counts.clear()


class SegmentationMetrics(nn.Module):
    """Per-class IoU and mIoU of predicted label maps (BDL's measure), ``ignore_index`` aware.

    Args:
        n_classes: number of classes (including background if it is a class).
        ignore_index: label of unlabelled pixels (255 in Cityscapes/GTA5).
        class_names: names for the per-class keys (``iou/<name>``).
    """

    def __init__(
        self, n_classes: int, ignore_index: int | None = 255, class_names: list[str] | None = None
    ) -> None:
        super().__init__()
        self.names = class_names or [str(i) for i in range(n_classes)]
        self.iou = MulticlassJaccardIndex(
            num_classes=n_classes, average="none", ignore_index=ignore_index
        )

    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred``: (N, C, H, W) logits or (N, H, W) labels; ``target``: (N, H, W) labels."""
        self.iou.update(pred.argmax(1) if pred.dim() == 4 else pred, target)

    def compute(self) -> dict[str, float]:
        per_class = self.iou.compute()
        out = {f"iou/{n}": float(v) for n, v in zip(self.names, per_class)}
        out["miou"] = float(per_class.mean())
        return out

    def reset(self) -> None:
        self.iou.reset()
