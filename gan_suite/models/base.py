"""What every paper's LightningModule shares: manual optimisation plumbing and logging."""

from __future__ import annotations

import lightning as L
import torch
from torch import Tensor

from gan_suite.eval.metrics import Translation, two_way_translations
from gan_suite.losses import check_finite


class GANModule(L.LightningModule):
    """Base of the suite's papers.

    Subclasses write one method per optimizer step (``_generator_step``,
    ``_discriminator_step``, ...), each reading the same: ``with self.toggled_optimizer(opt):``
    forward, losses, :meth:`log_terms`, :meth:`backward_and_step`.
    """

    def __init__(self, channels_last: bool = False) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.channels_last = channels_last

    # -- plumbing -------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def prepare_images(self, x: Tensor) -> Tensor:
        """Put an input batch in the memory format the nets were converted to."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def backward_and_step(self, optimizer, loss: Tensor) -> None:
        """Backward, step and clear ``optimizer``'s nets. Call it inside
        ``with self.toggled_optimizer(optimizer):`` opened *before* the forward pass, so the
        nets of the other optimizers are frozen while the graph is built and get no gradient."""
        self.manual_backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def log_terms(self, prefix: str, terms: dict[str, Tensor], prog_bar: tuple = ()) -> None:
        """Check every term is finite, then log each as ``<prefix>/<name>``."""
        check_finite(terms, self.global_step)
        for name, value in terms.items():
            self.log(
                f"{prefix}/{name}",
                value.detach(),
                prog_bar=name in prog_bar,
                sync_dist=prefix != "train",
                batch_size=self._batch_size,
            )

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._batch_size = next(v.shape[0] for v in batch.values() if isinstance(v, Tensor))

    _batch_size: int = 1

    def on_validation_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.on_train_batch_start(batch, batch_idx)

    def on_test_batch_start(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.on_train_batch_start(batch, batch_idx)

    def on_train_epoch_end(self) -> None:
        """Learning-rate schedules of the papers are per epoch."""
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            scheduler.step()
        opt = self.optimizers()
        first = opt[0] if isinstance(opt, list) else opt
        self.log("train/lr", first.param_groups[0]["lr"])

    # -- what callbacks ask of a paper ----------------------------------------------------
    def sample_panels(self, batch: dict) -> dict[str, list[Tensor]]:
        """Panels for :class:`~gan_suite.callbacks.SampleGrid`: name -> image columns."""
        raise NotImplementedError

    def sample_panels_caption(self) -> list[str]:
        return list(self.sample_panels_names)

    sample_panels_names: tuple[str, ...] = ()


class TwoDomainTranslator(GANModule):
    """Shared plumbing of the A <-> B translators (CycleGAN, OP-GAN, DiscoGAN): nets named
    ``G_AB`` and ``G_BA``, a ``_translate_cycle`` giving fakes and reconstructions, and an
    ``_eval_terms`` giving the validation/test loss terms."""

    sample_panels_names = ("A | G_AB(A) | G_BA(G_AB(A))", "B | G_BA(B) | G_AB(G_BA(B))")

    def forward(self, x: Tensor, direction: str = "AtoB") -> Tensor:
        """Translate a batch: ``AtoB`` uses G_AB, ``BtoA`` uses G_BA."""
        return (self.G_AB if direction == "AtoB" else self.G_BA)(self.prepare_images(x))

    def _translate_cycle(self, real_A: Tensor, real_B: Tensor) -> dict[str, Tensor]:
        fake_B = self.G_AB(real_A)  # G(x)
        fake_A = self.G_BA(real_B)  # F(y)
        return {
            "fake_B": fake_B,
            "rec_A": self.G_BA(fake_B),
            "fake_A": fake_A,
            "rec_B": self.G_AB(fake_A),
        }

    def _eval_terms(self, real_A: Tensor, real_B: Tensor, out: dict) -> dict[str, Tensor]:
        raise NotImplementedError

    def _eval_step(self, batch: dict, prefix: str) -> dict[str, Tensor]:
        real_A, real_B = self.prepare_images(batch["A"]), self.prepare_images(batch["B"])
        out = self._translate_cycle(real_A, real_B)
        self.log_terms(prefix, self._eval_terms(real_A, real_B, out))
        return out

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        return self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        return self._eval_step(batch, "test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        out = {}
        if "A" in batch:
            out["fake_B"] = self(batch["A"], "AtoB")
        if "B" in batch:
            out["fake_A"] = self(batch["B"], "BtoA")
        return out

    def evaluation_translations(self, batch: dict) -> list[Translation]:
        """Both directions, for the Evaluation callback."""
        real_A, real_B = self.prepare_images(batch["A"]), self.prepare_images(batch["B"])
        return two_way_translations(batch, fake_B=self.G_AB(real_A), fake_A=self.G_BA(real_B))

    def sample_panels(self, batch: dict) -> dict[str, list[Tensor]]:
        real_A, real_B = self.prepare_images(batch["A"]), self.prepare_images(batch["B"])
        out = self._translate_cycle(real_A, real_B)
        return {
            "A->B": [real_A, out["fake_B"], out["rec_A"]],
            "B->A": [real_B, out["fake_A"], out["rec_B"]],
        }
