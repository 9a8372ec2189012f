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
from pathlib import Path

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from gan_suite.callbacks.evaluation import _EvaluatorFeatures
from gan_suite.eval.instance_scores import InstanceScores
from gan_suite.eval.neighbours import (
    extract_features,
    knn_cosine,
    knn_cosine_query,
    load_resnet50_features,
)
from gan_suite.losses import discriminator_adv_loss, generator_adv_loss
from gan_suite.models.base import GANModule
from gan_suite.nets.biggan import BigGANDiscriminator, BigGANGenerator

FEATURE_EXTRACTORS = {"evaluator": 128, "resnet50": 2048}  # name -> default feature size


def _unaugmented_train_set(dm):
    """The training items without random flips: features describe the stored image."""
    from datamodules.labelled_data import LabelledDataset, LabelledTransform

    ds = dm.train_set
    if isinstance(ds, LabelledDataset) and hasattr(dm, "normalize"):
        tf = LabelledTransform(
            dm.image_size, flip=False, train=False, channels=dm.channels, normalize=dm.normalize
        )
        return LabelledDataset(ds.split, tf, ds.labelled)
    return ds


def _evaluator_for(dm, checkpoint: str | None):
    """The suite's Evaluator: from ``checkpoint``; the cached one of the shapes data; for
    other class-labelled data (digits, MNIST, class folders) the cached class evaluator
    trained on its real training images (width 32: 128-d features, ``feature_dim``'s
    default); else None."""
    from gan_suite.eval.evaluator import load_evaluator, load_or_train_evaluator
    from gan_suite.eval.judge import load_or_train_label_evaluator

    if checkpoint:
        return load_evaluator(checkpoint)
    if getattr(dm, "source", None) != "shapes":
        if getattr(dm, "label_kind", None) == "class":
            return load_or_train_label_evaluator(dm, width=32)
        return None
    if dm.data_dir:
        return load_or_train_evaluator(dm.data_dir)
    embedded = dict(dm.embedded)
    return load_or_train_evaluator(None, data_seed=embedded.pop("seed", 0), **embedded)


