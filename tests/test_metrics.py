import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gan_suite.eval.metrics import (
    SegmentationMetrics,
    Translation,
    TranslationMetrics,
    two_way_translations,
)


class OracleEvaluator(nn.Module):
    """Reads the class off the image: channel 0's mean picks the class, and pixels > 0 of
    channel 1 are the object (of that class)."""

    n_classes = 4

    def classify(self, x):
        cls = ((x[:, 0].mean(dim=(1, 2)) + 1) / 2 * 3.999).long()
        return F.one_hot(cls, 4).float()

    def classify_domain(self, x):  # channel 2 > 0: domain B
        return F.one_hot((x[:, 2].mean(dim=(1, 2)) > 0).long(), 2).float()

    def segment(self, x):
        cls = self.classify(x).argmax(1)
        seg = torch.where(x[:, 1] > 0, cls[:, None, None] + 1, 0)
        return F.one_hot(seg, 5).permute(0, 3, 1, 2).float()


def _images(classes, masks):
    n = len(classes)
    x = torch.full((n, 3, 8, 8), -1.0)
    for i, c in enumerate(classes):
        x[i, 0] = -1 + 2 * (c + 0.5) / 4
    x[:, 1] = torch.where(masks > 0, 1.0, -1.0)
    return x


def test_label_and_object_preservation_against_known_truth():
    labels = torch.tensor([0, 1, 2, 3])
    masks = torch.zeros(4, 8, 8, dtype=torch.long)
    masks[:, 2:6, 2:6] = (labels + 1)[:, None, None]
    m = TranslationMetrics(None, OracleEvaluator(), n_classes=4)
    # a perfect translation keeps class and object
    out = _images(labels, masks)
    out[:3, 2] = 1.0  # three of the four outputs look like domain B
    m.update(Translation("A->B", out, None, labels, masks, target_domain=1), with_real=False)
    r = m.compute()
    assert r["label_acc"]["value"] == 1.0 and r["object_iou"]["value"] == 1.0
    assert r["domain_acc"]["value"] == 0.75
    assert r["label_acc"]["n_images"] == 4 and r["object_iou"]["extractor"] == "evaluator"
    m.reset()
    # wrong class for half of them, object shifted by 2 px: IoU 8 / 24 of a 4x4 square
    shifted = torch.roll(masks, 2, dims=2)
    wrong = torch.tensor([1, 1, 3, 3])
    m.update(Translation("A->B", _images(wrong, shifted), None, labels, masks), with_real=False)
    r = m.compute()
    assert r["label_acc"]["value"] == 0.5
    assert r["object_iou"]["value"] == pytest.approx(8 / 24)
    # per source class: 0 was read as 1 (lost), 1 kept, 2 read as 3 (lost), 3 kept
    assert [r[f"label_acc/{c}"]["value"] for c in range(4)] == [0.0, 1.0, 0.0, 1.0]
    assert r["label_acc/0"]["n_images"] == 1


def test_paired_fidelity_psnr_ssim():
    target = torch.rand(2, 3, 16, 16) * 2 - 1
    m = TranslationMetrics(None, None)
    m.update(Translation("A->B", target, paired_target=target), with_real=False)
    assert m.compute()["ssim"]["value"] == pytest.approx(1.0, abs=1e-4)
    m.reset()
    off = torch.zeros(2, 3, 16, 16)
    m.update(Translation("A->B", off + 0.2, paired_target=off), with_real=False)  # 0.1 in [0,1]
    r = m.compute()
    assert r["psnr"]["value"] == pytest.approx(20.0, abs=1e-3)  # 20 log10(1 / 0.1)
    assert r["psnr"]["n_images"] == 2 and "fid" not in r


def test_two_way_translations_pair_sources_with_targets():
    batch = {
        "A": torch.zeros(1, 3, 4, 4),
        "B": torch.ones(1, 3, 4, 4),
        "A_label": torch.tensor([2]),
        "B_label": torch.tensor([3]),
    }
    ab, ba = two_way_translations(batch, fake_B=batch["A"] + 0.5, fake_A=batch["B"] - 0.5)
    assert ab.direction == "A->B" and torch.equal(ab.real_target, batch["B"])
    assert int(ab.source_label) == 2 and int(ba.source_label) == 3
    assert torch.equal(ab.paired_target, batch["B"]) and ba.source_mask is None


def test_segmentation_iou_per_class():
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 255]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 2, 0, 1]]])
    seg = SegmentationMetrics(3, ignore_index=255, class_names=["bg", "a", "b"])
    seg.update(pred, target)
    r = seg.compute()
    assert r["iou/bg"] == pytest.approx(1 / 2) and r["iou/a"] == pytest.approx(2 / 3)
    assert r["iou/b"] == 1.0
    assert math.isclose(r["miou"], (1 / 2 + 2 / 3 + 1) / 3, rel_tol=1e-6)
