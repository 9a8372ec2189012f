"""Conditional GAN (Mirza & Osindero 2014): G(z|y) and D(x|y) trained on eq. 2,

    min_G max_D  E_x[log D(x|y)] + E_z[log(1 - D(G(z|y)|y))],

with the generator's non-saturating form -E[log D(G(z|y)|y)] (Goodfellow et al. 2014, section
3), one D step then one G step per batch, by SGD with the paper's schedules (section 4.1):
learning rate 0.1 divided by 1.00004 every batch down to 1e-6, momentum 0.5 rising linearly
to 0.7, batches of 100.

- :class:`CGAN`: class-conditional images. ``arch: mlp`` is the paper's MNIST model (section
  4.1, z ~ U[0, 1]^100: "a uniform distribution within the unit hypercube", 784 sigmoid
  outputs on [0, 1] pixels); ``arch: conv`` a DCGAN-style variant for 32 px+ and RGB.
- :class:`ConditionalGANBase`: the training shared with the multimodal model of section 4.2
  (image features -> word vectors), :class:`~gan_suite.models.cgan_vectors.CGANVectors`.

Evaluation is the :class:`~gan_suite.callbacks.Evaluation` callback's: the model returns its
samples through :meth:`CGAN.evaluation_outputs` (one G(z, y) per real image, for that image's
class) and :meth:`CGAN.sample_classes` (for the Parzen-window log-likelihood of section 4.1 /
Table 1, ``parzen_ll``); the callback scores the class accuracy under an evaluator trained on
the real training images (``class_acc``, per class, beside ``class_acc_real`` and the chance
level ``class_acc_shuffled``) and FID/KID in the evaluator's features.

One device:  gan-suite fit --config experiments/cgan.yaml [--data.init_args.source mnist ...]
Multi-GPU:   ... --config experiments/presets/ddp.yaml
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_suite.eval.protocol import ClassSamples
from gan_suite.losses import (
    discriminator_adv_loss,
    exponential_decay_lr,
    generator_adv_loss,
    linear_momentum,
)
from gan_suite.models.base import GANModule
from gan_suite.models.checks import ScheduleHorizon
from gan_suite.models.phases import Phase
from gan_suite.nets.cgan_nets import (
    ConditionalConvDiscriminator,
    ConditionalConvGenerator,
    ConditionalMLPDiscriminator,
    ConditionalMLPGenerator,
    init_uniform,
)

ARCHS = ("mlp", "conv")


class ConditionalGANBase(GANModule):
    """Training of a conditional GAN; subclasses build ``G``/``D`` and read batches.

    Subclasses define ``real_and_condition(batch) -> (x, y)``, ``generate(z, y)`` and
    ``discriminate(x, y)``. ``iteration`` (batches trained) is a buffer, so the per-batch
    learning-rate decay resumes from a checkpoint where it stopped; the momentum follows the
    epoch, which Lightning restores itself.
    """

    G: nn.Module
    D: nn.Module

    # -- noise and the schedules ----------------------------------------------------------
    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n, z_dim) noise: U[0, 1) (section 4.1's unit hypercube) or N(0, 1) (section 4.2)."""
        shape, dev = (n, self.hparams.z_dim), self.device
        if self.hparams.noise == "uniform":
            return torch.rand(shape, generator=generator).to(dev)
        return torch.randn(shape, generator=generator).to(dev)

    def _apply_momentum(self) -> None:
        """SGD momentum for this epoch (the learning rate is a per-iteration scheduler)."""
        hp = self.hparams
        if hp.optimizer == "adam":
            return
        momentum = linear_momentum(
            self.current_epoch,
            hp.momentum,
            hp.final_momentum,
            hp.momentum_start_epoch,
            hp.momentum_saturate_epoch,
        )
        for opt in self.optimizers():
            for group in opt.param_groups:
                group["momentum"] = momentum
        self.log("train/momentum", momentum, batch_size=self._batch_size)
        self.log("train/lr", opt.param_groups[0]["lr"], batch_size=self._batch_size)

    # -- the algorithm --------------------------------------------------------------------
    def declare_phases(self) -> list[Phase]:
        """Every iteration: one D step (Dmain), then one G step (Gmain)."""
        return [Phase("Dmain", optimizer=1), Phase("Gmain", optimizer=0)]

    def training_step(self, batch: dict, batch_idx: int) -> None:
        real, cond = self.real_and_condition(batch)
        self._apply_momentum()
        if self.runs("Dmain"):
            self._discriminator_step(self.phase_optimizer("Dmain"), real, cond)
        if self.runs("Gmain"):
            self._generator_step(self.phase_optimizer("Gmain"), cond)

    def _discriminator_step(self, opt_d, real: Tensor, cond: Tensor) -> None:
        """Ascend eq. 2 in D: BCE of D(x|y) against 1 and of D(G(z|y)|y) against 0."""
        with self.toggled_optimizer(opt_d):
            with torch.no_grad():  # G is fixed in this step: no graph through it
                fake = self.generate(self.sample_noise(real.shape[0]), cond)
            real_logits, fake_logits = self.discriminate(real, cond), self.discriminate(fake, cond)
            terms = {"d_loss": discriminator_adv_loss(real_logits, fake_logits, "vanilla")}
            self.log_terms("train", terms, prog_bar=("d_loss",))
            self.log("train/d_real", torch.sigmoid(real_logits).mean(), batch_size=len(real))
            self.log("train/d_fake", torch.sigmoid(fake_logits).mean(), batch_size=len(real))
            self.backward_and_step(opt_d, terms["d_loss"])

    def _generator_step(self, opt_g, cond: Tensor) -> None:
        """Descend eq. 2 in G, non-saturating: -log D(G(z|y)|y)."""
        with self.toggled_optimizer(opt_g):
            fake = self.generate(self.sample_noise(cond.shape[0]), cond)
            terms = {"g_loss": generator_adv_loss(self.discriminate(fake, cond), "vanilla")}
            self.log_terms("train", terms, prog_bar=("g_loss",))
            self.backward_and_step(opt_g, terms["g_loss"])

    def _loss_terms(self, batch: dict, prefix: str) -> None:
        real, cond = self.real_and_condition(batch)
        fake = self.generate(self.sample_noise(real.shape[0]), cond)
        fake_logits = self.discriminate(fake, cond)
        d_loss = discriminator_adv_loss(self.discriminate(real, cond), fake_logits, "vanilla")
        terms = {"d_loss": d_loss, "g_loss": generator_adv_loss(fake_logits, "vanilla")}
        self.log_terms(prefix, terms)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._loss_terms(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._loss_terms(batch, "test")

    def schedule_horizons(self) -> list[ScheduleHorizon]:
        """The exponential decay reaches its floor ``min_lr`` after
        ceil(ln(lr / min_lr) / ln(lr_decay_factor)) iterations (287,829 with the paper's
        values); the paper trains on at the floor ("down to .000001"), so a longer run is
        warned about, not refused."""
        hp = self.hparams
        if hp.optimizer != "sgd" or hp.lr_decay_factor <= 1 or not 0 < hp.min_lr < hp.lr:
            return []
        floor_at = math.ceil(math.log(hp.lr / hp.min_lr) / math.log(hp.lr_decay_factor))
        return [
            ScheduleHorizon(
                f"{type(self).__name__}'s exponential learning-rate decay",
                "iteration",
                floor_at,
                f"model.init_args.lr={hp.lr} / model.init_args.lr_decay_factor="
                f"{hp.lr_decay_factor}**i down to model.init_args.min_lr={hp.min_lr}",
                after=f"the floor min_lr={hp.min_lr}",
                paper_trains_past=True,
            )
        ]

    def configure_optimizers(self):
        hp = self.hparams
        if hp.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer={hp.optimizer!r}: expected 'sgd' (paper) or 'adam'")
        if hp.optimizer == "adam":
            opts = [
                self.adam(net.parameters(), lr=hp.lr, betas=tuple(hp.adam_betas))
                for net in (self.G, self.D)
            ]
            return opts
        # momentum is set per epoch by _apply_momentum
        opts = [
            torch.optim.SGD(net.parameters(), lr=hp.lr, momentum=hp.momentum)
            for net in (self.G, self.D)
        ]

        def factor(iteration: int) -> float:  # section 4.1: divided by 1.00004 every batch
            return exponential_decay_lr(iteration, hp.lr, hp.lr_decay_factor, hp.min_lr) / hp.lr

        scheds = [
            {"scheduler": torch.optim.lr_scheduler.LambdaLR(o, factor), "interval": "step"}
            for o in opts
        ]
        return opts, scheds


class CGAN(ConditionalGANBase):
    """Class-conditional image GAN: the paper's MNIST MLPs or a conditional DCGAN.

    Args:
        arch: ``mlp`` (section 4.1) or ``conv`` (DCGAN-style, y concatenated to z in G and as
            constant planes in D).
        n_classes: classes of the one-hot condition y (10).
        image_size: image side in pixels (28: 784 = 28 x 28 MLP outputs).
        channels: image channels (1; 3 for RGB data).
        output: ``sigmoid`` for [0, 1] data (the paper; data ``normalize: unit``) or ``tanh``
            for [-1, 1] data (``normalize: tanh``).
        z_dim: noise dimensions (100).
        noise: ``uniform`` on [0, 1) (paper) or ``gaussian``.
        g_z_hidden: G's ReLU units on z (200). g_cond_hidden: on y (1000).
        g_joint_hidden: G's joint ReLU layer (1200).
        g_dropout: dropout on G's joint layer output (0.5).
        d_x_units: D's maxout units on x (240). d_x_pieces: their pieces (5).
        d_cond_units: D's maxout units on y (50). d_cond_pieces: their pieces (5).
        d_joint_units: D's joint maxout units (240). d_joint_pieces: their pieces (4).
        d_dropout: dropout on D's hidden layers (0.5). d_input_dropout: on x (0.5).
        g_init_range: G's weights ~ U(-r, r) (0.05). d_init_range: D's (0.005).
        ngf: conv G width. ndf: conv D width.
        optimizer: ``sgd`` (paper, with the schedules) or ``adam`` (constant lr; conv arch).
        lr: initial learning rate (0.1; Adam: 2e-4).
        lr_decay_factor: lr divided by this every batch (1.00004). min_lr: floor (1e-6).
        momentum: initial SGD momentum (0.5). final_momentum: reached at saturation (0.7).
        momentum_start_epoch: epoch the rise starts (1). momentum_saturate_epoch: ends (250).
        adam_betas: Adam betas when ``optimizer: adam``.
        parzen_samples_per_class: samples per class of the Parzen-window estimate the
            Evaluation callback computes (1000; 0: none).
        eval_seed: seed of the evaluation noise (the same z at every evaluation).
        channels_last: run the nets in channels_last memory format.
        compile: ``torch.compile`` each net in place at setup (see
            :mod:`gan_suite.models.speed`; on CPU it needs a C++ compiler).
        adam_impl: Adam kernel when ``optimizer: adam``: ``auto`` (fused where torch has
            one), ``for-loop``, ``foreach`` or ``fused``.
    """

    sample_panels_names = ("rows: z, columns: class y",)

    def __init__(
        self,
        arch: str = "mlp",
        n_classes: int = 10,
        image_size: int = 28,
        channels: int = 1,
        output: str = "sigmoid",
        z_dim: int = 100,
        noise: str = "uniform",
        g_z_hidden: int = 200,
        g_cond_hidden: int = 1000,
        g_joint_hidden: int = 1200,
        g_dropout: float = 0.5,
        d_x_units: int = 240,
        d_x_pieces: int = 5,
        d_cond_units: int = 50,
        d_cond_pieces: int = 5,
        d_joint_units: int = 240,
        d_joint_pieces: int = 4,
        d_dropout: float = 0.5,
        d_input_dropout: float = 0.5,
        g_init_range: float = 0.05,
        d_init_range: float = 0.005,
        ngf: int = 64,
        ndf: int = 64,
        optimizer: str = "sgd",
        lr: float = 0.1,
        lr_decay_factor: float = 1.00004,
        min_lr: float = 1e-6,
        momentum: float = 0.5,
        final_momentum: float = 0.7,
        momentum_start_epoch: int = 1,
        momentum_saturate_epoch: int = 250,
        adam_betas: tuple[float, float] = (0.5, 0.999),
        parzen_samples_per_class: int = 1000,
        eval_seed: int = 0,
        channels_last: bool = False,
        compile: bool = False,
        adam_impl: str = "auto",
    ) -> None:
        super().__init__(channels_last=channels_last, compile=compile, adam_impl=adam_impl)
        self.save_hyperparameters()
        if arch not in ARCHS:
            raise ValueError(f"arch={arch!r}: expected one of {', '.join(ARCHS)}")
        if noise not in ("uniform", "gaussian"):
            raise ValueError(f"noise={noise!r}: expected 'uniform' or 'gaussian'")
        pixels = channels * image_size**2
        if arch == "mlp":
            self.G = init_uniform(
                ConditionalMLPGenerator(
                    z_dim,
                    n_classes,
                    pixels,
                    g_z_hidden,
                    g_cond_hidden,
                    g_joint_hidden,
                    g_dropout,
                    output,
                ),
                g_init_range,
            )
            self.D = init_uniform(
                ConditionalMLPDiscriminator(
                    pixels,
                    n_classes,
                    d_x_units,
                    d_x_pieces,
                    d_cond_units,
                    d_cond_pieces,
                    d_joint_units,
                    d_joint_pieces,
                    d_dropout,
                    d_input_dropout,
                ),
                d_init_range,
            )
        else:
            self.G = ConditionalConvGenerator(z_dim, n_classes, image_size, channels, ngf, output)
            self.D = ConditionalConvDiscriminator(n_classes, image_size, channels, ndf)

    # -- the conditional nets -------------------------------------------------------------
    def one_hot(self, labels: Tensor) -> Tensor:
        return F.one_hot(labels.long(), self.hparams.n_classes).to(self.dtype)

    def generate(self, z: Tensor, cond: Tensor) -> Tensor:
        """(N, z_dim), (N, n_classes) one-hot -> images (N, C, H, W) in the data's range."""
        hp = self.hparams
        return self.G(z, cond).view(-1, hp.channels, hp.image_size, hp.image_size)

    def discriminate(self, x: Tensor, cond: Tensor) -> Tensor:
        """Images (N, C, H, W), one-hot (N, n_classes) -> logits (N,)."""
        return self.D(x.flatten(1) if self.hparams.arch == "mlp" else x, cond)

    def forward(self, labels: Tensor, z: Tensor | None = None) -> Tensor:
        """Images of the classes ``labels`` (N,), with fresh noise unless ``z`` is given."""
        z = self.sample_noise(len(labels)) if z is None else z
        return self.generate(z, self.one_hot(labels.to(self.device)))

    def real_and_condition(self, batch: dict) -> tuple[Tensor, Tensor]:
        labels = batch["label"]
        if labels.dim() != 1 or bool((labels < 0).any()):
            raise ValueError(
                "CGAN needs a class label for every training image: got "
                f"label shape {tuple(labels.shape)} with hidden (-1) labels or attribute "
                "vectors; use a class source with data.labelled_fraction: 1.0"
            )
        return self.prepare_images(batch["image"]), self.one_hot(labels)

    def input_size_requirements(self) -> list:
        """D takes images of exactly image_size (the MLP a fixed vector of C x S x S)."""
        hp = self.hparams
        if hp.arch == "mlp":
            return [("cGAN's MLP discriminator", self.D.input_sizes(hp.channels))]
        return [("cGAN's conv discriminator", self.D.input_sizes())]

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer else None
        self._check_data(dm)
        super().setup(stage)  # after the checks above, whose messages are more specific

    def _check_data(self, dm) -> None:
        if dm is None:
            return
        expected = "unit" if self.hparams.output == "sigmoid" else "tanh"
        for field, want in (
            ("normalize", expected),
            ("channels", self.hparams.channels),
            ("image_size", self.hparams.image_size),
        ):
            have = getattr(dm, field, want)
            if have != want:
                raise ValueError(
                    f"data.{field}={have!r} does not match the model (model.output="
                    f"{self.hparams.output!r}, channels={self.hparams.channels}, image_size="
                    f"{self.hparams.image_size}): set data.init_args.{field}: {want!r}"
                )

    # -- what callbacks ask ---------------------------------------------------------------
    def sample_panels(self, batch: dict) -> dict[str, list[Tensor]]:
        """One column per class, one row per fixed z (as many as the batch has images)."""
        n = batch["image"].shape[0]
        z = self.sample_noise(n, torch.Generator().manual_seed(self.hparams.eval_seed + 1))
        columns = []
        for k in range(self.hparams.n_classes):
            labels = torch.full((n,), k, dtype=torch.long, device=self.device)
            columns.append(self.to_display(self(labels, z)))
        return {"G(z, y) per class": columns}

    def to_display(self, images: Tensor) -> Tensor:
        """Images in the data's range -> (N, 3, H, W) in [-1, 1] (SampleGrid, evaluators)."""
        x = images * 2 - 1 if self.hparams.output == "sigmoid" else images
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x

    def evaluation_outputs(self, batch: dict) -> list[ClassSamples]:
        """For the Evaluation callback: one G(z, y) per real image, requested for that image's
        class (so the classes are as frequent as in the data), with seeded noise; and the
        Parzen request of section 4.1 (``parzen_samples_per_class``)."""
        labels = batch["label_true"]
        real = self.prepare_images(batch["image"])
        generator = torch.Generator().manual_seed(self.hparams.eval_seed + int(batch["index"][0]))
        fake = self.generate(self.sample_noise(len(labels), generator), self.one_hot(labels))
        dm = self._trainer.datamodule if self._trainer is not None else None
        return [
            ClassSamples(
                "samples",
                self.to_display(fake),
                labels,
                self.to_display(real),
                labels,
                class_names=getattr(dm, "class_names", None),
                parzen_samples_per_class=self.hparams.parzen_samples_per_class,
            )
        ]

    @torch.no_grad()
    def sample_classes(self, labels: Tensor, seed: int, chunk: int = 500) -> Tensor:
        """Seeded samples of the classes ``labels`` (N,), (N, 3, H, W) in [-1, 1] (Parzen)."""
        g = torch.Generator().manual_seed(self.hparams.eval_seed + seed)
        out = [
            self.to_display(
                self.generate(self.sample_noise(len(part), g), self.one_hot(part.to(self.device)))
            )
            for part in labels.split(chunk)
        ]
        return torch.cat(out).float()

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        return {"fake": self(batch["label_true"]), "label": batch["label_true"]}
