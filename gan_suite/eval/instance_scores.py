"""Running scores of an instance-conditioned generator (IC-GAN) over one evaluation stage.

Each held-out image x is an instance: the generator samples G(z, h(x)), and an evaluator (the
suite's :class:`~gan_suite.eval.evaluator.Evaluator`) judges the samples. Per stage,
:class:`InstanceScores` accumulates batch by batch:

- ``fid``/``kid``: the samples against the conditioning images, in the evaluator's features;
- ``class_agreement``: the share of samples whose evaluator class is the instance's class;
- at test, ``class_agreement_other_instance``, the same for samples conditioned on another
  instance (the chance level), and ``nn_class_purity``, the share of an instance's k nearest
  training neighbours that have its class (the ceiling the data itself sets).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gan_suite.eval.fid import FIDKID


class InstanceScores:
    """FID/KID and class-agreement counters of one stage (val or test).

    Args:
        evaluator: classifies [-1, 1] images, ``classify(x) -> (N, n_classes)`` logits.
        features: the feature net of FID/KID (a :class:`~gan_suite.eval.features.FeatureWrapper`
            of the evaluator's features).
    """

    def __init__(self, evaluator: nn.Module, features: nn.Module) -> None:
        self.evaluator = evaluator
        self.fidkid = FIDKID(features)
        # the held-out images are the same every epoch: their features are kept after the first
        self.real_done = False
        self.reset_counts()

    def reset_counts(self) -> None:
        self.agree, self.other, self.n = 0, 0, 0
        self.purity, self.n_instances = 0.0, 0

    def to(self, device: torch.device) -> InstanceScores:
        self.evaluator.to(device)
        self.fidkid.to(device)
        return self

    def _hits(self, samples: Tensor, classes: Tensor, n: int) -> int:
        """Samples (B * n, 3, S, S), n per instance, whose evaluator class is ``classes`` (B,)."""
        predicted = self.evaluator.classify(samples).argmax(1)
        return int((predicted == classes.repeat_interleave(n)).sum())

    @torch.no_grad()
    def update(self, images: Tensor, samples: Tensor, classes: Tensor | None, n: int) -> Tensor:
        """Add a batch: the instances' images (B, 3, H, W), their ``n`` samples each
        (B * n, 3, S, S) and their classes (B,); without classes (None or attribute vectors)
        the evaluator's class of each image stands in. Returns the classes used."""
        if not self.real_done:
            self.fidkid.update_real(images)
        self.fidkid.update_fake(samples)
        if classes is None or classes.dim() != 1:
            classes = self.evaluator.classify(images).argmax(1)  # no ground-truth class
        classes = classes.to(samples.device)
        self.agree += self._hits(samples, classes, n)
        self.n += samples.shape[0]
        return classes

    @torch.no_grad()
    def update_other_instance(self, samples: Tensor, classes: Tensor, n: int) -> None:
        """Add samples conditioned on other instances, judged against these ``classes``."""
        self.other += self._hits(samples, classes, n)

    def update_purity(self, same_class: Tensor) -> None:
        """Add (B, k) booleans: neighbour j of instance i has the instance's class."""
        self.purity += float(same_class.float().mean(1).sum())
        self.n_instances += same_class.shape[0]

    def compute(self, test: bool, **purity_info: object) -> dict[str, dict]:
        """The metrics.json entries of the stage (``{}`` if nothing was added), then reset the
        counters and the fake features; ``purity_info`` is added to ``nn_class_purity``."""
        if self.n == 0:
            return {}
        common = {"n_images": self.n, "extractor": "evaluator"}
        results = {"class_agreement": {"value": self.agree / self.n, **common}}
        fidkid = self.fidkid
        if min(int(fidkid.fid.real_features_num_samples), self.n) >= 2:  # FID needs 2 of each
            scores = fidkid.compute()
            results["fid"] = {"value": scores["fid"], "n_real": scores["n_real"], **common}
            results["kid"] = {"value": scores["kid_mean"], "std": scores["kid_std"], **common}
        fidkid.reset_fake()
        self.real_done = True
        if test:
            results["class_agreement_other_instance"] = {"value": self.other / self.n, **common}
            if self.n_instances:
                results["nn_class_purity"] = {
                    "value": self.purity / self.n_instances,
                    "n_images": self.n_instances,
                    **purity_info,
                }
        self.reset_counts()
        return results
