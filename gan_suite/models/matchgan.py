"""MatchGAN (Sun et al. 2020): StarGAN trained on a small labelled fraction plus the unlabelled
rest, with a matching loss on the discriminator's embeddings.

What it adds to :class:`~gan_suite.models.stargan.StarGAN` (the official code's choices):

- **Batches** alternate (``data.batch_composition: matched``): a labelled batch of
  ``classes_per_batch`` attribute patterns x ``batch_size / classes_per_batch`` images each,
  contiguous per pattern, then an unlabelled batch of random images.
- **Label-space augmentation**: targets are drawn from the label space of the labelled data,
  ``classes_per_batch`` distinct patterns, pattern ``j % k`` for image j; so unlabelled images
  are translated too, and every generated image carries a known label.
- **Matching** (``match_weight``, lambda_match = 0.5): triplets of (anchor, positive with the
  same label, negative with another) become pairs (:func:`~gan_suite.losses.matchgan_pairs`);
  D's embeddings of a pair are concatenated along channels and one conv predicts match / no
  match (2-class cross-entropy). D learns it on real labelled batches (pairs share the real
  label); G is trained so that its translations match by *target* label, on every batch.
- **Unlabelled batches** skip the terms that need the original label: D's classification and
  matching of real images, and G's reconstruction.

One device:  gan-suite fit --config experiments/matchgan.yaml
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_suite.losses import matchgan_pairs
from gan_suite.models.stargan import StarGAN


class MatchGAN(StarGAN):
    """StarGAN + label-space augmentation + the pair-matching loss (see the module docstring).

    Args:
        match_weight: lambda_match, weight of the matching loss in D's and G's objectives (0.5).
        classes_per_batch: label groups per batch (4); must equal the data's
            ``classes_per_batch``.
        match_features: ``concat`` (official: one conv over the two embeddings side by side)
            or ``relation`` (the same conv over ``|h_1 - h_2|`` and ``h_1 * h_2``). The
            official head is a sum of a function of each image and cannot tell whether two
            images share a label: its loss stays at ln 2 (see
            :class:`~gan_suite.nets.stargan.StarGANDiscriminator`).
        **stargan: every :class:`StarGAN` argument.

    Raises:
        ValueError: at setup, when the data does not serve matched batches with the same
            ``classes_per_batch``; at a training step, a batch mixing labelled and unlabelled
            images or a labelled batch whose groups do not share a label.
    """

    match_head = True

    def __init__(
        self,
        match_weight: float = 0.5,
        classes_per_batch: int = 4,
        match_features: str = "concat",
        **stargan,
    ) -> None:
        super().__init__(**stargan)
        self.save_hyperparameters()
        if match_features not in ("concat", "relation"):
            raise ValueError(f"match_features={match_features!r}: expected concat or relation")
        self.D.match_features = match_features
        self.label_space: Tensor | None = None

    # -- the label space of the labelled data ---------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if dm is None or stage != "fit":
            return
        if getattr(dm, "batch_composition", None) != "matched":
            raise ValueError(
                "MatchGAN trains on alternating labelled (classes x images) and unlabelled "
                "batches: set data.init_args.batch_composition: matched"
            )
        if dm.classes_per_batch != self.hparams.classes_per_batch:
            raise ValueError(
                f"data.classes_per_batch={dm.classes_per_batch} differs from "
                f"model.classes_per_batch={self.hparams.classes_per_batch}"
            )
        self.label_space = self.condition(dm.label_space())  # (P, A) labelled patterns
        if self.hparams.n_critic % 2 == 0 and not bool(dm.labelled.all()):
            # batches alternate labelled / unlabelled and G steps on iterations n-1, 2n-1, ...
            raise ValueError(
                f"model.n_critic={self.hparams.n_critic} is even: with alternating labelled "
                "and unlabelled batches every G step would fall on an unlabelled batch (no "
                "reconstruction, no labelled signal for G); use an odd n_critic (5, the paper's)"
            )

    def sample_targets(self, n: int) -> Tensor:
        """(n, A) targets: k distinct patterns of the label space, pattern ``j % k`` for image
        j (the official code's interleaving), k = ``classes_per_batch``."""
        if self.label_space is None:
            raise RuntimeError("MatchGAN.label_space is set in setup('fit') from the data")
        k = self.hparams.classes_per_batch
        chosen = torch.randperm(len(self.label_space))[:k]
        return self.label_space[chosen][torch.arange(n) % k].to(self.device)

    # -- the algorithm --------------------------------------------------------------------
    def _batch_kind(self, batch: dict) -> Tensor | None:
        """c_org (N, A) of a labelled batch, None for an unlabelled one."""
        labelled = batch["labelled"]
        if bool(labelled.all()):
            c_org = self.condition(batch["label"])
            k = self.hparams.classes_per_batch
            groups = c_org.view(k, -1, c_org.shape[1])
            if not bool((groups == groups[:, :1]).all()):
                raise ValueError(
                    "a labelled MatchGAN batch must hold classes_per_batch groups of images "
                    "with one label each: set data.init_args.batch_composition: matched"
                )
            return c_org
        if bool((~labelled).any()) and bool(labelled.any()):
            raise ValueError(
                "this batch mixes labelled and unlabelled images; MatchGAN alternates whole "
                "batches: set data.init_args.batch_composition: matched"
            )
        return None

    def _match_loss(self, h: Tensor, n_groups: int) -> Tensor:
        """Cross-entropy of D's match head on the pairs of a batch of ``n_groups`` contiguous
        label groups, from D's embeddings ``h`` (N, ...)."""
        first, second, same = matchgan_pairs(n_groups, h.shape[0] // n_groups)
        logits = self.D.match_logits(h[first], h[second])
        return F.cross_entropy(logits, same.to(logits.device))

    def training_conditions(self, batch: dict) -> tuple[Tensor, Tensor | None, Tensor]:
        """(x, c_org or None for an unlabelled batch, targets from the label space)."""
        x = self.prepare_images(batch["image"])
        return x, self._batch_kind(batch), self.sample_targets(len(x))

    def add_critic_terms(self, terms: dict, h_real: Tensor, c_org: Tensor | None) -> None:
        """D's matching of real pairs, which share their real label (labelled batches)."""
        if c_org is not None:
            terms["d_match"] = self._match_loss(h_real, self.hparams.classes_per_batch)
            terms["d_loss"] = terms["d_loss"] + self.hparams.match_weight * terms["d_match"]

    def add_generator_terms(self, terms: dict, h_fake: Tensor) -> None:
        """G's matching of its translations, grouped by target (image j carries pattern
        j % k), on every batch."""
        k = self.hparams.classes_per_batch
        order = torch.argsort(torch.arange(len(h_fake)) % k, stable=True).to(h_fake.device)
        terms["g_match"] = self._match_loss(h_fake[order], k)
        terms["g_loss"] = terms["g_loss"] + self.hparams.match_weight * terms["g_match"]
