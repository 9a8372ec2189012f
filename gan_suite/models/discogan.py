"""DiscoGAN (Kim, Cha, Kim, Lee & Kim, ICML 2017): discovering cross-domain relations.

Two 64x64 encoder-decoder generators G_AB, G_BA and two sigmoid discriminators D_A, D_B.
Per direction (paper eq. 1-4): L_CONST_A = d(G_BA(G_AB(x_A)), x_A) with a distance d
(MSE, cosine or hinge) and L_GAN_B = -E[log D_B(G_AB(x_A))]; the generator objective is
eq. 5, L_G = L_GAN_B + L_CONST_A + L_GAN_A + L_CONST_B, and the discriminators' eq. 6,
L_D = L_D_A + L_D_B with the standard BCE GAN loss.

Scale as in the official code (SKTBrain/DiscoGAN, ``discogan/image_translation.py``), whose
images are in [0, 1] with sigmoid outputs where the suite's are in [-1, 1] with tanh: d is
computed as if on [0, 1] images (MSE / 4; see ``discogan_reconstruction_loss``), so L_CONST
weighs against L_GAN as there, and each discriminator's real and fake BCE terms are halved
(``d_loss_scale`` 0.5, the official ``0.5 * BCE(real) + 0.5 * BCE(fake)``).

Three options reproduce the official code's training (all off by default, the paper's text):
``fm_weight`` mixes a feature-matching term into the adversarial term, ``recon_weight_schedule``
weighs reconstruction against adversarial terms by a curriculum (0.01, then 0.5 after 10k
batches), and ``d_update_interval`` updates D only every n-th batch (3 in the official code).

One device:  gan-suite fit --config experiments/discogan.yaml --data.data_dir DATA
Multi-GPU:   gan-suite fit --config experiments/discogan.yaml --config experiments/presets/ddp.yaml
"""

from __future__ import annotations

import torch
from torch import Tensor

from gan_suite.losses import (
    discogan_reconstruction_loss,
    discriminator_adv_loss,
    feature_matching_loss,
    generator_adv_loss,
    recon_rate_schedule,
)
from gan_suite.models.base import TwoDomainTranslator
from gan_suite.models.phases import Phase
from gan_suite.nets import init_weights
from gan_suite.nets.dcgan import DCGANDiscriminator, EncoderDecoderGenerator

RECON_DISTANCES = ("mse", "cosine", "hinge")


