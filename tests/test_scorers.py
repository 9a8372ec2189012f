"""The evaluation protocol's scorers against hand-computed values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gan_suite.eval.protocol import (
    AttributeTranslation,
    ClassSamples,
    InstanceSamples,
    SegmentationOutput,
)
from gan_suite.eval.scorers import AttributeScorer, ClassScorer, InstanceScorer, SegmentationScorer


class _PixelJudge(nn.Module):
    """A stub evaluator that reads its answers off the images: the class is the value of
    pixel (0, 0, 0) (as an integer), the attributes are the signs of pixels (1, 0, :A)."""

    n_classes = 4

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x[:, 0, 0, 0].round().long(), self.n_classes).float()

    def classify_attributes(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 1, 0, :3]


def _images(classes: list[int]) -> torch.Tensor:
    x = torch.zeros(len(classes), 3, 4, 4)
    x[:, 0, 0, 0] = torch.tensor(classes, dtype=torch.float)
    return x


def test_class_scorer_counts_per_class_and_real_accuracy():
    scorer = ClassScorer(_PixelJudge(), n_classes=4, fidkid=None)
    labels = torch.tensor([0, 1, 2, 3, 1, 1])
    fakes = _images([0, 1, 2, 0, 1, 3])  # right on 0, 1, 2, 1; wrong on 3 and the last 1
    real = _images([0, 1, 2, 3, 1, 2])  # the evaluator is wrong on the last real image
    scorer.update(ClassSamples("samples", fakes, labels, real, labels), with_real=True)
    out = scorer.compute()
    assert out["class_acc"]["value"] == pytest.approx(4 / 6)
    assert out["class_acc/1"]["value"] == pytest.approx(2 / 3)
    assert out["class_acc/3"]["value"] == 0.0 and out["class_acc/3"]["n_images"] == 1
    assert out["class_acc_real"]["value"] == pytest.approx(5 / 6)
    assert 0 <= out["class_acc_shuffled"]["value"] <= 1
    scorer.reset()
    assert scorer.compute() == {}


def test_instance_scorer_agreement_chance_and_purity():
    scorer = InstanceScorer(_PixelJudge(), fidkid=None)
    instances = _images([1, 2])
    samples = _images([1, 1, 2, 0])  # n = 2 per instance: 3 of 4 agree
    others = _images([2, 2, 1, 1])  # conditioned on the other instance: none agree
    neighbours = torch.tensor([[1, 1, 0], [2, 2, 2]])  # purity (2/3 + 1) / 2
    rec = InstanceSamples(
        "samples", samples, instances, 2, torch.tensor([1, 2]), others, neighbours
    )
    scorer.update(rec, with_real=True)
    out = scorer.compute()
    assert out["class_agreement"]["value"] == pytest.approx(0.75)
    assert out["class_agreement_other_instance"]["value"] == 0.0
    assert out["nn_class_purity"]["value"] == pytest.approx((2 / 3 + 1) / 2)


def test_attribute_scorer_splits_changed_and_kept_attributes():
    """Target-attribute accuracy over the attributes asked to change, preservation over the
    others (StarGAN's and MatchGAN's measure)."""
    scorer = AttributeScorer(_PixelJudge(), fidkid=None, n_attributes=3)
    source = torch.tensor([[1, 0, 0], [0, 1, 1]], dtype=torch.float)
    target = torch.tensor([[0, 0, 1], [0, 1, 0]], dtype=torch.float)  # changed: 2 + 1
    out_images = torch.zeros(2, 3, 4, 4)
    # predicted attributes (signs): image 0 -> [0, 0, 1] (both changes right, kept right);
    # image 1 -> [1, 1, 0] (the change right, attribute 0 not kept)
    out_images[0, 1, 0, :3] = torch.tensor([-1.0, -1.0, 1.0])
    out_images[1, 1, 0, :3] = torch.tensor([1.0, 1.0, -1.0])
    rec = AttributeTranslation("A", out_images, out_images, source, target, ["a", "b", "c"])
    scorer.update(rec, with_real=True)
    out = scorer.compute()
    assert out["target_attribute_acc"]["value"] == 1.0
    assert out["target_attribute_acc"]["n_attributes"] == 3
    assert out["attribute_preservation"]["value"] == pytest.approx(2 / 3)
    assert out["target_attribute_acc/a"]["value"] == 1.0 and "target_attribute_acc/b" not in out


def test_segmentation_scorer_gives_per_class_iou_and_miou_ignoring_255():
    target = torch.tensor([[[0, 0, 1, 255]]])
    pred = torch.tensor([[[0, 1, 1, 0]]])
    rec = SegmentationOutput("target", pred, target, n_classes=2, class_names=["road", "car"])
    scorer = SegmentationScorer(rec)
    scorer.update(rec, with_real=True)
    out = scorer.compute()
    assert out["iou/road"]["value"] == pytest.approx(1 / 2)  # 1 shared of {0, 1}
    assert out["iou/car"]["value"] == pytest.approx(1 / 2)  # 1 shared of {1, 2}
    assert out["miou"]["value"] == pytest.approx(0.5)


def test_evaluation_refuses_a_record_it_does_not_know():
    from gan_suite.callbacks import Evaluation

    with pytest.raises(TypeError, match="gan_suite.eval.protocol"):
        Evaluation(feature="none")._scorer_for(type("Odd", (), {"name": "x"})(), "test")


def test_evaluation_wants_an_attribute_evaluator_of_the_same_attributes():
    from gan_suite.callbacks import Evaluation
    from gan_suite.eval.evaluator import Evaluator

    x = torch.zeros(2, 3, 24, 24)
    attributes = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    rec = AttributeTranslation("A", x, x, attributes, attributes, ["a", "b"])
    callback = Evaluation(feature="none")
    callback.evaluator = Evaluator(n_classes=2, width=8)  # a class evaluator
    with pytest.raises(ValueError, match="'A'.*class evaluator"):
        callback._scorer_for(rec, "test")
    callback.evaluator = Evaluator(n_classes=2, width=8, attribute_names=["a", "c"])
    with pytest.raises(ValueError, match=r"\['a', 'b'\].*judges \['a', 'c'\]"):
        callback._scorer_for(rec, "test")
    callback.evaluator = Evaluator(n_classes=2, width=8, attribute_names=["a", "b"])
    assert isinstance(callback._scorer_for(rec, "test"), AttributeScorer)
