"""StarGAN (Choi et al. 2018): one generator G(x, c) for every attribute combination c.

Per iteration (the paper's eqs. 1-7, the official ``solver.py`` order):

- ``Dmain`` (every iteration, the critic): ``L_D = -L_adv + lambda_cls * L_cls^r`` with the
  WGAN-GP adversarial term ``E[D_src(x)] - E[D_src(G(x, c))] - lambda_gp * GP`` (eq. 8) and
  the classification of real images under their own attributes c' (eq. 2);
- ``Gmain`` (every ``n_critic``-th iteration): ``L_G = L_adv + lambda_cls * L_cls^f +
  lambda_rec * L_rec`` with the classification of G(x, c) under the target c (eq. 3) and the
  reconstruction ``||x - G(G(x, c), c')||_1`` (eq. 4).

Targets during training are the batch's own attribute vectors in a random order (the official
code's ``label_org[randperm]``), so their statistics are the data's and the mutually exclusive
groups (hair colours) stay exclusive. At evaluation every input is translated once per
attribute: an attribute of an exclusive group is switched on (the group's others off), any
other attribute is flipped (:func:`attribute_targets`, the official ``create_labels``).

Learning rates decay per iteration, linearly to 0 over the last ``n_iterations_decay`` of
``n_iterations`` (paper: "linearly decay the learning rate to 0").

One device:  gan-suite fit --config experiments/stargan.yaml [--data.init_args.source celeba
             --data.init_args.data_dir /data/celeba]
Multi-GPU:   ... --config experiments/presets/ddp.yaml
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_suite.eval.protocol import AttributeTranslation
from gan_suite.losses import (
    attribute_classification_loss,
    discriminator_adv_loss,
    generator_adv_loss,
    gradient_penalty,
    linear_decay_to_zero,
)
from gan_suite.models.base import GANModule
from gan_suite.models.checks import ScheduleHorizon
from gan_suite.models.phases import Phase
from gan_suite.nets.stargan import (
    StarGANDiscriminator,
    StarGANGenerator,
    check_discriminator_size,
)

CELEBA_ATTRIBUTES = ["Black_Hair", "Blond_Hair", "Brown_Hair", "Male", "Young"]


def attribute_targets(c_org: Tensor, exclusive_groups: list[list[int]]) -> list[Tensor]:
    """One target per attribute for each input (StarGAN's test protocol).

    Target a of input i: if a belongs to an exclusive group, a is set to 1 and the group's
    other attributes to 0; otherwise a is flipped. Every other attribute keeps its value.

    Args:
        c_org: (N, A) 0/1 original attributes.
        exclusive_groups: lists of attribute indices of which at most one is 1.

    Returns:
        A tensors (N, A), the a-th asking for attribute a to change.
    """
    group_of = {a: group for group in exclusive_groups for a in group}
    targets = []
    for a in range(c_org.shape[1]):
        c = c_org.clone()
        if a in group_of:
            c[:, group_of[a]] = 0
            c[:, a] = 1
        else:
            c[:, a] = 1 - c[:, a]
        targets.append(c)
    return targets


class StarGAN(GANModule):
    """StarGAN on binary attributes (CelebA-style), WGAN-GP, Adam, n_critic D steps per G step.

    Args:
        attributes: names of the A attributes c conditions on, in the data's order (CelebA:
            Black_Hair, Blond_Hair, Brown_Hair, Male, Young); checked against the data module.
        exclusive_groups: groups of attribute names of which at most one is on (the hair
            colours); evaluation targets keep them exclusive.
        image_size: side of the square images (128 in the paper); a multiple of
            ``2**d_repeat_num``.
        channels: image channels (3).
        g_conv_dim: G's first-layer channels (64). d_conv_dim: D's (64).
        g_repeat_num: G's residual blocks (6). d_repeat_num: D's stride-2 convs (6 at 128 px).
        cls_weight: lambda_cls, weight of the attribute classification terms (1).
        rec_weight: lambda_rec, weight of the reconstruction L1 (10).
        gp_weight: lambda_gp, weight of the gradient penalty (10).
        g_lr: G's Adam learning rate (1e-4). d_lr: D's (1e-4).
        beta1, beta2: Adam betas (0.5, 0.999).
        n_critic: D steps per G step (5).
        n_iterations: iterations (batches) of the schedule (200,000).
        n_iterations_decay: the last iterations over which the learning rates decay linearly
            to 0 (100,000).
        label_kind: ``attributes`` (CelebA: binary attributes, BCE per attribute) or
            ``class`` (RaFD: one class of ``attributes`` per image, c its one-hot vector,
            softmax cross-entropy as the official code; the data's class names must equal
            ``attributes``).
        eval_attributes: translate each evaluation input once per attribute (A translations
            per image) - the official test protocol.
        channels_last: convert the nets to channels_last memory format.
        compile: ``torch.compile`` each net in place at setup (see
            :mod:`gan_suite.models.speed`; on CPU it needs a C++ compiler).
        adam_impl: Adam kernel: ``auto`` (fused where torch has one), ``for-loop``,
            ``foreach`` or ``fused``.
        gradient_checkpointing: recompute the generators' residual blocks in the backward
            pass instead of storing their activations (less memory, same results).

    Raises:
        ValueError: unknown names in ``exclusive_groups``, or an image size D cannot take.
    """

    sample_panels_names = ("input | G(x, c) with each attribute changed",)

    def __init__(
        self,
        attributes: list[str] | None = None,
        exclusive_groups: list[list[str]] | None = None,
        image_size: int = 128,
        channels: int = 3,
        g_conv_dim: int = 64,
        d_conv_dim: int = 64,
        g_repeat_num: int = 6,
        d_repeat_num: int = 6,
        cls_weight: float = 1.0,
        rec_weight: float = 10.0,
        gp_weight: float = 10.0,
        g_lr: float = 1e-4,
        d_lr: float = 1e-4,
        beta1: float = 0.5,
        beta2: float = 0.999,
        n_critic: int = 5,
        n_iterations: int = 200_000,
        n_iterations_decay: int = 100_000,
        label_kind: str = "attributes",
        channels_last: bool = False,
        compile: bool = False,
        adam_impl: str = "auto",
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__(channels_last=channels_last, compile=compile, adam_impl=adam_impl)
        if label_kind not in ("attributes", "class"):
            raise ValueError(f"label_kind={label_kind!r}: expected 'attributes' or 'class'")
        if attributes is None:
            attributes = list(CELEBA_ATTRIBUTES)
        if label_kind == "class":  # one-hot classes: a single exclusive group
            exclusive_groups = [list(attributes)]
        elif exclusive_groups is None:
            exclusive_groups = [["Black_Hair", "Blond_Hair", "Brown_Hair"]]
            exclusive_groups = [[a for a in g if a in attributes] for g in exclusive_groups]
        self.save_hyperparameters()  # with the resolved attributes and groups
        grouped = [a for g in exclusive_groups for a in g]
        if len(grouped) != len(set(grouped)):
            raise ValueError(
                f"exclusive_groups {exclusive_groups} overlap: an attribute may "
                "belong to one group only"
            )
        unknown = sorted(set(grouped) - set(attributes))
        if unknown:
            raise ValueError(
                f"exclusive_groups name {unknown}, which are not among attributes {attributes}"
            )
        if n_critic < 1 or n_iterations_decay > n_iterations:
            raise ValueError(
                f"n_critic={n_critic} must be >= 1 and n_iterations_decay={n_iterations_decay} "
                f"<= n_iterations={n_iterations}"
            )
        check_discriminator_size(image_size, d_repeat_num)
        self.exclusive_index = [[attributes.index(a) for a in g] for g in exclusive_groups]
        c_dim = len(attributes)
        self.G = StarGANGenerator(c_dim, g_conv_dim, g_repeat_num, channels, gradient_checkpointing)
        self.D = StarGANDiscriminator(
            image_size, c_dim, d_conv_dim, d_repeat_num, channels, match_head=self.match_head
        )

    match_head = False

    # -- the algorithm --------------------------------------------------------------------
    def declare_phases(self) -> list[Phase]:
        """Dmain every iteration; Gmain after every ``n_critic`` critic updates."""
        return [Phase("Dmain", optimizer=1), Phase.every_nth("Gmain", 0, self.hparams.n_critic)]

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """Translate (N, C, H, W) images in [-1, 1] to (N, A) 0/1 target attributes."""
        return self.G(self.prepare_images(x), c.to(self.device, torch.float32))

    def condition(self, labels: Tensor) -> Tensor:
        """The data's labels as c: float (N, A) 0/1 attributes, or one-hot classes."""
        if labels.dim() == 1:
            return F.one_hot(labels.long(), len(self.hparams.attributes)).float()
        return labels.float()

    def classification_loss(self, logits: Tensor, c: Tensor) -> Tensor:
        """Eqs. 2-3: BCE per attribute (CelebA) or cross-entropy of the class (RaFD)."""
        if self.hparams.label_kind == "class":
            return F.cross_entropy(logits, c.argmax(1))
        return attribute_classification_loss(logits, c)

    def labelled_batch(self, batch: dict) -> tuple[Tensor, Tensor]:
        """(x, c_org) of a fully labelled batch.

        Raises:
            ValueError: the batch holds unlabelled images (StarGAN cannot use them).
        """
        if not bool(batch["labelled"].all()):
            raise ValueError(
                "StarGAN trains on labelled images only, but this batch holds "
                f"{int((~batch['labelled']).sum())} unlabelled ones: with "
                "a labelled fraction or list set data.init_args.train_unlabelled: false "
                "(the baseline on the labelled subset) or train matchgan"
            )
        return self.prepare_images(batch["image"]), self.condition(batch["label"])

    def training_conditions(self, batch: dict) -> tuple[Tensor, Tensor | None, Tensor]:
        """(x, c_org, c_trg) of a training batch: the batch's own labels, permuted, are the
        targets (the official ``label_org[randperm]``)."""
        x, c_org = self.labelled_batch(batch)
        return x, c_org, c_org[torch.randperm(len(c_org), device=c_org.device)]

    def training_step(self, batch: dict, batch_idx: int) -> None:
        x, c_org, c_trg = self.training_conditions(batch)
        # one translation per iteration: D sees it detached, Gmain (when it runs) backpropagates
        # through it - G does not change in between, as only D steps first
        with torch.set_grad_enabled(self.runs("Gmain")):
            fake = self.G(x, c_trg)
        if self.runs("Dmain"):
            opt_d = self.phase_optimizer("Dmain")
            with self.toggled_optimizer(opt_d):
                terms, h_real = self._critic_terms(x, fake.detach(), c_org)
                self.add_critic_terms(terms, h_real, c_org)
                self.log_terms("train", terms, prog_bar=("d_loss",))
                self.backward_and_step(opt_d, terms["d_loss"])
        if self.runs("Gmain"):
            opt_g = self.phase_optimizer("Gmain")
            with self.toggled_optimizer(opt_g):
                terms, h_fake = self._generator_terms(x, fake, c_org, c_trg)
                self.add_generator_terms(terms, h_fake)
                self.log_terms("train", terms, prog_bar=("g_loss",))
                self.backward_and_step(opt_g, terms["g_loss"])

    def add_critic_terms(self, terms: dict, h_real: Tensor, c_org: Tensor | None) -> None:
        """Hook for a paper's extra D terms (MatchGAN's matching); StarGAN has none."""

    def add_generator_terms(self, terms: dict, h_fake: Tensor) -> None:
        """Hook for a paper's extra G terms (MatchGAN's matching); StarGAN has none."""

    def _critic_terms(
        self, x: Tensor, fake: Tensor, c_org: Tensor | None, with_gp: bool = True
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Eq. 8's critic terms on real ``x`` and detached ``fake``, and eq. 2 (when ``c_org``
        is known); returns them with D's embedding of x. The penalty needs autograd, which
        validation (inference mode) has not: ``with_gp=False`` there."""
        hp = self.hparams
        h_real = self.D.embed(x)
        src_real, cls_real = self.D.heads(h_real)
        src_fake, _ = self.D(fake)
        terms = {"d_adv": discriminator_adv_loss(src_real, src_fake, "wgan-gp")}
        terms["d_loss"] = terms["d_adv"]
        if with_gp:
            terms["d_gp"] = gradient_penalty(self.D, x, fake)
            terms["d_loss"] = terms["d_loss"] + hp.gp_weight * terms["d_gp"]
        if c_org is not None:
            terms["d_cls"] = self.classification_loss(cls_real, c_org)
            terms["d_loss"] = terms["d_loss"] + hp.cls_weight * terms["d_cls"]
        return terms, h_real

    def _generator_terms(
        self, x: Tensor, fake: Tensor, c_org: Tensor | None, c_trg: Tensor
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Eq. 3, the adversarial term and eq. 4 (when ``c_org`` is known) for ``fake`` =
        G(x, c_trg); returns them with D's embedding of the fakes."""
        hp = self.hparams
        h_fake = self.D.embed(fake)
        src_fake, cls_fake = self.D.heads(h_fake)
        terms = {
            "g_adv": generator_adv_loss(src_fake, "wgan-gp"),
            "g_cls": self.classification_loss(cls_fake, c_trg),
        }
        terms["g_loss"] = terms["g_adv"] + hp.cls_weight * terms["g_cls"]
        if c_org is not None:
            terms["g_rec"] = F.l1_loss(self.G(fake, c_org), x)
            terms["g_loss"] = terms["g_loss"] + hp.rec_weight * terms["g_rec"]
        return terms, h_fake

    def configure_optimizers(self):
        hp = self.hparams
        opts = [
            self.adam(self.G.parameters(), lr=hp.g_lr, betas=(hp.beta1, hp.beta2)),
            self.adam(self.D.parameters(), lr=hp.d_lr, betas=(hp.beta1, hp.beta2)),
        ]

        def factor(iteration: int) -> float:
            return linear_decay_to_zero(iteration, hp.n_iterations, hp.n_iterations_decay)

        scheds = [
            {"scheduler": torch.optim.lr_scheduler.LambdaLR(o, factor), "interval": "step"}
            for o in opts
        ]
        return opts, scheds

    # -- checks against the data ------------------------------------------------------------
    def input_size_requirements(self) -> list:
        """G (two stride-2 stages) and D, whose classifier kernel is built for image_size."""
        hp = self.hparams
        return [
            (f"{type(self).__name__}'s generator", self.G.input_sizes()),
            (
                f"{type(self).__name__}'s discriminator built for image_size={hp.image_size} "
                f"with d_repeat_num={hp.d_repeat_num}",
                self.D.input_sizes(),
            ),
        ]

    def schedule_horizons(self) -> list[ScheduleHorizon]:
        """The learning rates reach 0 at ``n_iterations``."""
        hp = self.hparams
        return [
            ScheduleHorizon(
                f"{type(self).__name__}'s learning-rate schedule (linear to 0 over the last "
                f"model.init_args.n_iterations_decay={hp.n_iterations_decay})",
                "iteration",
                hp.n_iterations,
                f"model.init_args.n_iterations={hp.n_iterations}",
            )
        ]

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer else None
        self._check_data(dm)
        super().setup(stage)  # after the checks above, whose messages are more specific

    def _check_data(self, dm) -> None:
        if dm is None:
            return
        kind = getattr(dm, "label_kind", self.hparams.label_kind)
        if kind != self.hparams.label_kind:
            raise ValueError(
                f"the data serves {kind} labels but model.init_args.label_kind is "
                f"{self.hparams.label_kind!r}: set it to {kind!r} (class folders such as RaFD: "
                "'class'; CelebA or named attributes: 'attributes')"
            )
        what = "class_names" if kind == "class" else "attribute_names"
        names = getattr(dm, what, None)
        if names is not None and list(names) != list(self.hparams.attributes):
            raise ValueError(
                f"data {what} {list(names)} differ from model.init_args.attributes "
                f"{list(self.hparams.attributes)}: give both the same names in the same order"
            )
        for field, want in (
            ("image_size", self.hparams.image_size),
            ("channels", self.hparams.channels),
            ("normalize", "tanh"),
        ):
            have = getattr(dm, field, want)
            if have != want:
                raise ValueError(
                    f"data.{field}={have!r} does not match the model: set "
                    f"data.init_args.{field}: {want!r}"
                )

    # -- validation, test, evaluation -----------------------------------------------------
    def _eval_step(self, batch: dict, prefix: str) -> None:
        x, c_org = self.prepare_images(batch["image"]), self.condition(batch["label_true"])
        # seeded by the batch: validation must not move the training stream
        g = torch.Generator().manual_seed(int(batch["index"][0]))
        c_trg = c_org[torch.randperm(len(c_org), generator=g).to(c_org.device)]
        fake = self.G(x, c_trg)
        terms, _ = self._critic_terms(x, fake, c_org, with_gp=False)
        g_terms, _ = self._generator_terms(x, fake, c_org, c_trg)
        self.log_terms(prefix, {**terms, **g_terms})

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def translate_per_attribute(self, x: Tensor, c_org: Tensor) -> tuple[list[Tensor], list]:
        """G(x, c_a) for the target of every attribute a (:func:`attribute_targets`)."""
        targets = attribute_targets(c_org.float(), self.exclusive_index)
        return [self.G(x, c) for c in targets], targets

    def evaluation_outputs(self, batch: dict) -> list[AttributeTranslation]:
        """For the Evaluation callback: every input translated once per attribute; the judge
        scores the requested change (target_attribute_acc) and that the other attributes
        stay (attribute_preservation); FID/KID against the inputs."""
        x, c_org = self.prepare_images(batch["image"]), self.condition(batch["label_true"])
        fakes, targets = self.translate_per_attribute(x, c_org)
        n = len(fakes)
        return [
            AttributeTranslation(
                "translations",
                torch.cat(fakes),
                x,  # FID/KID's real side: each input once
                c_org.repeat(n, 1),
                torch.cat(targets),
                attribute_names=list(self.hparams.attributes),
                single_choice=self.hparams.label_kind == "class",
                requested=torch.arange(n).repeat_interleave(len(x)),
            )
        ]

    def sample_panels(self, batch: dict) -> dict[str, list[Tensor]]:
        """Each input, then its translation for every attribute (the paper's figure 4)."""
        x, c_org = self.prepare_images(batch["image"]), self.condition(batch["label_true"])
        fakes, _ = self.translate_per_attribute(x, c_org)
        return {"input | " + " | ".join(self.hparams.attributes): [x, *fakes]}

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        """(N, A, C, H, W): each input translated once per attribute."""
        x, c_org = self.prepare_images(batch["image"]), self.condition(batch["label_true"])
        fakes, _ = self.translate_per_attribute(x, c_org)
        return {"fake": torch.stack(fakes, dim=1)}
