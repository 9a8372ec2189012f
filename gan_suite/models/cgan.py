"""Conditional GAN (Mirza & Osindero 2014): G(z|y) and D(x|y) trained on eq. 2,

    min_G max_D  E_x[log D(x|y)] + E_z[log(1 - D(G(z|y)|y))],

with the generator's non-saturating form -E[log D(G(z|y)|y)] (Goodfellow et al. 2014, section
3), one D step then one G step per batch, by SGD with the paper's schedules (section 4.1):
learning rate 0.1 divided by 1.00004 every batch down to 1e-6, momentum 0.5 rising linearly
to 0.7, batches of 100.

- :class:`CGAN`: class-conditional images. ``arch: mlp`` is the paper's MNIST model (section
  4.1, z ~ U[0, 1]^100: "a uniform distribution within the unit hypercube", 784 sigmoid
  outputs on [0, 1] pixels); ``arch: conv`` a DCGAN-style variant for 32 px+ and RGB.
- :class:`CGANVectors`: the multimodal model of section 4.2 (image features -> word vectors),
  on :class:`VectorDataModule` arrays, evaluated by :func:`generated_tags`.

Evaluation (every ``eval_every_n_epochs`` validation and at test): the Parzen-window
log-likelihood of section 4.1 / Table 1 (``parzen_ll``), the class accuracy of generated images
under an evaluator trained on the real training images (``class_acc``, per class
``class_acc/<name>``, beside ``class_acc_real``, the evaluator's accuracy on real images, and
``class_acc_shuffled``, the same fakes scored against permuted labels), FID/KID in the
evaluator's features. Test writes ``metrics.json`` and ``report.html`` into the run directory.

One device:  gan-suite fit --config experiments/cgan.yaml [--data.init_args.source mnist ...]
Multi-GPU:   ... --config experiments/presets/ddp.yaml
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from gan_suite.eval.parzen import DEFAULT_SIGMAS, parzen_estimate
from gan_suite.losses import (
    discriminator_adv_loss,
    exponential_decay_lr,
    generator_adv_loss,
    linear_momentum,
)
from gan_suite.models.base import GANModule
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

    def _setup_training(self) -> None:
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    # -- noise and the schedules ----------------------------------------------------------
    def sample_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """(n, z_dim) noise: U[0, 1) (section 4.1's unit hypercube) or N(0, 1) (section 4.2)."""
        shape, dev = (n, self.hparams.z_dim), self.device
        if self.hparams.noise == "uniform":
            return torch.rand(shape, generator=generator).to(dev)
        return torch.randn(shape, generator=generator).to(dev)

    def schedule(self) -> tuple[float, float | None]:
        """(learning rate, momentum) for the next batch; momentum None for Adam."""
        hp = self.hparams
        if hp.optimizer == "adam":
            return hp.lr, None
        lr = exponential_decay_lr(int(self.iteration), hp.lr, hp.lr_decay_factor, hp.min_lr)
        momentum = linear_momentum(
            self.current_epoch,
            hp.momentum,
            hp.final_momentum,
            hp.momentum_start_epoch,
            hp.momentum_saturate_epoch,
        )
        return lr, momentum

    def _apply_schedule(self, optimizers) -> None:
        lr, momentum = self.schedule()
        for opt in optimizers:
            for group in opt.param_groups:
                group["lr"] = lr
                if momentum is not None:
                    group["momentum"] = momentum
        self.log("train/lr", lr, batch_size=self._batch_size)
        if momentum is not None:
            self.log("train/momentum", momentum, batch_size=self._batch_size)

    # -- the algorithm --------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> None:
        real, cond = self.real_and_condition(batch)
        opt_g, opt_d = self.optimizers()
        self._apply_schedule((opt_g, opt_d))
        self._discriminator_step(opt_d, real, cond)
        self._generator_step(opt_g, cond)
        self.iteration += 1

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

    def on_fit_start(self) -> None:
        # seed_everything gives every DDP rank the same noise; offset it by rank
        if self.trainer.world_size > 1:
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def configure_optimizers(self):
        hp = self.hparams
        if hp.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer={hp.optimizer!r}: expected 'sgd' (paper) or 'adam'")
        if hp.optimizer == "sgd":
            # lr and momentum are overwritten before every batch by schedule()
            make = lambda p: torch.optim.SGD(p, lr=hp.lr, momentum=hp.momentum)  # noqa: E731
        else:
            make = lambda p: torch.optim.Adam(p, lr=hp.lr, betas=tuple(hp.adam_betas))  # noqa: E731
        return [make(self.G.parameters()), make(self.D.parameters())]

    # -- evaluation plumbing --------------------------------------------------------------
    def _should_evaluate(self) -> bool:
        every = self.hparams.eval_every_n_epochs
        return (
            not self.trainer.sanity_checking and every > 0 and (self.current_epoch + 1) % every == 0
        )

    def on_validation_epoch_end(self) -> None:
        if self._should_evaluate():
            self._log_results("val", self.evaluate("val"))

    def on_test_epoch_end(self) -> None:
        results = self.evaluate("test")
        self._log_results("test", results)
        if self.trainer.is_global_zero:
            self._write_reports(results)

    def _log_results(self, prefix: str, results: dict[str, dict]) -> None:
        # every rank computes the same numbers (seeded noise, local metric states)
        for key, info in results.items():
            self.log(f"{prefix}/{key}", float(info["value"]), batch_size=1)

    def _write_reports(self, results: dict[str, dict]) -> None:
        """metrics.json + report.html, as the Evaluation callback writes them."""
        from gan_suite.eval.compare import compare_runs, to_markdown
        from gan_suite.eval.report import write_metrics_json, write_report_html

        trainer = self.trainer
        run_dir = Path(trainer.default_root_dir)
        dm = trainer.datamodule
        dataset = getattr(dm, "data_dir", None) or getattr(dm, "source", "")
        write_metrics_json(
            run_dir,
            results,
            model=type(self).__name__,
            checkpoint=trainer.ckpt_path,
            dataset=str(dataset),
            extra={"epoch": trainer.current_epoch, "iteration": int(self.iteration)},
        )
        report = write_report_html(run_dir)
        header, rows = compare_runs([run_dir])
        rank_zero_info("\n" + to_markdown(header, rows) + f"\n\nreport: {report}")


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
        eval_every_n_epochs: evaluation interval at validation (0: only at test).
        parzen_samples_per_class: generated samples per class for the Parzen window (1000).
        parzen_sigmas: bandwidth grid (None: 10 values log-spaced over [0.1, 1]).
        eval_n_images: real images of a split used at most (class acc, FID/KID, Parzen).
        eval_seed: seed of the evaluation noise (the same z at every evaluation).
        evaluator_checkpoint: an Evaluator checkpoint to judge classes; None = train one on
            the real training images once and cache it.
        evaluator_epochs: epochs of that training.
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
        eval_every_n_epochs: int = 1,
        parzen_samples_per_class: int = 1000,
        parzen_sigmas: list[float] | None = None,
        eval_n_images: int = 10000,
        eval_seed: int = 0,
        evaluator_checkpoint: str | None = None,
        evaluator_epochs: int = 8,
        channels_last: bool = False,
    ) -> None:
        super().__init__(channels_last=channels_last)
        self.save_hyperparameters()
        if arch not in ARCHS:
            raise ValueError(f"arch={arch!r}: expected one of {', '.join(ARCHS)}")
        if noise not in ("uniform", "gaussian"):
            raise ValueError(f"noise={noise!r}: expected 'uniform' or 'gaussian'")
        self._setup_training()
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
        self._judge: list[ImageJudge | None] = [None]  # a list: not a submodule, not saved
        self._real_cache: dict[str, tuple[Tensor, Tensor]] = {}

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

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer else None
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

    def evaluation_translations(self, batch: dict) -> list:
        """For the Evaluation callback (with an ``evaluator_checkpoint``): one G(z, y) per real
        image, labelled with that image's class."""
        from gan_suite.eval.metrics import Translation

        real, cond = self.prepare_images(batch["image"]), self.one_hot(batch["label_true"])
        fake = self.generate(self.sample_noise(real.shape[0]), cond)
        return [
            Translation(
                "G(z,y)",
                self.to_display(fake),
                self.to_display(real),
                source_label=batch["label_true"],
            )
        ]

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        return {"fake": self(batch["label_true"]), "label": batch["label_true"]}

    # -- evaluation -----------------------------------------------------------------------
    def judge(self) -> ImageJudge:
        """The evaluator of this data (trained on its real training images on first use)."""
        if self._judge[0] is None:
            dm = self.trainer.datamodule
            evaluator = load_or_train_label_evaluator(
                dm,
                checkpoint=self.hparams.evaluator_checkpoint,
                max_epochs=self.hparams.evaluator_epochs,
            )
            self._judge[0] = ImageJudge(evaluator.to(self.device), self.to_display)
        return self._judge[0]

    def _real(self, split: str) -> tuple[Tensor, Tensor]:
        """(images, labels) of the first ``eval_n_images`` of ``split``, read once a run."""
        if split not in self._real_cache:
            dm = self.trainer.datamodule
            dataset = dm.val_set if split == "val" else dm.test_set
            if dataset is None:
                dm.setup("validate" if split == "val" else "test")
                dataset = dm.val_set if split == "val" else dm.test_set
            n = min(self.hparams.eval_n_images, len(dataset))
            items = [dataset[i] for i in range(n)]
            images = torch.stack([torch.as_tensor(it["image"]) for it in items])
            labels = torch.as_tensor([int(it["label_true"]) for it in items])
            self._real_cache[split] = (images, labels)
        return self._real_cache[split]

    @torch.no_grad()
    def _generate_many(self, labels: Tensor, seed: int, chunk: int = 500) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        out = [
            self.generate(self.sample_noise(len(part), g), self.one_hot(part.to(self.device)))
            for part in labels.split(chunk)
        ]
        return torch.cat(out).float().cpu()

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, dict]:
        """Parzen log-likelihood, class accuracy and FID/KID on ``split`` (val or test)."""
        hp = self.hparams
        was_training = self.training
        self.eval()
        images, labels = self._real(split)
        results = self.judge().score(
            real=images,
            real_labels=labels,
            fake=self._generate_many(labels, hp.eval_seed),
            class_names=getattr(self.trainer.datamodule, "class_names", None),
        )
        balanced = torch.arange(hp.n_classes).repeat_interleave(hp.parzen_samples_per_class)
        unit = (lambda x: x) if hp.output == "sigmoid" else (lambda x: (x + 1) / 2)
        samples = unit(self._generate_many(balanced, hp.eval_seed + 2))
        val_images = unit(self._real("val")[0])
        parzen = parzen_estimate(
            samples,
            val_images,
            None if split == "val" else unit(images),
            sigmas=hp.parzen_sigmas or DEFAULT_SIGMAS,
        )
        results["parzen_ll"] = parzen.as_metric()
        self.train(was_training)
        return results


