"""CycleGAN (Zhu, Park, Isola & Efros, ICCV 2017): unpaired image-to-image translation.

Objective (eq. 3): L_GAN(G, D_Y) + L_GAN(F, D_X) + lambda * L_cyc(G, F), with LSGAN
adversarial terms, the identity term of section 5.2, and D updated on a 50-image history.
Here G = ``G_AB`` (A -> B), F = ``G_BA`` (B -> A), D_Y = ``D_B``, D_X = ``D_A``.

One device:  gan-suite fit --config experiments/cyclegan.yaml --data.data_dir DATA
Multi-GPU:   gan-suite fit --config experiments/cyclegan.yaml --config experiments/presets/ddp.yaml
"""

from __future__ import annotations

import torch
from torch import Tensor

from gan_suite.losses import (
    cycle_loss,
    discriminator_adv_loss,
    generator_adv_loss,
    identity_loss,
    linear_decay_factor,
)
from gan_suite.models.base import TwoDomainTranslator
from gan_suite.models.checks import ScheduleHorizon
from gan_suite.models.phases import Phase
from gan_suite.nets import PatchDiscriminator, ResnetGenerator, init_weights


class CycleGAN(TwoDomainTranslator):
    """Two ResNet generators and two PatchGAN discriminators trained with manual optimisation.

    Args:
        in_channels: channels of domain A images.
        out_channels: channels of domain B images.
        ngf: generator width (filters of its first conv; 64 in the paper).
        n_blocks: residual blocks of each generator (9 at 256x256, 6 at 128x128).
        ndf: discriminator width (64 in the paper).
        n_layers_d: strided conv layers of the PatchGAN (3 = 70x70 receptive field).
        norm: normalisation of G and D (``instance`` in the paper).
        gan_mode: adversarial loss: ``lsgan`` (paper), ``vanilla``, ``hinge``.
        cycle_weight_A: lambda of the A -> B -> A cycle loss (10).
        cycle_weight_B: lambda of the B -> A -> B cycle loss (10).
        identity_weight: identity loss weight as a fraction of the cycle weight (0.5).
        d_loss_scale: factor on each discriminator's loss (0.5: D learns slower than G).
        lr: Adam learning rate of G and D (2e-4).
        betas: Adam betas (0.5, 0.999).
        n_epochs_constant: epochs at the initial learning rate (100).
        n_epochs_decay: epochs of linear decay to zero after those (100).
        init_type: weight initialisation (``normal`` = N(0, init_gain)).
        init_gain: standard deviation of the initial weights (0.02).
        channels_last: run the nets in channels_last memory format (faster on GPUs).
        compile: ``torch.compile`` each net in place at setup (see
            :mod:`gan_suite.models.speed`; on CPU it needs a C++ compiler).
        adam_impl: Adam kernel: ``auto`` (fused where torch has one), ``for-loop``,
            ``foreach`` or ``fused``.
        gradient_checkpointing: recompute the generators' residual blocks in the backward
            pass instead of storing their activations (less memory, same results).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        ngf: int = 64,
        n_blocks: int = 9,
        ndf: int = 64,
        n_layers_d: int = 3,
        norm: str = "instance",
        gan_mode: str = "lsgan",
        cycle_weight_A: float = 10.0,
        cycle_weight_B: float = 10.0,
        identity_weight: float = 0.5,
        d_loss_scale: float = 0.5,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        n_epochs_constant: int = 100,
        n_epochs_decay: int = 100,
        init_type: str = "normal",
        init_gain: float = 0.02,
        channels_last: bool = False,
        compile: bool = False,
        adam_impl: str = "auto",
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__(channels_last=channels_last, compile=compile, adam_impl=adam_impl)
        self.save_hyperparameters()
        gc = {"gradient_checkpointing": gradient_checkpointing}
        self.G_AB = ResnetGenerator(in_channels, out_channels, ngf, n_blocks, norm, **gc)
        self.G_BA = ResnetGenerator(out_channels, in_channels, ngf, n_blocks, norm, **gc)
        self.D_A = PatchDiscriminator(in_channels, ndf, n_layers_d, norm)
        self.D_B = PatchDiscriminator(out_channels, ndf, n_layers_d, norm)
        for net in (self.G_AB, self.G_BA, self.D_A, self.D_B):
            init_weights(net, init_type, init_gain)
        if identity_weight > 0 and in_channels != out_channels:
            raise ValueError(
                "identity_weight > 0 needs in_channels == out_channels "
                f"(got {in_channels} and {out_channels}); set identity_weight: 0"
            )

    # -- the algorithm ------------------------------------------------------------------
    def declare_phases(self) -> list[Phase]:
        """Every iteration: both generators (Gmain), then both discriminators (Dmain)."""
        return [Phase("Gmain", optimizer=0), Phase("Dmain", optimizer=1)]

    def training_step(self, batch: dict, batch_idx: int) -> None:
        real_A, real_B = self.prepare_images(batch["A"]), self.prepare_images(batch["B"])
        fake_A, fake_B = self.generator_phase(real_A, real_B)  # Gmain
        if self.runs("Dmain"):
            opt_d = self.phase_optimizer("Dmain")
            self._discriminator_step(opt_d, real_A, real_B, fake_A, fake_B)

    def _cycle_terms(self, real_A: Tensor, real_B: Tensor, out: dict[str, Tensor]) -> dict:
        hp = self.hparams
        terms = {
            "cycle_A": cycle_loss(out["rec_A"], real_A) * hp.cycle_weight_A,
            "cycle_B": cycle_loss(out["rec_B"], real_B) * hp.cycle_weight_B,
        }
        if hp.identity_weight > 0:
            # G_AB should leave a B image unchanged, G_BA an A image (section 5.2)
            terms["idt_A"] = (
                identity_loss(self.G_BA(real_A), real_A) * hp.cycle_weight_A * hp.identity_weight
            )
            terms["idt_B"] = (
                identity_loss(self.G_AB(real_B), real_B) * hp.cycle_weight_B * hp.identity_weight
            )
        return terms

    def _generator_step(self, opt_g, real_A: Tensor, real_B: Tensor) -> tuple[Tensor, Tensor]:
        """Both generators at once, D fixed: adversarial + cycle + identity (+ extra terms)."""
        with self.toggled_optimizer(opt_g):
            out = self._translate_cycle(real_A, real_B)
            terms = {
                "adv_AB": generator_adv_loss(self.D_B(out["fake_B"]), self.hparams.gan_mode),
                "adv_BA": generator_adv_loss(self.D_A(out["fake_A"]), self.hparams.gan_mode),
                **self._cycle_terms(real_A, real_B, out),
            }
            terms.update(self.extra_generator_terms(real_A, real_B, out))
            terms["g_loss"] = sum(v for k, v in terms.items() if not k.startswith("_"))
            self.log_terms(
                "train", {k.lstrip("_"): v for k, v in terms.items()}, prog_bar=("g_loss",)
            )
            self.backward_and_step(opt_g, terms["g_loss"])
        return out["fake_A"].detach(), out["fake_B"].detach()

    def extra_generator_terms(self, real_A: Tensor, real_B: Tensor, out: dict) -> dict:
        """Terms a CycleGAN extension adds to G's objective (OP-GAN's beta * L_S); a name
        starting with ``_`` is logged but not added to the loss."""
        return {}

    def _discriminator_step(self, opt_d, real_A, real_B, fake_A, fake_B) -> None:
        """D_A and D_B (disjoint parameters, one optimizer), each on history-buffer fakes."""
        mode, scale = self.hparams.gan_mode, self.hparams.d_loss_scale
        fake_A = self.query_history("A", fake_A)
        fake_B = self.query_history("B", fake_B)
        with self.toggled_optimizer(opt_d):
            terms = {
                "d_A": discriminator_adv_loss(self.D_A(real_A), self.D_A(fake_A), mode) * scale,
                "d_B": discriminator_adv_loss(self.D_B(real_B), self.D_B(fake_B), mode) * scale,
            }
            terms["d_loss"] = terms["d_A"] + terms["d_B"]
            self.log_terms("train", terms, prog_bar=("d_loss",))
            self.backward_and_step(opt_d, terms["d_loss"])

    def query_history(self, domain: str, fakes: Tensor) -> Tensor:
        """Fakes for D, through the HistoryBuffer callback when the trainer has one."""
        history = getattr(self, "history", None)
        return history.query(domain, fakes) if history is not None else fakes

    def on_fit_start(self) -> None:
        if getattr(self, "history", None) is None:
            from lightning.pytorch.utilities import rank_zero_warn

            rank_zero_warn(
                "CycleGAN: no HistoryBuffer callback configured; discriminators see only the "
                "latest fakes (the paper uses a 50-image history: add "
                "gan_suite.callbacks.HistoryBuffer to trainer.callbacks)"
            )

    # -- evaluation ---------------------------------------------------------------------
    def _eval_terms(self, real_A: Tensor, real_B: Tensor, out: dict) -> dict[str, Tensor]:
        return self._cycle_terms(real_A, real_B, out)

    def translator_optimizers(self) -> tuple[torch.optim.Adam, torch.optim.Adam]:
        """Adam of both generators and Adam of both discriminators (``lr``, ``betas``)."""
        hp = self.hparams
        opt_g = self.adam(
            [*self.G_AB.parameters(), *self.G_BA.parameters()], lr=hp.lr, betas=tuple(hp.betas)
        )
        opt_d = self.adam(
            [*self.D_A.parameters(), *self.D_B.parameters()], lr=hp.lr, betas=tuple(hp.betas)
        )
        return opt_g, opt_d

    def input_size_requirements(self) -> list:
        """The ResNet generators and the PatchGANs see every training and evaluation image."""
        hp = self.hparams
        return [
            (
                f"{type(self).__name__}'s ResNet generators with 2 stride-2 convs",
                self.G_AB.input_sizes(),
            ),
            (
                f"{type(self).__name__}'s PatchGANs with n_layers_d={hp.n_layers_d}",
                self.D_A.input_sizes(),
            ),
        ]

    def schedule_horizons(self) -> list[ScheduleHorizon]:
        """The linear decay reaches 0 after ``n_epochs_constant + n_epochs_decay`` epochs."""
        hp = self.hparams
        return [
            ScheduleHorizon(
                f"{type(self).__name__}'s linear learning-rate decay",
                "epoch",
                hp.n_epochs_constant + hp.n_epochs_decay,
                f"model.init_args.n_epochs_constant={hp.n_epochs_constant} + "
                f"model.init_args.n_epochs_decay={hp.n_epochs_decay}",
            )
        ]

    def configure_optimizers(self):
        hp = self.hparams
        opt_g, opt_d = self.translator_optimizers()

        def rule(epoch: int) -> float:
            return linear_decay_factor(epoch, hp.n_epochs_constant, hp.n_epochs_decay)

        # per epoch, as the paper (section 7: "linearly decay the rate to zero")
        scheds = [
            {"scheduler": torch.optim.lr_scheduler.LambdaLR(o, rule), "interval": "epoch"}
            for o in (opt_g, opt_d)
        ]
        return [opt_g, opt_d], scheds
