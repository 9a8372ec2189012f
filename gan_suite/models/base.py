"""What every paper's LightningModule shares: declared phases, one iteration counter, per-rank
random streams, per-iteration or per-epoch LR schedules, manual-optimisation plumbing, logging.

A paper's module declares its phases (:meth:`GANModule.declare_phases`, see
:mod:`gan_suite.models.phases`) and writes its ``training_step`` like the paper's algorithm box:

    def training_step(self, batch, batch_idx):
        if self.runs("Gmain"):
            with self.phase("Gmain") as opt_g:
                ...  # forward, losses, self.log_terms(...), self.backward_and_step(opt_g, loss)
        if self.runs("Dmain"):
            ...

Learning-rate schedules are returned by ``configure_optimizers`` in Lightning's own format,
``{"scheduler": s, "interval": "step" | "epoch"}`` (a bare scheduler is per epoch); the base
steps each after every iteration ("step": one training batch, not one optimizer step) or
every epoch, so the schedule reads in the paper's unit.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
import torch
from torch import Tensor

from gan_suite.eval.metrics import Translation, two_way_translations
from gan_suite.losses import check_finite
from gan_suite.models.phases import Phase, check_phases


class GANModule(L.LightningModule):
    """Base of the suite's papers.

    ``iteration`` (a buffer: saved in checkpoints) counts training batches; Lightning's
    ``global_step`` counts optimizer steps (2-3 per GAN batch) and is not used for schedules.
    Under DDP, :meth:`setup` offsets the global torch random stream by the rank once, so every
    rank draws its own noise and samples (``seed_everything`` gives all ranks the same seed).
    """

    def __init__(self, channels_last: bool = False) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.channels_last = channels_last
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self._phases: dict[str, Phase] | None = None
        self._disabled_phases: set[str] = set()

    # -- phases ---------------------------------------------------------------------------
    def declare_phases(self) -> list[Phase]:
        """The paper's phases in the order of its algorithm box (see :mod:`.phases`)."""
        raise NotImplementedError

    @property
    def phases(self) -> dict[str, Phase]:
        """Name -> :class:`Phase`, declared once (hyperparameters are fixed by then)."""
        if self._phases is None:
            n_optimizers = None
            if self._trainer is not None and self.trainer.optimizers:
                n_optimizers = len(self.trainer.optimizers)
            self._phases = check_phases(self.declare_phases(), n_optimizers)
        return self._phases

    def set_phases_enabled(self, enabled: dict[str, bool]) -> None:
        """Switch phases on or off (a training-regime callback, e.g. BDL's K x N loop).

        Raises:
            KeyError: a name that is not a declared phase.
        """
        for name, on in enabled.items():
            if name not in self.phases:
                raise KeyError(f"no phase {name!r}; declared: {', '.join(self.phases)}")
            (self._disabled_phases.discard if on else self._disabled_phases.add)(name)

    def runs(self, name: str) -> bool:
        """Whether phase ``name`` steps in the current iteration."""
        phase = self.phases[name]
        return name not in self._disabled_phases and phase.runs_at(int(self.iteration))

    def phase_optimizer(self, name: str):
        """The (Lightning-wrapped) optimizer of phase ``name``."""
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        return opts[self.phases[name].optimizer]

    @contextmanager
    def phase(self, name: str) -> Iterator:
        """Toggle phase ``name``'s optimizer (the other nets are frozen) and yield it."""
        opt = self.phase_optimizer(name)
        with self.toggled_optimizer(opt):
            yield opt

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """One iteration done: count it and step the per-iteration LR schedules."""
        self.iteration += 1
        self._step_schedulers("step")

    def on_train_epoch_end(self) -> None:
        """Step the per-epoch LR schedules (CycleGAN's linear decay is per epoch)."""
        self._step_schedulers("epoch")

    def _step_schedulers(self, interval: str) -> None:
        configs = self.trainer.lr_scheduler_configs if self._trainer is not None else []
        stepped = False
        for config in configs:
            if config.interval == interval:
                with warnings.catch_warnings():
                    # a phase that skips iterations (StarGAN's G: every n_critic-th) has not
                    # stepped its optimizer yet; the schedule still follows the iteration
                    # count by design, which is what PyTorch's order warning is about
                    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
                    config.scheduler.step()
                stepped = True
        if stepped and interval == "epoch":
            first = self.optimizers(use_pl_optimizer=False)
            first = first[0] if isinstance(first, list) else first
            self.log("train/lr", first.param_groups[0]["lr"])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["gan_suite_disabled_phases"] = sorted(self._disabled_phases)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._disabled_phases = set(checkpoint.get("gan_suite_disabled_phases", []))

    # -- plumbing -------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        trainer = self._trainer
        if stage == "fit" and trainer is not None and trainer.world_size > 1:
            # one place for per-rank streams: noise, neighbour rows, patch pairs, ...
            torch.manual_seed(torch.initial_seed() + 1_000_003 * trainer.global_rank)

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

    @torch.no_grad()
    def translate_without_grad(self, real_A: Tensor, real_B: Tensor) -> tuple[Tensor, Tensor]:
        """(G_BA(B), G_AB(A)) for an iteration whose generator phase does not run."""
        return self.G_BA(real_B), self.G_AB(real_A)

    def generator_phase(self, real_A: Tensor, real_B: Tensor) -> tuple[Tensor, Tensor]:
        """Gmain if it runs this iteration, else the translations without a graph; returns
        the detached fakes (G_BA(B), G_AB(A)) that the other phases see."""
        if self.runs("Gmain"):
            return self._generator_step(self.phase_optimizer("Gmain"), real_A, real_B)
        return self.translate_without_grad(real_A, real_B)

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

    def evaluation_outputs(self, batch: dict) -> list[Translation]:
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