class ICGAN(GANModule):
    """IC-GAN with a BigGAN backbone, hinge loss, EMA generator; manual optimisation.

    Args:
        image_size: generated side, 32, 64 (the paper's ImageNet 64x64 setting) or 128.
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
        include_self: whether x_i belongs to its own neighbourhood A_i (yes, as in the paper).
        nn_chunk_size: block side of the exact k-NN search (memory chunk_size^2 floats).
        feature_batch_size: images per forward of the one-time feature pass.
        feature_cache: ``.pt`` file for the features and neighbours of the training set
            (reused when it matches), ``auto`` = ``<run dir>/instance_features.pt``, or None.
        gan_mode: adversarial loss (``hinge``).
        g_lr, d_lr: Adam learning rates (1e-4 each in IC-GAN's ImageNet 64x64 config).
        betas: Adam betas ((0, 0.999), BigGAN). adam_eps: Adam epsilon (1e-6, BigGAN).
        n_d_steps: D steps per G step (1), each with freshly sampled neighbours.
        ema_decay: decay of the EMA copy of G used for sampling/evaluation (0.9999; 0 = off).
        ema_start: G steps before the EMA starts averaging (it copies G until then).
        eval_samples_per_instance: samples per conditioning image at validation/test.
        n_sample_columns: samples per row of the sample grid.
        channels_last: run the nets in channels_last memory format.
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
        include_self: bool = True,
        nn_chunk_size: int = 4096,
        feature_batch_size: int = 256,
        feature_cache: str | None = None,
        gan_mode: str = "hinge",
        g_lr: float = 1e-4,
        d_lr: float = 1e-4,
        betas: tuple[float, float] = (0.0, 0.999),
        adam_eps: float = 1e-6,
        n_d_steps: int = 1,
        ema_decay: float = 0.9999,
        ema_start: int = 0,
        eval_samples_per_instance: int = 1,
        n_sample_columns: int = 5,
        channels_last: bool = False,
    ) -> None:
        super().__init__(channels_last=channels_last)
        if feature_extractor not in FEATURE_EXTRACTORS:
            raise ValueError(
                f"feature_extractor={feature_extractor!r}: expected one of "
                f"{sorted(FEATURE_EXTRACTORS)}"
            )
        feature_dim = feature_dim or FEATURE_EXTRACTORS[feature_extractor]
        self.save_hyperparameters()
        self.hparams.feature_dim = feature_dim
        self.G = BigGANGenerator(
            image_size, z_dim, g_ch, feature_dim, feature_embed_dim, n_classes, class_embed_dim
        )
        self.D = BigGANDiscriminator(image_size, d_ch, feature_dim, n_classes)
        # A registered submodule: the EMA weights are saved in (and restored from) checkpoints
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False) if ema_decay > 0 else None
        # Frozen helpers kept out of the state dict (object.__setattr__ skips registration)
        for name in ("_extractor", "_evaluator", "instance_features", "neighbours"):
            object.__setattr__(self, name, None)
        object.__setattr__(self, "_scores", {})
        self.train_labels: Tensor | None = None
        self._real_set = None

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
            ev = _evaluator_for(self._datamodule(), self.hparams.evaluator_checkpoint)
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
                net = _EvaluatorFeatures(ev)
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

    def prepare_instances(self, datamodule) -> None:
        """Features of every training instance and their k-NN, once (or from the cache)."""
        dataset = _unaugmented_train_set(datamodule)
        hp, cache = self.hparams, self._cache_path()
        key = {
            "n": len(dataset),
            # which data: a user cache path must not be reused for another dataset of size n
            "data": repr(
                [getattr(datamodule, a, None) for a in ("source", "data_dir", "embedded")]
            ),
            "extractor": hp.feature_extractor,
            "dim": hp.feature_dim,
            "k": hp.k,
            "include_self": hp.include_self,
        }
        stored = torch.load(cache, weights_only=True) if cache and cache.is_file() else None
        if stored is not None and stored["key"] == key:
            feats, labels, nn_idx = stored["features"], stored["labels"], stored["neighbours"]
        else:
            feats, labels = extract_features(
                self.feature_net(), dataset, hp.feature_batch_size, self.device
            )
            self.embed_instances(dataset[0]["image"][None])  # checks feature_dim
            nn_idx = knn_cosine(
                feats,
                hp.k,
                chunk_size=hp.nn_chunk_size,
                include_self=hp.include_self,
                normalized=True,
            )
            if cache is not None and self.global_rank == 0:
                cache.parent.mkdir(parents=True, exist_ok=True)
                torch.save(
                    {
                        "key": key,
                        "features": feats.cpu(),
                        "labels": labels,
                        "neighbours": nn_idx.cpu(),
                    },
                    cache,
                )
        object.__setattr__(self, "instance_features", feats.to(self.device))
        object.__setattr__(self, "neighbours", nn_idx.cpu())
        self.train_labels, self._real_set = labels, datamodule.train_set
        rank_zero_info(f"IC-GAN: {len(dataset)} instances, {hp.k}-NN neighbourhoods ready")

    def _cache_path(self) -> Path | None:
        cache = self.hparams.feature_cache
        if cache == "auto":
            return Path(self.trainer.default_root_dir) / "instance_features.pt"
        return Path(cache) if cache else None

    def on_fit_start(self) -> None:
        self.prepare_instances(self.trainer.datamodule)

    def sample_neighbours(self, instances: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """For each instance i draw j uniformly from A_i: returns (x_j, y_j or None, j)."""
        row = torch.randint(0, self.neighbours.shape[1], (len(instances),))
        j = self.neighbours[instances.cpu(), row]
        items = [self._real_set[int(t)] for t in j]
        images = torch.stack([it["image"] for it in items]).to(self.device)
        labels = None
        if self.hparams.n_classes > 0:
            labels = torch.as_tensor([int(it["label"]) for it in items], device=self.device)
            if (labels < 0).any():
                raise ValueError(
                    "class-conditional IC-GAN (n_classes > 0) needs labelled data: "
                    "a neighbour has no label (data.labelled_fraction < 1?)"
                )
        return self.prepare_images(images), labels, j

    # -- the algorithm (eq. 2) ----------------------------------------------------------
    def sample_z(self, n: int) -> Tensor:
        return torch.randn(n, self.hparams.z_dim, device=self.device)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        # the shuffled loader samples the instances i uniformly; their images are not used
        instances = batch["index"]
        h = self.instance_features[instances.to(self.instance_features.device)]
        for _ in range(self.hparams.n_d_steps):
            real, y, _ = self.sample_neighbours(instances)
            self._discriminator_step(opt_d, real, h, y)
        self._generator_step(opt_g, h, y)
        self.update_ema()

    def _discriminator_step(self, opt_d, real: Tensor, h: Tensor, y: Tensor | None) -> None:
        """Hinge loss on (x_j, h_i) real and (G(z, h_i), h_i) fake, G fixed."""
        with self.toggled_optimizer(opt_d):
            fake = self.G(self.sample_z(real.shape[0]), h, y).detach()
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
        g_steps = self.global_step // (1 + self.hparams.n_d_steps)
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

    # -- evaluation ---------------------------------------------------------------------
    def _stage_scores(self, stage: str) -> InstanceScores | None:
        """FID/KID (evaluator features) and class-agreement counters of one stage."""
        if stage not in self._scores:
            from gan_suite.eval.features import make_feature_extractor

            ev = self.evaluator()
            if ev is None:
                rank_zero_warn(
                    "IC-GAN: no evaluator for this data (evaluator_checkpoint=...): "
                    "no FID or class agreement"
                )
                self._scores[stage] = None
            else:
                net = make_feature_extractor(
                    "evaluator", _EvaluatorFeatures(ev), None, ev.num_features
                )
                self._scores[stage] = InstanceScores(ev, net)
        scores = self._scores[stage]
        return None if scores is None else scores.to(self.device)

    @torch.no_grad()
    def _eval_step(self, batch: dict, stage: str) -> None:
        """Condition on held-out images: FID/KID of the samples against those images, and the
        share of samples whose evaluator class is the instance's class."""
        scores = None if self.trainer.sanity_checking else self._stage_scores(stage)
        if scores is None:
            return
        n = self.hparams.eval_samples_per_instance
        images, labels = batch["image"], self._labels_of(batch)
        h = self.embed_instances(images)
        fakes = self.generate(h, n, labels).flatten(0, 1)  # (B * n, 3, S, S)
        target = scores.update(images, fakes, batch.get("label_true"), n)
        if stage != "test":
            return
        # chance level: samples conditioned on another instance (the batch rolled by one)
        other_labels = None if labels is None else labels.roll(1, 0)
        others = self.generate(h.roll(1, 0), n, other_labels).flatten(0, 1)
        scores.update_other_instance(others, target, n)
        # how class-pure the feature neighbourhoods themselves are (the data's ceiling)
        if self.instance_features is not None and (self.train_labels >= 0).all():
            nn_idx = knn_cosine_query(h, self.instance_features, self.hparams.k).cpu()
            scores.update_purity(self.train_labels[nn_idx] == target.cpu()[:, None])

    def _compute(self, stage: str) -> dict[str, dict]:
        scores, hp = self._scores.get(stage), self.hparams
        if scores is None:
            return {}
        return scores.compute(stage == "test", extractor=hp.feature_extractor, k=hp.k)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        for key, info in self._compute("val").items():
            self.log(f"val/{key}", float(info["value"]), rank_zero_only=True)

    def on_test_epoch_end(self) -> None:
        results = self._compute("test")
        for key, info in results.items():
            self.log(f"test/{key}", float(info["value"]), rank_zero_only=True)
        if results and self.trainer.is_global_zero:
            self._write_reports(results)

    def _write_reports(self, results: dict[str, dict]) -> None:
        """metrics.json (the Evaluation callback's schema) and report.html in the run dir."""
        from gan_suite.eval.report import write_run_reports

        dm, hp = self._datamodule(), self.hparams
        report = write_run_reports(
            self.trainer,
            results,
            model=type(self).__name__,
            dataset=str(getattr(dm, "data_dir", None) or getattr(dm, "source", "")),
            extra={
                "feature_extractor": hp.feature_extractor,
                "k": hp.k,
                "epoch": self.current_epoch,
                "global_step": self.global_step,
            },
            print_table=False,
        )
        rank_zero_info(f"IC-GAN report: {report}")

    def configure_optimizers(self):
        hp = self.hparams
        opt_g = torch.optim.Adam(self.G.parameters(), hp.g_lr, tuple(hp.betas), hp.adam_eps)
        opt_d = torch.optim.Adam(self.D.parameters(), hp.d_lr, tuple(hp.betas), hp.adam_eps)
        return [opt_g, opt_d]