class DiscoGAN(TwoDomainTranslator):
    """Two encoder-decoder generators and two DCGAN discriminators, manual optimisation.

    Each training batch is one iteration. With ``d_update_interval`` 1 (the paper) it has a
    generator step (both generators) and then a discriminator step (both discriminators);
    with n > 1 (the official code), iterations ``i`` with ``i % n == 0`` have only the D step
    and the others only the G step. The iteration count is a buffer, saved in checkpoints,
    so that the curriculum and the D interval resume where they were.

    Args:
        in_channels: channels of domain A images.
        out_channels: channels of domain B images.
        ngf: generator width (first encoder conv; 64 in the paper).
        ndf: discriminator width (64 in the paper).
        recon_distance: distance of L_CONST: ``mse`` (paper's default), ``cosine``, ``hinge``,
            on the official [0, 1] image scale (hinge excepted: it needs signed values).
        fm_weight: official code's feature matching, w in (1 - w) * L_GAN + w * L_FM per
            direction (0: the paper's pure GAN loss; the official code uses 0.9).
        recon_weight_schedule: weigh each direction's loss as (1 - r) * L_GAN + r * L_CONST
            with the official curriculum r (off: the paper's eq. 5, both weights 1).
        recon_rate_start: r before ``recon_schedule_iters`` batches (0.01).
        recon_rate: r from then on (0.5).
        recon_schedule_iters: batches before r switches (10,000).
        d_update_interval: update D on every n-th batch. Default 1 (every batch): the paper's
            text describes plain alternating updates and gives no interval; the official code
            uses 3, and its G steps only on the other batches (2 of every 3); any value > 1
            does the same here.
        lr: Adam learning rate of G and D (2e-4).
        betas: Adam betas (0.5, 0.999).
        weight_decay: Adam L2 weight decay of G and D (1e-5, official code).
        d_loss_scale: factor on each discriminator's BCE(real) + BCE(fake) (0.5: the official
            code's ``0.5 * BCE(real) + 0.5 * BCE(fake)``; 1 is eq. 6 as printed).
        init_type: weight initialisation (``normal`` = N(0, init_gain), the DCGAN convention).
        init_gain: standard deviation of the initial weights (0.02).
        channels_last: run the nets in channels_last memory format (faster on GPUs).
        compile: ``torch.compile`` each net in place at setup (see
            :mod:`gan_suite.models.speed`; on CPU it needs a C++ compiler).
        adam_impl: Adam kernel: ``auto`` (fused where torch has one), ``for-loop``,
            ``foreach`` or ``fused``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        ngf: int = 64,
        ndf: int = 64,
        recon_distance: str = "mse",
        fm_weight: float = 0.0,
        recon_weight_schedule: bool = False,
        recon_rate_start: float = 0.01,
        recon_rate: float = 0.5,
        recon_schedule_iters: int = 10_000,
        d_update_interval: int = 1,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        weight_decay: float = 1e-5,
        d_loss_scale: float = 0.5,
        init_type: str = "normal",
        init_gain: float = 0.02,
        channels_last: bool = False,
        compile: bool = False,
        adam_impl: str = "auto",
    ) -> None:
        super().__init__(channels_last=channels_last, compile=compile, adam_impl=adam_impl)
        if recon_distance not in RECON_DISTANCES:
            raise ValueError(
                f"recon_distance={recon_distance!r}: expected one of {', '.join(RECON_DISTANCES)}"
            )
        if d_update_interval < 1:
            raise ValueError(f"d_update_interval={d_update_interval}: expected an integer >= 1")
        if not 0.0 <= fm_weight <= 1.0:
            raise ValueError(f"fm_weight={fm_weight}: expected a value in [0, 1]")
        if d_loss_scale <= 0:
            raise ValueError(f"d_loss_scale={d_loss_scale}: expected a value > 0")
        self.save_hyperparameters()
        self.G_AB = EncoderDecoderGenerator(in_channels, out_channels, ngf)
        self.G_BA = EncoderDecoderGenerator(out_channels, in_channels, ngf)
        self.D_A = DCGANDiscriminator(in_channels, ndf)
        self.D_B = DCGANDiscriminator(out_channels, ndf)
        for net in (self.G_AB, self.G_BA, self.D_A, self.D_B):
            init_weights(net, init_type, init_gain)

    # -- the algorithm ------------------------------------------------------------------
    def declare_phases(self) -> list[Phase]:
        """Gmain and Dmain on every iteration with ``d_update_interval`` 1 (the paper);
        otherwise the official alternation: Dmain on ``iteration % n == 0``, Gmain on the
        others."""
        n = self.hparams.d_update_interval
        if n == 1:
            return [Phase("Gmain", 0), Phase("Dmain", 1)]
        return [Phase.except_every_nth("Gmain", 0, n), Phase("Dmain", 1, interval=n)]

    def training_step(self, batch: dict, batch_idx: int) -> None:
        real_A, real_B = self.prepare_images(batch["A"]), self.prepare_images(batch["B"])
        # Gmain; on an official D-only iteration this batch's translations without a G step
        fake_A, fake_B = self.generator_phase(real_A, real_B)
        if self.runs("Dmain"):
            opt_d = self.phase_optimizer("Dmain")
            self._discriminator_step(opt_d, real_A, real_B, fake_A, fake_B)

    def updates_discriminator(self) -> bool:
        """Whether the current iteration has a D step (every ``d_update_interval``-th)."""
        return self.runs("Dmain")

    def updates_generator(self) -> bool:
        """Whether the current iteration has a G step."""
        return self.runs("Gmain")

    def current_recon_rate(self) -> float | None:
        """The curriculum's reconstruction weight r now, or None when the schedule is off."""
        hp = self.hparams
        if not hp.recon_weight_schedule:
            return None
        return recon_rate_schedule(
            int(self.iteration), hp.recon_rate_start, hp.recon_rate, hp.recon_schedule_iters
        )

    def _recon_terms(self, real_A: Tensor, real_B: Tensor, out: dict[str, Tensor]) -> dict:
        """L_CONST_A and L_CONST_B (paper eq. 2 and its mirror), unweighted, on the official
        code's [0, 1] image scale (:func:`~gan_suite.losses.discogan_reconstruction_loss`)."""
        d = self.hparams.recon_distance
        return {
            "recon_A": discogan_reconstruction_loss(out["rec_A"], real_A, d),
            "recon_B": discogan_reconstruction_loss(out["rec_B"], real_B, d),
        }

    def _adversarial_terms(self, D, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
        """L_GAN of one generator against D (eq. 3) and, if enabled, the feature-matching
        term between D's mean features of real and generated images (official code)."""
        logits, fake_feats = D(fake)
        terms = {"adv": generator_adv_loss(logits, "vanilla")}
        if self.hparams.fm_weight > 0:
            with torch.no_grad():  # the real side is a target: no graph needed
                _, real_feats = D(real)
            terms["fm"] = feature_matching_loss(real_feats, fake_feats)
        return terms

    def _gan_part(self, terms: dict[str, Tensor], direction: str) -> Tensor:
        """(1 - w) * L_GAN + w * L_FM of one direction (just L_GAN when w = 0, the paper)."""
        w = self.hparams.fm_weight
        adv = terms[f"adv_{direction}"]
        return adv if w == 0 else (1 - w) * adv + w * terms[f"fm_{direction}"]

    def _generator_step(self, opt_g, real_A: Tensor, real_B: Tensor) -> tuple[Tensor, Tensor]:
        """Both generators at once, D fixed: eq. 5, or the official weighting if enabled."""
        with self.toggled_optimizer(opt_g):
            out = self._translate_cycle(real_A, real_B)
            terms = self._recon_terms(real_A, real_B, out)  # L_CONST_A, L_CONST_B
            for direction, D, real, fake in (
                ("AB", self.D_B, real_B, out["fake_B"]),  # L_GAN_B
                ("BA", self.D_A, real_A, out["fake_A"]),  # L_GAN_A
            ):
                for name, value in self._adversarial_terms(D, real, fake).items():
                    terms[f"{name}_{direction}"] = value
            gan = self._gan_part(terms, "AB") + self._gan_part(terms, "BA")
            const = terms["recon_A"] + terms["recon_B"]
            r = self.current_recon_rate()
            if r is None:  # paper eq. 5: L_GAN_B + L_CONST_A + L_GAN_A + L_CONST_B
                g_loss = gan + const
            else:  # official code: (1 - r) * L_GAN + r * L_CONST per direction
                g_loss = (1 - r) * gan + r * const
                terms["recon_rate"] = torch.tensor(r, device=g_loss.device)
            terms["g_loss"] = g_loss
            self.log_terms("train", terms, prog_bar=("g_loss",))
            self.backward_and_step(opt_g, g_loss)
        return out["fake_A"].detach(), out["fake_B"].detach()

    def _discriminator_step(self, opt_d, real_A, real_B, fake_A, fake_B) -> None:
        """D_A and D_B (disjoint parameters, one optimizer): eq. 6 with BCE on logits, each
        discriminator's sum of real and fake terms times ``d_loss_scale`` (official: 0.5)."""
        scale = self.hparams.d_loss_scale
        with self.toggled_optimizer(opt_d):
            terms = {
                "d_A": discriminator_adv_loss(self.D_A(real_A)[0], self.D_A(fake_A)[0], "vanilla")
                * scale,
                "d_B": discriminator_adv_loss(self.D_B(real_B)[0], self.D_B(fake_B)[0], "vanilla")
                * scale,
            }
            terms["d_loss"] = terms["d_A"] + terms["d_B"]
            self.log_terms("train", terms, prog_bar=("d_loss",))
            self.backward_and_step(opt_d, terms["d_loss"])

    # -- evaluation ---------------------------------------------------------------------
    def _eval_terms(self, real_A: Tensor, real_B: Tensor, out: dict) -> dict[str, Tensor]:
        return self._recon_terms(real_A, real_B, out)

    def input_size_requirements(self) -> list:
        """The encoder-decoder generators and the DCGAN discriminators (built for 64 px)."""
        return [
            ("DiscoGAN's encoder-decoder generators", self.G_AB.input_sizes()),
            (
                "DiscoGAN's discriminators with 4 stride-2 convs and a 4x4 head",
                self.D_A.input_sizes(),
            ),
        ]

    def configure_optimizers(self):
        hp = self.hparams

        def adam(*nets):
            params = [p for net in nets for p in net.parameters()]
            return self.adam(params, lr=hp.lr, betas=tuple(hp.betas), weight_decay=hp.weight_decay)

        return [adam(self.G_AB, self.G_BA), adam(self.D_A, self.D_B)]
