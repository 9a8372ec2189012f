"""Baselines that every translation model must beat, evaluated like a trained model.

gan-suite test --config experiments/identity.yaml     # translation = input
"""

from __future__ import annotations

import lightning as L
from torch import Tensor

from gan_suite.eval.metrics import Translation, two_way_translations


class IdentityTranslator(L.LightningModule):
    """The identity mapping as a translator: G_AB(a) = a, G_BA(b) = b.

    Its metrics show what a model gets for free: perfect label and object preservation, and
    the FID/KID of the untranslated source against the target domain.
    """

    def evaluation_outputs(self, batch: dict) -> list[Translation]:
        return two_way_translations(batch, fake_B=batch["A"], fake_A=batch["B"])

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Nothing to do per batch: the Evaluation callback runs its own loop."""

    def sample_panels(self, batch: dict) -> dict[str, list[Tensor]]:
        return {"A->B": [batch["A"], batch["A"]], "B->A": [batch["B"], batch["B"]]}

    def sample_panels_caption(self) -> list[str]:
        return ["A | A", "B | B"]