# ------------------------------------------------------------------------ judging images
class _JudgeFeatures(nn.Module):
    """The evaluator's pooled features of images given in the model's range and channels."""

    def __init__(self, evaluator: nn.Module, to_display) -> None:
        super().__init__()
        self.evaluator, self.to_display = evaluator, to_display

    def forward(self, images: Tensor) -> Tensor:
        return self.evaluator.features(self.to_display(images))


def _local_metrics(module: nn.Module) -> nn.Module:
    """Switch off torchmetrics' DDP gathering: every rank evaluates the same seeded images, so
    gathering would count each image world_size times (and skipping ranks would deadlock)."""
    from torchmetrics import Metric

    for m in module.modules():
        if isinstance(m, Metric):
            m.sync_on_compute = m._to_sync = False
    return module


class ImageJudge:
    """Class accuracy and FID/KID of generated images under a frozen evaluator.

    Args:
        evaluator: an :class:`~gan_suite.eval.evaluator.Evaluator` (``classify``/``features``).
        to_display: maps the model's images to (N, 3, H, W) in [-1, 1], the evaluator's input.
    """

    def __init__(self, evaluator: nn.Module, to_display, chunk: int = 500) -> None:
        self.evaluator, self.to_display, self.chunk = evaluator, to_display, chunk

    @torch.no_grad()
    def predict(self, images: Tensor) -> Tensor:
        dev = next(self.evaluator.parameters()).device
        parts = [
            self.evaluator.classify(self.to_display(x.to(dev))).argmax(1).cpu()
            for x in images.split(self.chunk)
        ]
        return torch.cat(parts)

    @torch.no_grad()
    def score(
        self, real: Tensor, real_labels: Tensor, fake: Tensor, class_names: list[str] | None
    ) -> dict[str, dict]:
        """``fake[i]`` was generated for class ``real_labels[i]``. Returns the metrics.json
        entries ``class_acc`` (+ per class, ``_real``, ``_shuffled``), ``fid``, ``kid``."""
        from gan_suite.eval.features import FeatureWrapper
        from gan_suite.eval.fid import FIDKID

        n, judged = len(fake), {"extractor": "evaluator"}
        hits = (self.predict(fake) == real_labels).float()
        out = {"class_acc": {"value": float(hits.mean()), "n_images": n, **judged}}
        names = class_names or [str(k) for k in range(int(real_labels.max()) + 1)]
        for k, name in enumerate(names):
            mask = real_labels == k
            if mask.any():
                value = float(hits[mask].mean())
                out[f"class_acc/{name}"] = {"value": value, "n_images": int(mask.sum()), **judged}
        # chance level of these very fakes: labels permuted (seeded), same class frequencies
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        shuffled = float((self.predict(fake) == real_labels[perm]).float().mean())
        out["class_acc_shuffled"] = {"value": shuffled, "n_images": n, **judged}
        real_acc = float((self.predict(real) == real_labels).float().mean())
        out["class_acc_real"] = {"value": real_acc, "n_images": len(real), **judged}
        dev = next(self.evaluator.parameters()).device
        extractor = FeatureWrapper(
            _JudgeFeatures(self.evaluator, self.to_display),
            num_features=self.evaluator.num_features,
            name="evaluator",
        )
        metric = _local_metrics(FIDKID(extractor, kid_subset_size=100).to(dev))
        for x in real.split(self.chunk):
            metric.update_real(x.to(dev))
        for x in fake.split(self.chunk):
            metric.update_fake(x.to(dev))
        s = metric.compute()
        info = {"extractor": s["extractor"], "n_images": s["n_fake"], "n_real": s["n_real"]}
        out["fid"] = {"value": s["fid"], **info}
        out["kid"] = {"value": s["kid_mean"], "std": s["kid_std"], **info}
        return out


