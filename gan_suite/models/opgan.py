"""OP-GAN (Xie et al., ECCV 2020): self-supervised CycleGAN for object-preserving translation.

Full objective: L_LSGAN + alpha * L_cyc + beta * L_S with L_S = L_cc + L_dc, where a Siamese
multi-task network S on 3 x 3 grid patches of an image and its translation learns content
registration (L_cc, the L2 between content attention maps of same-position patches) and a
3-way domain classification of patch pairs (L_dc over {D1, D2, C}). CycleGAN's generators,
discriminators, adversarial and cycle terms are inherited from ``CycleGAN``; the paper's
objective has no identity term and applies S to the source -> target direction (the
defaults); CycleGAN's identity term and S on both directions remain options.

Content registration: minimising L_cc alone lets S output constant attention maps (L_cc = 0
for any G, so G gets no content signal from S). The paper supervises registration by the
relative position of the patches (C1 agree, C2 do not); S therefore also minimises, in Smain
only, a registration loss L_reg on the maps of all grid positions (each source patch must
find its same-position translated patch, ``content_registration_loss``): constant maps cost
S log K. G's L_S is the paper's L_cc (C1 pairs) + L_dc.

One training step (manual optimisation, three optimizers over disjoint parameters):

    Gmain  G_AB, G_BA <- adversarial + cycle (+ identity) + beta * L_S     (S, D frozen;
           the gradient of L_S reaches G through S and the translated patches)
    Smain  S <- L_S + registration_weight * L_reg on real images and detached translations
    Dmain  D_A, D_B <- CycleGAN's LSGAN losses on history-buffer fakes

Logged per step (``train/...``): ``cc_same`` and ``cc_different``, the mean map distance of
same- and different-position patches (cc_different >> cc_same: L_cc is informative),
``reg_acc`` (share of source patches whose nearest translated map is at their position; chance
1 / K), ``l_reg`` and S's objective ``s_loss``.

One device:  gan-suite fit --config experiments/opgan.yaml --data.data_dir DATA
Multi-GPU:   gan-suite fit --config experiments/opgan.yaml --config experiments/presets/ddp.yaml
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gan_suite.losses import (
    content_consistency_loss,
    content_registration_loss,
    domain_classification_loss,
    linear_decay_factor,
    patch_map_distances,
)
from gan_suite.models.cyclegan import CycleGAN
from gan_suite.models.phases import Phase
from gan_suite.nets import init_weights
from gan_suite.nets.siamese import D1, D2, SiameseNet, grid_patches, sample_patch_pairs

DIRECTIONS = ("AtoB", "BtoA")


class OPGAN(CycleGAN):
    """OP-GAN: CycleGAN plus a Siamese multi-task network S on patch pairs (L_S = L_cc + L_dc).

    S is trained with the generators (Gmain) and alone (Smain); every argument of
    :class:`~gan_suite.models.cyclegan.CycleGAN` is accepted too.

    Choices where the paper is open (each configurable; no official code is published):

    * S on the paper's source -> target direction, pairs from (real A, G_AB(A)) (default).
      ``siamese_directions: [AtoB, BtoA]`` adds (real B, G_BA(B)) with one shared S and sums
      the two L_S (doubling beta in effect). Labels are by *domain* so that one S is
      consistent across directions: A -> B pairs keep D1 = both source (domain A), D2 = both
      translated (domain B); for B -> A pairs D1/D2 are swapped (both B = "D2", both A =
      "D1"). A fake B is then classified with real B patches, so G minimising L_dc pulls its
      translations towards the target domain.
    * No identity term (the paper's objective); ``identity_weight`` 0.5 adds CycleGAN's.
    * S's content registration (module docstring): ``registration_weight`` (1) on L_reg,
      which scores the maps' distances with a fixed ``registration_scale`` (50) so that maps
      of different positions must differ by an absolute margin; 0 is the paper's text taken
      literally (S's maps may collapse to constants).
    * ``pairs_per_image`` pairs per image and direction (6), split into D1/D2/C by
      ``class_weights`` (equal: 2 + 2 + 2), ``c1_fraction`` of the batch's C pairs at the same
      grid position (0.5). D1/D2 pairs use two different positions.
    * L_cc only on C1 pairs, in both Gmain and Smain (C2 patches show different content, so
      their attention maps have nothing to agree on). ``cc_all_positions: true`` makes Gmain
      compare all grid x grid same-position patch pairs of every image instead.
    * Smain draws fresh pairs (independent of Gmain's); the draws come from a CPU generator
      seeded with ``pair_seed + global_rank``: ranks draw different pairs, weights stay equal
      because DDP all-reduces the gradients. Its state is saved in checkpoints.
    * S is trained on current translations, not on the history buffer (the buffer is the
      discriminators' device against oscillation; S classifies pairs of one step's images).

    Args:
        siamese_weight: beta, the weight of L_S = L_cc + L_dc in G's objective (1).
        siamese_width: filters of the first conv of S's encoder (64).
        siamese_depth: stride-2 layers of S's encoder (3 = stride 8: 85 px patches -> 11 x 11).
        siamese_features: channels of the content features c and of the domain features d (512).
        siamese_norm: normalisation in S's encoder: ``none`` (default), ``batch``, ``instance``.
        grid: patches per side of the patch grid (3 = 3 x 3; remainders cropped at bottom/right).
        pairs_per_image: patch pairs drawn per image and direction in each step (6).
        class_weights: relative numbers of D1, D2 and C pairs ([1, 1, 1] = balanced).
        c1_fraction: share of the C pairs taken at the same grid position (C1) (0.5).
        cc_all_positions: Gmain's L_cc on all same-position pairs instead of the sampled C1 pairs.
        siamese_directions: translation directions S is applied to (``AtoB``, ``BtoA``), summed
            (the paper: ``AtoB``, source -> target).
        identity_weight: CycleGAN's identity term as a fraction of alpha (0: the paper's
            objective has none).
        registration_weight: weight of S's content-registration loss L_reg in Smain (1).
        registration_scale: s in L_reg's softmax over -s * d (50; d is L_cc's distance).
        siamese_lr: Adam learning rate of S (2e-4; same betas and LR schedule as G and D).
        pair_seed: seed of the pair sampling generator (offset by the global rank).
        **kwargs: CycleGAN's arguments (ngf, n_blocks, ndf, cycle_weight_A = alpha, ...).
    """

    def __init__(
        self,
        siamese_weight: float = 1.0,
        siamese_width: int = 64,
        siamese_depth: int = 3,
        siamese_features: int = 512,
        siamese_norm: str = "none",
        grid: int = 3,
        pairs_per_image: int = 6,
        class_weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
        c1_fraction: float = 0.5,
        cc_all_positions: bool = False,
        siamese_directions: tuple[str, ...] = ("AtoB",),
        identity_weight: float = 0.0,
        registration_weight: float = 1.0,
        registration_scale: float = 50.0,
        siamese_lr: float = 2e-4,
        pair_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(identity_weight=identity_weight, **kwargs)
        self.save_hyperparameters()
        if registration_weight < 0 or registration_scale <= 0:
            raise ValueError(
                f"registration_weight={registration_weight}, registration_scale="
                f"{registration_scale}: expected a weight >= 0 and a scale > 0"
            )
        unknown = set(siamese_directions) - set(DIRECTIONS)
        if unknown or not siamese_directions:
            raise ValueError(
                f"siamese_directions={list(siamese_directions)}: expected a non-empty subset of "
                f"{list(DIRECTIONS)}"
            )
        in_channels = kwargs.get("in_channels", 3)
        if kwargs.get("out_channels", in_channels) != in_channels:
            raise ValueError("OP-GAN's shared S needs in_channels == out_channels")
        self.S = SiameseNet(
            in_channels, siamese_width, siamese_depth, siamese_features, siamese_norm
        )
        # S is a LeakyReLU classifier without norm: N(0, 0.02) weights would shrink activations
        # layer after layer, so it gets He initialisation
        init_weights(self.S, "kaiming")
        self.pair_generator = torch.Generator().manual_seed(pair_seed)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        rank = self.trainer.global_rank if self._trainer is not None else 0
        self.pair_generator.manual_seed(self.hparams.pair_seed + rank)

    # -- the algorithm ------------------------------------------------------------------
    def declare_phases(self) -> list[Phase]:
        """Every iteration, in this order: Gmain, Smain, Dmain (module docstring)."""
        return [Phase("Gmain", 0), Phase("Smain", 2), Phase("Dmain", 1)]

    def training_step(self, batch: dict, batch_idx: int) -> None:
        real_A, real_B = self.prepare_images(batch["A"]), self.prepare_images(batch["B"])
        fake_A, fake_B = self.generator_phase(real_A, real_B)  # Gmain
        if self.runs("Smain"):
            self._siamese_step(self.phase_optimizer("Smain"), real_A, real_B, fake_A, fake_B)
        if self.runs("Dmain"):
            self._discriminator_step(self.phase_optimizer("Dmain"), real_A, real_B, fake_A, fake_B)

    def siamese_terms(
        self,
        real_A: Tensor,
        real_B: Tensor,
        fake_A: Tensor,
        fake_B: Tensor,
        dense_cc: bool = False,
        registration: bool = False,
    ) -> dict[str, Tensor]:
        """L_S = L_cc + L_dc summed over ``siamese_directions``, and S's pair accuracy.

        ``fake_B = G_AB(real_A)``, ``fake_A = G_BA(real_B)``, images ``(B, C, H, W)``.
        ``dense_cc``: L_cc on all same-position pairs rather than on the sampled C1 pairs.
        ``registration``: also S's registration loss ``l_reg`` (summed over the directions)
        and its diagnostics ``cc_same``, ``cc_different``, ``reg_acc`` (averaged), see
        :meth:`registration_terms`.
        """
        hp = self.hparams
        sources = {"AtoB": (real_A, fake_B), "BtoA": (real_B, fake_A)}
        l_cc, l_dc, correct, count = [], [], 0.0, 0
        registered: list[dict[str, Tensor]] = []
        for direction in hp.siamese_directions:
            source, translated = (grid_patches(x, hp.grid) for x in sources[direction])
            if registration:  # no graph when S does not train on it (weight 0: diagnostics)
                with torch.set_grad_enabled(torch.is_grad_enabled() and hp.registration_weight > 0):
                    registered.append(self.registration_terms(source, translated))
            pairs = sample_patch_pairs(
                source,
                translated,
                hp.pairs_per_image,
                tuple(hp.class_weights),
                hp.c1_fraction,
                self.pair_generator,
            )
            att_1, att_2, logits = self.S(pairs.first, pairs.second)
            labels = pairs.labels
            if direction == "BtoA":  # labels by domain: both-B pairs are D2, both-A pairs D1
                labels = torch.where(labels == D1, D2, torch.where(labels == D2, D1, labels))
            l_dc.append(domain_classification_loss(logits, labels))
            correct += (logits.argmax(1) == labels).sum()
            count += labels.numel()
            if dense_cc:  # every grid position of every image: (B * K) C1 pairs
                dense_1, dense_2 = source.flatten(0, 1), translated.flatten(0, 1)
                att_1, att_2, _ = self.S(dense_1, dense_2)
                l_cc.append(content_consistency_loss(att_1, att_2))
            else:
                l_cc.append(content_consistency_loss(att_1, att_2, pairs.c1_mask))
        terms = {"l_cc": sum(l_cc), "l_dc": sum(l_dc)}
        terms["l_s"] = terms["l_cc"] + terms["l_dc"]
        terms["s_acc"] = (correct / count).detach()
        if registered:
            terms["l_reg"] = sum(r["l_reg"] for r in registered)
            for name in ("cc_same", "cc_different", "reg_acc"):
                terms[name] = torch.stack([r[name] for r in registered]).mean()
        return terms

    def registration_terms(self, source: Tensor, translated: Tensor) -> dict[str, Tensor]:
        """S's content registration on every grid position of one direction.

        ``source``, ``translated``: ``(B, K, C, h, w)`` grid patches of the source images and
        of their translations. Returns ``l_reg`` (:func:`content_registration_loss` on the
        ``(B, K, K)`` map distances of :func:`patch_map_distances`), ``cc_same`` / ``cc_different``
        (mean distance of same- / different-position maps, detached) and ``reg_acc`` (share of
        source patches whose nearest translated map is at their own position; 1 / K by chance).
        """
        b, k = source.shape[:2]
        att, _ = self.S.encode(torch.cat([source, translated]).flatten(0, 1))  # (2BK, 1, h, w)
        att = att.unflatten(0, (2, b, k))
        dist = patch_map_distances(att[0], att[1])  # (B, K, K)
        same = torch.eye(k, dtype=torch.bool, device=dist.device).expand(b, k, k)
        position = torch.arange(k, device=dist.device)
        return {
            "l_reg": content_registration_loss(dist, self.hparams.registration_scale),
            "cc_same": dist[same].mean().detach(),
            "cc_different": dist[~same].mean().detach(),
            "reg_acc": (dist.argmin(dim=2) == position).float().mean(),
        }

    def siamese_objective(
        self, real_A: Tensor, real_B: Tensor, fake_A: Tensor, fake_B: Tensor
    ) -> dict[str, Tensor]:
        """Smain's terms: the paper's L_S plus ``registration_weight`` * L_reg as ``s_loss``.

        With ``registration_weight`` 0 the registration diagnostics are still computed (without
        a graph), so a run on the paper's literal objective shows whether its maps collapse.
        """
        weight = self.hparams.registration_weight
        terms = self.siamese_terms(real_A, real_B, fake_A, fake_B, registration=True)
        terms["s_loss"] = terms["l_s"] + weight * terms["l_reg"] if weight > 0 else terms["l_s"]
        return terms

    def extra_generator_terms(self, real_A: Tensor, real_B: Tensor, out: dict) -> dict:
        """Gmain's addition to CycleGAN's G objective: beta * L_S through the translations (S
        and D are frozen by the G step's toggle; the gradient reaches G via the patches)."""
        hp = self.hparams
        s_terms = self.siamese_terms(
            real_A, real_B, out["fake_A"], out["fake_B"], hp.cc_all_positions
        )
        return {
            "g_l_s": s_terms["l_s"] * hp.siamese_weight,
            "_g_l_cc": s_terms["l_cc"],
            "_g_l_dc": s_terms["l_dc"],
        }

    def _siamese_step(self, opt_s, real_A, real_B, fake_A, fake_B) -> None:
        """Smain: S alone on L_S + registration_weight * L_reg, G fixed (``fake_*`` are
        detached)."""
        with self.toggled_optimizer(opt_s):
            terms = self.siamese_objective(real_A, real_B, fake_A.detach(), fake_B.detach())
            self.log_terms("train", terms, prog_bar=("s_acc", "reg_acc"))
            self.backward_and_step(opt_s, terms["s_loss"])

    # -- checkpoints: the pair sampler's position survives a resume -----------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["opgan_pair_generator"] = self.pair_generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if "opgan_pair_generator" in checkpoint:
            self.pair_generator.set_state(checkpoint["opgan_pair_generator"])

    def input_size_requirements(self) -> list:
        """CycleGAN's nets, and S on the patches of the grid x grid lattice."""
        hp = self.hparams
        s_net = (
            f"OPGAN's Siamese net S on the {hp.grid}x{hp.grid} patch grid with siamese_depth="
            f"{hp.siamese_depth} and siamese_norm={hp.siamese_norm}"
        )
        return [*super().input_size_requirements(), (s_net, self.S.input_sizes(hp.grid))]

    def configure_optimizers(self):
        optimizers, schedulers = super().configure_optimizers()  # [opt_g, opt_d]
        hp = self.hparams
        opt_s = self.adam(self.S.parameters(), lr=hp.siamese_lr, betas=tuple(hp.betas))

        def rule(epoch: int) -> float:
            return linear_decay_factor(epoch, hp.n_epochs_constant, hp.n_epochs_decay)

        sched_s = torch.optim.lr_scheduler.LambdaLR(opt_s, rule)
        return [*optimizers, opt_s], [*schedulers, sched_s]
