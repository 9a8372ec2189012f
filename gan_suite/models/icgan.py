"""IC-GAN (Casanova, Careil, Verbeek, Drozdzal & Romero-Soriano, NeurIPS 2021):
instance-conditioned GAN.

The data density is modelled as a mixture of local densities around every training instance
x_i, each described by h_i = f(x_i), the L2-normalised features of a frozen extractor f
(section 2). Its neighbourhood A_i = the k nearest neighbours of h_i by cosine similarity.
Training (section 2.1, eq. 2): sample an instance i, a neighbour j in A_i and z ~ N(0, I);
D learns to tell (x_j, h_i) from (G(z, h_i), h_i); hinge loss, BigGAN backbone. The
class-conditional variant (section 3.3) also conditions G and D on the neighbour's label y_j.
At test time any image, also one outside the training set, gives an h: G(z, h) then samples
its neighbourhood (:meth:`ICGAN.generate_from_image`).

One device:  gan-suite fit --config experiments/icgan.yaml [--data.init_args.data_dir D]
Multi-GPU:   gan-suite fit --config experiments/icgan.yaml --config experiments/presets/ddp.yaml
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor

from gan_suite.eval.features import EvaluatorFeatures
from gan_suite.eval.judge import resolve_evaluator
from gan_suite.eval.neighbours import (
    NEIGHBOUR_SEARCHES,
    knn_cosine_query,
    load_resnet50_features,
)
from gan_suite.eval.protocol import InstanceSamples
from gan_suite.losses import discriminator_adv_loss, generator_adv_loss
from gan_suite.models.base import GANModule
from gan_suite.models.phases import Phase
from gan_suite.nets.biggan import BigGANDiscriminator, BigGANGenerator

FEATURE_EXTRACTORS = {"evaluator": 128, "resnet50": 2048}  # name -> default feature size


class ICGAN(GANModule):
    """IC-GAN with a BigGAN backbone, hinge loss, EMA generator; manual optimisation.

    Args:
        image_size: generated side, 32, 64 (the paper's ImageNet 64x64 setting), 128 or 256.
        z_dim: latent size (120), split hierarchically over G's blocks.
        g_ch: G width multiplier (64). d_ch: D width multiplier (64).
        feature_embed_dim: G's shared linear embedding of h (512, ``shared_dim_feat``).
        n_classes: 0 = IC-GAN; > 0 = class-conditional IC-GAN with that many classes (labels
            of the neighbours, so the training data must be labelled).
        class_embed_dim: G's shared class embedding (128).
        feature_extractor: f: ``evaluator`` (the suite's Evaluator features: see
            ``evaluator_checkpoint``) or ``resnet50`` (torchvision ResNet-50,
            pooled 2048-d, weights from ``feature_weights``; the paper uses SwAV's).
        feature_weights: local ResNet-50 weights file (never downloaded).
        feature_dim: size of h; default 128 for evaluator, 2048 for resnet50.
        evaluator_checkpoint: Evaluator for ``feature_extractor=evaluator`` and the metrics
            (default: the cached evaluator of the embedded shapes data, or for other data with
            class labels a class evaluator trained on its training images; trained on first
            use).
        k: neighbourhood size (50 on ImageNet).
        include_self: whether x_i belongs to its own neighbourhood A_i (no: the official code
            searches k + 1 neighbours and drops the instance itself).
        nn_chunk_size: block side of the exact k-NN search (memory chunk_size^2 floats).
        neighbour_search: how A_i is found: ``exact`` (torch, bounded memory; the default),
            ``faiss_flat`` (exact through faiss) or ``faiss_ivf`` (approximate, for large sets;
            the official code uses faiss). faiss: ``pip install faiss-cpu`` or the ``ann`` extra.
        neighbour_nlist: IVF cells for ``faiss_ivf`` (None = ~sqrt(N)).
        neighbour_nprobe: IVF cells scanned per query for ``faiss_ivf`` (recall vs time; 4 of
            sqrt(N) cells gave recall@50 0.995 at 100,000 x 2048: README, IC-GAN).
        feature_batch_size: images per forward of the one-time feature pass.
        feature_cache: ``.pt`` file for the features and neighbours of the training set
            (reused when it matches), ``auto`` = ``<run dir>/instance_features.pt``, or None.
        gan_mode: adversarial loss (``hinge``).
        g_lr, d_lr: Adam learning rates (1e-4 each in IC-GAN's ImageNet 64x64 config).
        betas: Adam betas ((0, 0.999), BigGAN). adam_eps: Adam epsilon (1e-6, BigGAN).
        n_d_steps: D steps per G step (1), each with freshly sampled neighbours.
        ema_decay: decay of the EMA copy of G used for sampling/evaluation (0.9999; 0 = off).
        ema_start: G steps before the EMA starts averaging (it copies G until then; 20,000,
            the official ``--ema_start`` default).
        eval_samples_per_instance: samples per conditioning image at validation/test.
        n_sample_columns: samples per row of the sample grid.
        channels_last: run the nets in channels_last memory format.
        compile: ``torch.compile`` each net in place at setup (see
            :mod:`gan_suite.models.speed`; on CPU it needs a C++ compiler).
        adam_impl: Adam kernel: ``auto`` (fused where torch has one), ``for-loop``,
            ``foreach`` or ``fused``.
        gradient_checkpointing: recompute G's BigGAN blocks in the backward pass instead of
            storing their activations (less memory, same results).
    """

    sample_panels_names = ("instance | G(z, h(instance)) samples",)

    def __init__(
        self,
        image_size: int = 64,
        z_dim: int = 120,
        g_ch: int = 64,
        d_ch: int = 64,
        feature_embed_dim: int = 512,
        n_classes: int = 0,
        class_embed_dim: int = 128,
        feature_extractor: str = "evaluator",
        feature_weights: str | None = None,
        feature_dim: int | None = None,
        evaluator_checkpoint: str | None = None,
        k: int = 50,
        include_self: bool = False,
        nn_chunk_size: int = 4096,
        neighbour_search: str = "exact",
        neighbour_nlist: int | None = None,
        neighbour_nprobe: int = 4,
        feature_batch_size: int = 256,
        feature_cache: str | None = None,
        gan_mode: str = "hinge",
        g_lr: float = 1e-4,
        d_lr: float = 1e-4,
        betas: tuple[float, float] = (0.0, 0.999),
        adam_eps: float = 1e-6,
        n_d_steps: int = 1,
        ema_decay: float = 0.9999,
        ema_start: int = 20_000,
        eval_samples_per_instance: int = 1,
        n_sample_columns: int = 5,
        channels_last: bool = False,
        compile: bool = False,
        adam_impl: str = "auto",
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__(channels_last=channels_last, compile=compile, adam_impl=adam_impl)
        if feature_extractor not in FEATURE_EXTRACTORS:
            raise ValueError(
                f"feature_extractor={feature_extractor!r}: expected one of "
                f"{sorted(FEATURE_EXTRACTORS)}"
            )
        if neighbour_search not in NEIGHBOUR_SEARCHES:
            raise ValueError(
                f"neighbour_search={neighbour_search!r}: expected one of {NEIGHBOUR_SEARCHES}"
            )
        feature_dim = feature_dim or FEATURE_EXTRACTORS[feature_extractor]
        self.save_hyperparameters()
        self.hparams.feature_dim = feature_dim
        self.G = BigGANGenerator(
            image_size,
            z_dim,
            g_ch,
            feature_dim,
            feature_embed_dim,
            n_classes,
            class_embed_dim,
            gradient_checkpointing=gradient_checkpointing,
        )
        self.D = BigGANDiscriminator(image_size, d_ch, feature_dim, n_classes)
        # A registered submodule: the EMA weights are saved in (and restored from) checkpoints
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False) if ema_decay > 0 else None
        # Frozen helpers kept out of the state dict (object.__setattr__ skips registration)
        for name in ("_extractor", "_evaluator", "instance_features"):
            object.__setattr__(self, name, None)
        self.train_labels: Tensor | None = None

    # -- the condition h ----------------------------------------------------------------
    def set_feature_extractor(self, net: torch.nn.Module) -> None:
        """Use ``net`` ([-1, 1] images -> (N, feature_dim)) as f, e.g. a test stub."""
        object.__setattr__(self, "_extractor", net.eval().requires_grad_(False))

    def _datamodule(self):
        trainer = self._trainer
        return None if trainer is None else trainer.datamodule

    def evaluator(self):
        """The suite's Evaluator for metrics (None where the data has none)."""
        if self._evaluator is None:
            ev = resolve_evaluator(self._datamodule(), self.hparams.evaluator_checkpoint)
            object.__setattr__(self, "_evaluator", ev)
        return None if self._evaluator is None else self._evaluator.to(self.device)

    def feature_net(self) -> torch.nn.Module:
        """f, built on first use: the Evaluator's features or the local ResNet-50."""
        if self._extractor is None:
            if self.hparams.feature_extractor == "resnet50":
                net = load_resnet50_features(self.hparams.feature_weights)
            else:
                ev = self.evaluator()
                if ev is None:
                    raise ValueError(
                        "feature_extractor='evaluator' needs data with class labels (the "
                        "embedded shapes or digits, MNIST, class folders) or "
                        "evaluator_checkpoint=...; or use feature_extractor='resnet50'"
                    )
                net = EvaluatorFeatures(ev)
            self.set_feature_extractor(net)
        return self._extractor.to(self.device)

    @torch.no_grad()
    def embed_instances(self, images: Tensor) -> Tensor:
        """h = f(x) / ||f(x)||: (N, 3, H, W) in [-1, 1] -> (N, feature_dim)."""
        h = F.normalize(self.feature_net()(images.to(self.device)).float(), dim=1)
        if h.shape[1] != self.hparams.feature_dim:
            raise ValueError(
                f"the {self.hparams.feature_extractor} features have {h.shape[1]} dimensions "
                f"but feature_dim={self.hparams.feature_dim}: set model.init_args.feature_dim"
            )
        return h

    def set_instances(self, features: Tensor, labels: Tensor) -> None:
        """The training instances' features h (N, feature_dim) and labels (N,), -1 where
        hidden (set by :class:`~gan_suite.callbacks.InstanceNeighbourhoods`): the evaluation
        searches the neighbourhoods of held-out images among them."""
        object.__setattr__(self, "instance_features", features.to(self.device))
        self.train_labels = labels.cpu()

    def on_fit_start(self) -> None:
        if self.instance_features is None:
            raise ValueError(
                "IC-GAN trains on instances and their neighbourhoods: add "
                "gan_suite.callbacks.InstanceNeighbourhoods to trainer.callbacks (as "
                "experiments/icgan.yaml does)"
            )

    # -- the algorithm (eq. 2) ----------------------------------------------------------
    def sample_z(self, n: int) -> Tensor:
        return torch.randn(n, self.hparams.z_dim, device=self.device)

    def declare_phases(self) -> list[Phase]:
        """Every iteration: ``n_d_steps`` D steps (Dmain), then one G step (Gmain)."""
        return [Phase("Dmain", 1, repeats=self.hparams.n_d_steps), Phase("Gmain", 0)]

    def training_step(self, batch: dict, batch_idx: int) -> None:
        # instances i sampled uniformly by the shuffled loader, with their features h_i and
        # n_d_steps neighbours x_j, j ~ U(A_i), drawn by the loader workers
        h = batch["instance_features"]  # (B, feature_dim)
        neighbours = self.prepare_images(batch["image"].flatten(0, 1)).unflatten(0, (len(h), -1))
        labels = batch["label"] if self.hparams.n_classes > 0 else None  # (B, n_d_steps)
        if labels is not None and bool((labels < 0).any()):
            raise ValueError(
                "class-conditional IC-GAN (n_classes > 0) needs labelled data: a neighbour "
                "has no label (data.labelled_fraction < 1?)"
            )
        y = None
        if self.runs("Dmain"):
            for r in range(self.phases["Dmain"].repeats):
                y = None if labels is None else labels[:, r]
                self._discriminator_step(self.phase_optimizer("Dmain"), neighbours[:, r], h, y)
        if self.runs("Gmain"):
            y = None if labels is None else labels[:, -1]
            self._generator_step(self.phase_optimizer("Gmain"), h, y)
            self.update_ema()

    def _discriminator_step(self, opt_d, real: Tensor, h: Tensor, y: Tensor | None) -> None:
        """Hinge loss on (x_j, h_i) real and (G(z, h_i), h_i) fake, G fixed."""
        with self.toggled_optimizer(opt_d):
            with torch.no_grad():  # G is fixed in this step: no graph through it
                fake = self.G(self.sample_z(real.shape[0]), h, y)
            d_real, d_fake = self.D(real, h, y), self.D(fake, h, y)
            terms = {
                "d_loss": discriminator_adv_loss(d_real, d_fake, self.hparams.gan_mode),
                "d_real": d_real.mean(),
                "d_fake": d_fake.mean(),
            }
            self.log_terms("train", terms, prog_bar=("d_loss",))
            self.backward_and_step(opt_d, terms["d_loss"])

    def _generator_step(self, opt_g, h: Tensor, y: Tensor | None) -> None:
        """-E[D(G(z, h_i), h_i)], D fixed."""
        with self.toggled_optimizer(opt_g):
            fake = self.G(self.sample_z(h.shape[0]), h, y)
            g_loss = generator_adv_loss(self.D(fake, h, y), self.hparams.gan_mode)
            self.log_terms("train", {"g_loss": g_loss}, prog_bar=("g_loss",))
            self.backward_and_step(opt_g, g_loss)

    @torch.no_grad()
    def update_ema(self) -> None:
        """theta_ema <- d * theta_ema + (1 - d) * theta_G (a copy before ``ema_start``);
        buffers (BN statistics, spectral-norm vectors) are copied."""
        if self.G_ema is None:
            return
        g_steps = int(self.iteration)  # one G step per iteration
        decay = self.hparams.ema_decay if g_steps >= self.hparams.ema_start else 0.0
        for p_ema, p in zip(self.G_ema.parameters(), self.G.parameters()):
            p_ema.lerp_(p, 1.0 - decay)
        for b_ema, b in zip(self.G_ema.buffers(), self.G.buffers()):
            b_ema.copy_(b)

    # -- sampling -----------------------------------------------------------------------
    @property
    def sampler(self) -> BigGANGenerator:
        """The generator used for sampling and evaluation: the EMA copy when there is one."""
        return self.G_ema if self.G_ema is not None else self.G

    @torch.no_grad()
    def generate(self, h: Tensor, n: int = 1, labels: Tensor | None = None) -> Tensor:
        """n samples G(z, h) per condition: (B, feature_dim) -> (B, n, 3, S, S)."""
        if self.hparams.n_classes > 0 and labels is None:
            raise ValueError("class-conditional IC-GAN: pass the labels to condition on")
        y = None if labels is None else labels.to(self.device).repeat_interleave(n)
        hh = h.to(self.device).repeat_interleave(n, dim=0)
        out = self.sampler(self.sample_z(hh.shape[0]), hh, y)
        return out.view(h.shape[0], n, *out.shape[1:])

    @torch.no_grad()
    def generate_from_image(
        self, images: Tensor, n: int = 1, labels: Tensor | None = None
    ) -> Tensor:
        """Samples from the neighbourhood of any images (N, 3, H, W): (N, n, 3, S, S)."""
        return self.generate(self.embed_instances(images), n, labels)

    def _labels_of(self, batch: dict) -> Tensor | None:
        return batch.get("label_true") if self.hparams.n_classes > 0 else None

    def sample_panels(self, batch: dict) -> dict[str, list[Tensor]]:
        images = batch["image"]
        samples = self.generate_from_image(
            images, self.hparams.n_sample_columns, self._labels_of(batch)
        )
        size = samples.shape[-1]
        if images.shape[-1] != size:
            images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
        return {"instance | samples": [images, *samples.unbind(1)]}

    def forward(self, images: Tensor, n: int = 1) -> Tensor:
        return self.generate_from_image(images, n)

    def predict_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self.generate_from_image(batch["image"], 1, self._labels_of(batch))[:, 0]

    # -- evaluation (the Evaluation callback scores these) ---------------------------------
    @torch.no_grad()
    def evaluation_outputs(self, batch: dict) -> list[InstanceSamples]:
        """Held-out images as instances: ``eval_samples_per_instance`` samples G(z, h(x))
        each; the same number conditioned on another instance of the batch (rolled by one:
        the chance level); and the classes of each instance's k nearest training instances
        (the neighbourhoods' own class purity: the ceiling)."""
        n = self.hparams.eval_samples_per_instance
        images, labels = batch["image"], self._labels_of(batch)
        h = self.embed_instances(images)
        fakes = self.generate(h, n, labels).flatten(0, 1)  # (B * n, 3, S, S)
        other_labels = None if labels is None else labels.roll(1, 0)
        others = self.generate(h.roll(1, 0), n, other_labels).flatten(0, 1)
        neighbour_labels = None
        known = self.train_labels is not None and bool((self.train_labels >= 0).all())
        if self.instance_features is not None and known:
            nn_idx = knn_cosine_query(h, self.instance_features, self.hparams.k).cpu()
            neighbour_labels = self.train_labels[nn_idx]
        true = batch.get("label_true")
        return [
            InstanceSamples(
                "samples",
                fakes,
                images,
                n,
                instance_labels=true if true is not None and true.dim() == 1 else None,
                other_output=others,
                neighbour_labels=neighbour_labels,
            )
        ]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        """Nothing per batch: the Evaluation callback runs its own loop."""

    def test_step(self, batch: dict, batch_idx: int) -> None:
        """Nothing per batch: the Evaluation callback runs its own loop."""

    def input_size_requirements(self) -> list:
        """G generates image_size px; D compares the real images with them."""
        return [
            (
                f"IC-GAN's generator built for image_size={self.hparams.image_size}",
                self.G.input_sizes(),
            ),
            ("IC-GAN's discriminator", self.D.input_sizes()),
        ]

    def configure_optimizers(self):
        hp = self.hparams
        opt_g = self.adam(self.G.parameters(), lr=hp.g_lr, betas=tuple(hp.betas), eps=hp.adam_eps)
        opt_d = self.adam(self.D.parameters(), lr=hp.d_lr, betas=tuple(hp.betas), eps=hp.adam_eps)
        return [opt_g, opt_d]