def load_or_train_label_evaluator(
    datamodule,
    checkpoint: str | None = None,
    max_epochs: int = 8,
    seed: int = 0,
    width: int = 16,
    cache_dir: str | None = None,
):
    """The suite's :class:`~gan_suite.eval.evaluator.Evaluator`, classification head only,
    trained once on the real training images of a class-labelled ``LabelledDataModule`` and
    cached as an ordinary Evaluator checkpoint (``load_evaluator`` reads it).

    ``load_or_train_evaluator`` needs the two-domain shapes layout with masks; for digits,
    MNIST or an ImageFolder there are neither domains nor masks, so this trains the same net
    on cross-entropy of the class alone (images as 3-channel [-1, 1], as it judges them). The
    held-out accuracy on the real test split is saved beside the checkpoint (``.json``).
    """
    from datamodules import LabelledDataModule
    from gan_suite.eval.evaluator import (
        EVALUATOR_VERSION,
        Evaluator,
        _atomic_write,
        _default_cache_root,
        _file_lock,
        _seeded,
        load_evaluator,
    )

    if checkpoint:
        return load_evaluator(checkpoint)
    if getattr(datamodule, "label_kind", None) != "class":
        raise ValueError(
            "the class evaluator needs a LabelledDataModule with class labels (label_kind "
            f"'class'); got {type(datamodule).__name__}: pass model.evaluator_checkpoint"
        )
    overrides = {
        "channels": 3,
        "normalize": "tanh",
        "labelled_fraction": 1.0,
        "flip": False,
        "batch_size": 64,
        "num_workers": 0,
        "pin_memory": False,
    }
    # hparams also hold LightningCLI's bookkeeping (``_class_path``): keep constructor args
    accepted = inspect.signature(LabelledDataModule).parameters
    data_args = {k: v for k, v in dict(datamodule.hparams).items() if k in accepted}
    data_args.update(overrides)
    size = int(data_args["image_size"])
    ev_args = {
        "n_classes": datamodule.num_classes,
        "width": width,
        "input_size": 32 if size <= 40 else 64,
    }
    identity = {
        "version": [EVALUATOR_VERSION, "labelled-1"],
        "data": data_args,
        "evaluator": ev_args,
        "train": {"max_epochs": max_epochs, "seed": seed},
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    folder = Path(cache_dir).expanduser() if cache_dir else _default_cache_root()
    folder = folder / "evaluators"
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / f"labelled-{key[:20]}.ckpt"
    with _file_lock(ckpt.with_suffix(".lock")):
        if not ckpt.is_file():
            dm = LabelledDataModule(**data_args)
            dm.setup("fit")
            dm.setup("test")
            # called from validation/test hooks, which run under inference mode
            with torch.inference_mode(False), torch.enable_grad(), _seeded(seed):
                model = Evaluator(**ev_args)
                _train_classifier(model, dm.train_dataloader(), max_epochs)
            model.eval()
            with torch.no_grad():
                hits = [
                    (model.classify(b["image"]).argmax(1) == b["label_true"]).float()
                    for b in dm.test_dataloader()
                ]
            acc = float(torch.cat(hits).mean())
            report = {"accuracy_real_test": acc, "n_test": len(dm.test_set), **identity}
            rank_zero_info(f"[cgan] class evaluator: real test accuracy {acc:.3f} -> {ckpt}")
            _atomic_write(ckpt.with_suffix(".json"), lambda p: p.write_text(json.dumps(report)))
            state = {
                "state_dict": model.state_dict(),
                "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": L.__version__,
            }
            _atomic_write(ckpt, lambda p: torch.save(state, p))
    with torch.inference_mode(False):  # real parameters, not inference tensors
        return load_evaluator(ckpt)


def _train_classifier(model, loader, max_epochs: int) -> None:
    """Adam under a one-cycle schedule (the Evaluator's own recipe), class cross-entropy."""
    opt = torch.optim.Adam(
        model.parameters(), lr=model.hparams.lr, weight_decay=model.hparams.weight_decay
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=model.hparams.lr, total_steps=max_epochs * len(loader), pct_start=0.25
    )
    model.train()
    for _ in range(max_epochs):
        for batch in loader:
            loss = F.cross_entropy(model.classify(model.augment(batch["image"])), batch["label"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


# ------------------------------------------------------------------------ section 4.2
VECTOR_LAYOUT = (
    "expected <root>/train_features.npy (N, F) and <root>/train_word_vectors.npy (N, W) (one "
    "row per image-tag pair), optional val_* and test_* pairs, the vocabulary "
    "<root>/word_vectors.npy (V, W) and its words in <root>/words.txt (one per line) or "
    "<root>/vocab.npy (V strings)"
)


def _load_array(path: Path, ndim: int) -> np.ndarray:
    from datamodules import DatasetLayoutError

    if not path.is_file():
        raise DatasetLayoutError(f"{str(path)!r} not found; {VECTOR_LAYOUT}")
    array = np.load(path, allow_pickle=False)
    if array.ndim != ndim:
        raise ValueError(f"{str(path)!r}: expected {ndim} dimensions, got shape {array.shape}")
    return array


class VectorDataModule(L.LightningDataModule):
    """(image feature, word vector) pairs and a word-vector vocabulary, from ``.npy`` arrays.

    Layout: see ``VECTOR_LAYOUT``. A split without its files: validation is carved off train
    (seeded ``val_fraction``), test falls back to validation. Every shape is checked against
    the others on setup; an error names the file and both shapes. Batch keys: ``features``
    float (N, F), ``word_vector`` float (N, W), ``index`` int64 (N,).

    Args:
        data_dir: the folder holding the arrays.
        batch_size: pairs per batch (100 in the paper).
        num_workers: DataLoader workers.
        val_fraction: share of train held out when there is no ``val_*`` pair.
        seed: seed of that hold-out and of the shuffle.
    """

    def __init__(
        self,
        data_dir: str,
        batch_size: int = 100,
        num_workers: int = 0,
        val_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root = Path(data_dir).expanduser()
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}
        self.words: list[str] = []
        self.vocab_vectors: Tensor | None = None

    def _read_split(self, name: str) -> tuple[np.ndarray, np.ndarray] | None:
        f_path, w_path = self.root / f"{name}_features.npy", self.root / f"{name}_word_vectors.npy"
        if name != "train" and not f_path.exists() and not w_path.exists():
            return None
        feats, words = _load_array(f_path, 2), _load_array(w_path, 2)
        if len(feats) != len(words):
            raise ValueError(
                f"{str(f_path)!r} has {len(feats)} rows but {str(w_path)!r} has {len(words)}: "
                "row i of both must describe the same image-tag pair"
            )
        return feats, words

    def _read_vocab(self) -> None:
        vectors = _load_array(self.root / "word_vectors.npy", 2)
        txt, npy = self.root / "words.txt", self.root / "vocab.npy"
        if txt.is_file():
            words = [w.strip() for w in txt.read_text(encoding="utf-8").splitlines() if w.strip()]
        elif npy.is_file():
            words = [str(w) for w in np.load(npy, allow_pickle=False)]
        else:
            from datamodules import DatasetLayoutError

            raise DatasetLayoutError(f"no {str(txt)!r} or {str(npy)!r}; {VECTOR_LAYOUT}")
        if len(words) != len(vectors):
            raise ValueError(
                f"vocabulary: {len(words)} words but {str(self.root / 'word_vectors.npy')!r} "
                f"has {len(vectors)} rows"
            )
        self.words, self.vocab_vectors = words, torch.as_tensor(vectors, dtype=torch.float32)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        self._read_vocab()
        splits = {name: self._read_split(name) for name in ("train", "val", "test")}
        if splits["val"] is None:
            feats, words = splits["train"]
            order = np.random.default_rng(self.hparams.seed).permutation(len(feats))
            n_val = max(1, int(round(self.hparams.val_fraction * len(feats))))
            val, train = order[:n_val], order[n_val:]
            splits["train"], splits["val"] = (feats[train], words[train]), (feats[val], words[val])
        splits["test"] = splits["test"] or splits["val"]
        f_dim, w_dim = splits["train"][0].shape[1], self.vocab_vectors.shape[1]
        for name, (feats, words) in splits.items():
            if feats.shape[1] != f_dim or words.shape[1] != w_dim:
                raise ValueError(
                    f"{name}: features {feats.shape} / word vectors {words.shape} do not match "
                    f"train features (*, {f_dim}) / word_vectors.npy (*, {w_dim})"
                )
            self.splits[name] = (
                torch.as_tensor(feats, dtype=torch.float32),
                torch.as_tensor(words, dtype=torch.float32),
            )

    @property
    def feature_dim(self) -> int:
        return self.splits["train"][0].shape[1]

    @property
    def word_dim(self) -> int:
        return self.vocab_vectors.shape[1]

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        feats, words = self.splits[split]
        data = _PairDataset(feats, words)
        g = torch.Generator().manual_seed(self.hparams.seed) if train else None
        return DataLoader(
            data,
            self.hparams.batch_size,
            shuffle=train,
            generator=g,
            drop_last=train and len(data) >= self.hparams.batch_size,
            num_workers=self.hparams.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


class _PairDataset(Dataset):
    def __init__(self, features: Tensor, words: Tensor) -> None:
        self.features, self.words = features, words

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"features": self.features[i], "word_vector": self.words[i], "index": i}


@torch.no_grad()
def generated_tags(
    samples: Tensor, vocab_vectors: Tensor, k_nearest: int = 20, top: int = 10
) -> tuple[Tensor, Tensor]:
    """Section 4.2's tagging: per item, its generated word vectors vote for their
    ``k_nearest`` vocabulary words by cosine similarity; the ``top`` most voted words win.

    Args:
        samples: (n_items, n_samples, W) generated word vectors (the paper: 100 per image).
        vocab_vectors: (V, W).

    Returns:
        (n_items, top) word indices, most voted first (ties: lower index first), and their
        (n_items, top) vote counts.
    """
    n, s, _ = samples.shape
    k = min(k_nearest, len(vocab_vectors))
    sims = F.normalize(samples.float(), dim=-1) @ F.normalize(vocab_vectors.float(), dim=-1).T
    nearest = sims.topk(k, dim=-1).indices.reshape(n, s * k)  # (n, s*k)
    votes = torch.zeros(n, len(vocab_vectors), dtype=torch.long, device=samples.device)
    votes.scatter_add_(1, nearest, torch.ones_like(nearest))
    # a total order: more votes first, then the lower word index
    index = torch.arange(len(vocab_vectors), device=samples.device)
    key = votes.double() * len(vocab_vectors) - index
    order = key.topk(min(top, len(vocab_vectors)), dim=1).indices
    return order, votes.gather(1, order)


class CGANVectors(ConditionalGANBase):
    """Section 4.2: G(z | image features) -> word vector, D(word vector | image features).

    G: z (100, Gaussian) -> 500 ReLU, features (4096) -> 2000 ReLU, joined by a linear layer
    that outputs the 200-d word vector. D: word vector -> 500 ReLU, features -> 1200 ReLU,
    joint maxout 1000 x 3, one logit. Training as :class:`CGAN` (same SGD schedules).

    Evaluation: for each of the first ``eval_n_items`` items of the split, ``samples_per_item``
    word vectors vote for their ``k_nearest`` words (cosine); the ``top_words`` most voted are
    its tags (:func:`generated_tags`). Logged: ``tag_hit`` = share of items whose true word
    (the vocabulary word nearest its real word vector) is among its tags, and ``cosine`` =
    mean cosine similarity of a generated to the real word vector. Test also writes
    ``tags.tsv`` (item, true word, tags with votes).

    Args:
        feature_dim: F (4096: the convolutional image features). word_dim: W (200).
        z_dim, noise: noise prior (100, ``gaussian``).
        g_z_hidden (500), g_cond_hidden (2000), g_dropout (0.5): G's layers.
        d_x_units (500), d_cond_units (1200), d_joint_units (1000), d_joint_pieces (3),
        d_dropout (0.5), d_input_dropout (0.5): D's layers.
        g_init_range, d_init_range, optimizer, lr, lr_decay_factor, min_lr, momentum,
        final_momentum, momentum_start_epoch, momentum_saturate_epoch, adam_betas: as CGAN.
        eval_every_n_epochs: evaluation interval at validation (0: only at test).
        eval_n_items (100), samples_per_item (100), k_nearest (20), top_words (10), eval_seed.
    """

    def __init__(
        self,
        feature_dim: int = 4096,
        word_dim: int = 200,
        z_dim: int = 100,
        noise: str = "gaussian",
        g_z_hidden: int = 500,
        g_cond_hidden: int = 2000,
        g_dropout: float = 0.5,
        d_x_units: int = 500,
        d_cond_units: int = 1200,
        d_joint_units: int = 1000,
        d_joint_pieces: int = 3,
        d_dropout: float = 0.5,
        d_input_dropout: float = 0.5,
        g_init_range: float = 0.05,
        d_init_range: float = 0.005,
        optimizer: str = "sgd",
        lr: float = 0.1,
        lr_decay_factor: float = 1.00004,
        min_lr: float = 1e-6,
        momentum: float = 0.5,
        final_momentum: float = 0.7,
        momentum_start_epoch: int = 1,
        momentum_saturate_epoch: int = 250,
        adam_betas: tuple[float, float] = (0.5, 0.999),
        eval_every_n_epochs: int = 1,
        eval_n_items: int = 100,
        samples_per_item: int = 100,
        k_nearest: int = 20,
        top_words: int = 10,
        eval_seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._setup_training()
        self.G = init_uniform(
            ConditionalMLPGenerator(
                z_dim, feature_dim, word_dim, g_z_hidden, g_cond_hidden, None, g_dropout, "linear"
            ),
            g_init_range,
        )
        self.D = init_uniform(
            ConditionalMLPDiscriminator(
                word_dim,
                feature_dim,
                d_x_units,
                None,
                d_cond_units,
                None,
                d_joint_units,
                d_joint_pieces,
                d_dropout,
                d_input_dropout,
            ),
            d_init_range,
        )

    def generate(self, z: Tensor, cond: Tensor) -> Tensor:
        return self.G(z, cond)

    def discriminate(self, x: Tensor, cond: Tensor) -> Tensor:
        return self.D(x, cond)

    def forward(self, features: Tensor, z: Tensor | None = None) -> Tensor:
        """Word vectors (N, W) for image features (N, F)."""
        z = self.sample_noise(len(features)) if z is None else z
        return self.generate(z, features.to(self.device))

    def real_and_condition(self, batch: dict) -> tuple[Tensor, Tensor]:
        return batch["word_vector"], batch["features"]

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = getattr(self.trainer, "datamodule", None) if self._trainer else None
        if isinstance(dm, VectorDataModule):
            dm.setup(stage)
            hp = self.hparams
            if (dm.feature_dim, dm.word_dim) != (hp.feature_dim, hp.word_dim):
                raise ValueError(
                    f"the arrays in {str(dm.root)!r} have F={dm.feature_dim}, W={dm.word_dim}; "
                    f"the model has feature_dim={hp.feature_dim}, word_dim={hp.word_dim}: set "
                    "model.init_args.feature_dim / word_dim"
                )

    def sample_panels(self, batch: dict) -> dict[str, list[Tensor]]:
        raise NotImplementedError("CGANVectors generates word vectors: no SampleGrid")

    @torch.no_grad()
    def tag(self, features: Tensor, seed: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(tag indices, votes, generated vectors (n, samples, W)) for features (n, F)."""
        hp, dm = self.hparams, self.trainer.datamodule
        g = torch.Generator().manual_seed(hp.eval_seed if seed is None else seed)
        n, s = len(features), hp.samples_per_item
        cond = features.to(self.device).repeat_interleave(s, dim=0)  # (n*s, F)
        vectors = self.generate(self.sample_noise(n * s, g), cond).view(n, s, -1)
        vocab = dm.vocab_vectors.to(self.device)
        tags, votes = generated_tags(vectors, vocab, hp.k_nearest, hp.top_words)
        return tags, votes, vectors

    @torch.no_grad()
    def evaluate(self, split: str) -> dict[str, dict]:
        hp, dm = self.hparams, self.trainer.datamodule
        was_training = self.training
        self.eval()
        feats, words = (t[: hp.eval_n_items] for t in dm.splits[split])
        vocab = dm.vocab_vectors.to(self.device)
        truth = (F.normalize(words.to(self.device), dim=1) @ F.normalize(vocab, dim=1).T).argmax(1)
        tags, votes, vectors = self.tag(feats)
        hit = (tags == truth[:, None]).any(1).float()
        cos = F.cosine_similarity(vectors, words.to(self.device)[:, None, :], dim=-1)
        n, info = len(feats), {"extractor": "word_vectors"}
        results = {
            "tag_hit": {"value": float(hit.mean()), "n_images": n, "top": hp.top_words, **info},
            "cosine": {"value": float(cos.mean()), "n_images": n, **info},
        }
        self._last_tags = (truth.cpu(), tags.cpu(), votes.cpu())
        self.train(was_training)
        return results

    def _write_reports(self, results: dict[str, dict]) -> None:
        super()._write_reports(results)
        words = self.trainer.datamodule.words
        truth, tags, votes = self._last_tags
        lines = ["item\ttrue_word\ttags (votes)"]
        for i, (t, row, v) in enumerate(zip(truth, tags, votes)):
            shown = ", ".join(f"{words[j]} ({c})" for j, c in zip(row.tolist(), v.tolist()))
            lines.append(f"{i}\t{words[int(t)]}\t{shown}")
        (Path(self.trainer.default_root_dir) / "tags.tsv").write_text("\n".join(lines) + "\n")
