"""The evaluator network: a classifier + segmenter trained on a dataset's real labelled images.

It judges generated and translated images the way StarGAN/MatchGAN's classifier and CycleGAN's
"FCN score" do: *label preservation* (classify the translation, compare with the source's
label), *object preservation* (segment the translation, IoU with the source's mask); its pooled
penultimate features are the ``evaluator`` feature space of FID/KID on CPU runs.

Train it on a dataset with labels and masks (the embedded shapes data by default):

    gan-suite fit --config experiments/evaluator.yaml [--data.data_dir D]

or let :func:`load_or_train_evaluator` train it once per dataset (about a minute on 2 CPU
cores for the embedded data) and cache the checkpoint; :func:`load_evaluator` loads any
checkpoint of :class:`Evaluator`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from gan_suite.eval.cache import atomic_write, default_cache_root, file_lock, quiet, seeded
from gan_suite.nets.evaluator_net import EvaluatorNet

#: Bump when the net, the training recipe or the report change: old cached evaluators are
#: then ignored rather than silently reused.
EVALUATOR_VERSION = 2  # 2: domain head (FID features must see the domain)
DOMAINS = ("A", "B")


class Evaluator(L.LightningModule):
    """Classifier + segmenter of real labelled images, trained on domains A and B together.

    Each training batch contributes its A and its B images with their labels and masks, so the
    judge works on both styles and on translations, which lie in between. The loss is
    cross-entropy of the class plus ``seg_weight`` times per-pixel cross-entropy of the mask.

    Args:
        n_classes: number of object classes (masks hold 0 = background, 1 + class index).
        width: channels of the first encoder stage; features have ``4 * width`` dimensions.
        input_size: side (pixels, multiple of 16) every image is resized to inside the net, so
            images of any size >= 24 px are judged by the same computation.
        lr: peak Adam learning rate of the one-cycle schedule.
        weight_decay: Adam L2 weight decay.
        seg_weight: weight of the segmentation cross-entropy relative to the class one.
        domain_weight: weight of the domain (A vs B) cross-entropy. The class and mask heads
            must ignore style, but the pooled features are also FID/KID's feature space, which
            must tell the domains apart, or the identity mapping would score a perfect FID;
            the domain head keeps the style in the features.
        color_jitter: strength of the random per-image brightness, contrast and per-channel
            gain jitter applied to training images (0 = off); see ``augment``.
        noise_std: standard deviation of Gaussian pixel noise added to training images, in
            [-1, 1] units (0 = off).
    """

    def __init__(
        self,
        n_classes: int = 4,
        width: int = 32,
        input_size: int = 32,
        lr: float = 8e-3,
        weight_decay: float = 1e-4,
        seg_weight: float = 1.0,
        domain_weight: float = 1.0,
        color_jitter: float = 0.15,
        noise_std: float = 0.04,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = EvaluatorNet(n_classes=n_classes, width=width, input_size=input_size)
        self.num_features = self.net.num_features
        self.domain_head = nn.Linear(self.num_features, len(DOMAINS))
        metrics: dict[str, nn.Module] = {}
        for stage in ("val", "test"):
            for domain in (*DOMAINS, "all"):
                metrics[f"{stage}_acc_{domain}"] = MulticlassAccuracy(n_classes, average="micro")
                metrics[f"{stage}_miou_{domain}"] = MulticlassJaccardIndex(1 + n_classes)
        self.metrics = nn.ModuleDict(metrics)

    # ------------------------------------------------------------------ judging images
    def classify(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) images in [-1, 1] -> (N, n_classes) logits."""
        return self.net.classify(x)

    def segment(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) images in [-1, 1] -> (N, 1 + n_classes, H, W) logits, 0 = background."""
        return self.net.segment(x)

    def classify_domain(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) images in [-1, 1] -> (N, 2) logits of domain A (0) vs B (1)."""
        return self.domain_head(self.features(x))

    def features(self, x: Tensor) -> Tensor:
        """(N, 3, H, W) images in [-1, 1] -> (N, 4 * width) pooled features for FID/KID."""
        return self.net.features(x)

    def forward(self, x: Tensor) -> Tensor:
        """The features: a frozen Evaluator is itself a FID/KID feature extractor."""
        return self.features(x)

    # ------------------------------------------------------------------ training
    def augment(self, x: Tensor) -> Tensor:
        """Mild photometric jitter of training images, (N, 3, H, W) in [-1, 1].

        Translations carry colour casts, contrast changes and generator noise that the real
        images never show; a judge that has seen a little of that does not mistake them for
        a changed object. Kept mild and without hue permutation: the same features measure
        FID, which must stay sensitive to a translation getting the colours wrong.
        """
        s, n = self.hparams.color_jitter, x.shape[0]
        if s > 0:
            uniform = lambda *shape: torch.empty(*shape, device=x.device).uniform_(-s, s)  # noqa: E731
            gain = (1 + uniform(n, 3, 1, 1)) * (1 + uniform(n, 1, 1, 1))  # channel gain, contrast
            x = x * gain + uniform(n, 1, 1, 1)  # brightness
        if self.hparams.noise_std > 0:
            x = x + self.hparams.noise_std * torch.randn_like(x)
        return x.clamp(-1, 1)

    @staticmethod
    def _both_domains(batch: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor]:
        """Concatenate A and B: images (2N, 3, H, W), labels (2N,), masks (2N, H, W)."""
        missing = [k for s in DOMAINS for k in (s, f"{s}_label", f"{s}_mask") if k not in batch]
        if missing:
            raise KeyError(
                f"evaluator batches need images, labels and masks of both domains; missing "
                f"{missing} (the data needs scenes.json labels and masks/<split>/ files)"
            )
        return tuple(torch.cat([batch[f"A{k}"], batch[f"B{k}"]]) for k in ("", "_label", "_mask"))

    def _loss(self, x: Tensor, labels: Tensor, masks: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        class_logits, seg_logits = self.net(x)
        class_loss = F.cross_entropy(class_logits, labels)
        seg_loss = F.cross_entropy(seg_logits, masks)
        # _both_domains puts the A half first, then the B half
        domains = torch.arange(len(x), device=x.device) >= len(x) // 2
        domain_loss = F.cross_entropy(self.classify_domain(x), domains.long())
        hp = self.hparams
        total = class_loss + hp.seg_weight * seg_loss + hp.get("domain_weight", 1.0) * domain_loss
        return total, class_loss, seg_loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """CE(class) + seg_weight * CE(pixels) on the jittered A and B images of the batch."""
        x, labels, masks = self._both_domains(batch)
        loss, class_loss, seg_loss = self._loss(self.augment(x), labels, masks)
        self.log_dict(
            {"train/loss": loss, "train/class_loss": class_loss, "train/seg_loss": seg_loss},
            prog_bar=True,
            batch_size=x.shape[0],
        )
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        x, labels, masks = self._both_domains(batch)
        class_logits, seg_logits = self.net(x)
        n = batch["A"].shape[0]
        preds, seg_preds = class_logits.argmax(1), seg_logits.argmax(1)
        parts = {"A": slice(0, n), "B": slice(n, None), "all": slice(None)}
        for domain, part in parts.items():
            acc = self.metrics[f"{stage}_acc_{domain}"]
            miou = self.metrics[f"{stage}_miou_{domain}"]
            acc.update(preds[part], labels[part])
            miou.update(seg_preds[part], masks[part])
            suffix = "" if domain == "all" else f"_{domain}"
            self.log(f"{stage}/acc{suffix}", acc, batch_size=n)
            self.log(f"{stage}/miou{suffix}", miou, batch_size=n)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Accuracy and mIoU per domain (``val/acc_A``, ``val/miou_B``, ...) and overall."""
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """As validation, under ``test/``."""
        self._eval_step(batch, "test")

    def configure_optimizers(self) -> dict[str, Any]:
        """Adam under a one-cycle schedule (warm-up to ``lr`` over the first quarter of the
        steps, then cosine decay to ~0), stepped per batch.

        The budget is ~150 steps; a warm-up lets a rate high enough to learn in that budget
        start without diverging, and the decay settles the weights (measured on the shapes
        data: 92% accuracy after 80 steps against 75% with Adam at a cosine-decayed 2e-3).
        Without a finite step budget (``max_epochs=-1``) the rate stays constant.
        """
        opt = torch.optim.Adam(
            self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        total = self.trainer.estimated_stepping_batches
        if not 0 < total < float("inf"):
            return {"optimizer": opt}
        one_cycle = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=self.hparams.lr, total_steps=int(total), pct_start=0.25
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": one_cycle, "interval": "step"}}


# ---------------------------------------------------------------------- scoring
@torch.no_grad()
def evaluate_evaluator(evaluator: Evaluator, datamodule: L.LightningDataModule) -> dict[str, Any]:
    """Held-out accuracy and mIoU per domain over every pair of the data module's test split.

    Returns ``{"accuracy_A", "accuracy_B", "miou_A", "miou_B", "n_test"}``; mIoU is the mean
    over background and the object classes of the per-class IoU accumulated over the split.
    """
    n_classes = evaluator.hparams.n_classes
    acc = {d: MulticlassAccuracy(n_classes, average="micro") for d in DOMAINS}
    miou = {d: MulticlassJaccardIndex(1 + n_classes) for d in DOMAINS}
    datamodule.setup("test")
    was_training = evaluator.training
    evaluator.eval()
    n_test = 0
    for batch in datamodule.test_dataloader():
        for d in DOMAINS:
            class_logits, seg_logits = evaluator.net(batch[d].to(evaluator.device))
            acc[d].update(class_logits.argmax(1).cpu(), batch[f"{d}_label"])
            miou[d].update(seg_logits.argmax(1).cpu(), batch[f"{d}_mask"])
        n_test += batch["A"].shape[0]
    evaluator.train(was_training)
    report: dict[str, Any] = {f"accuracy_{d}": float(acc[d].compute()) for d in DOMAINS}
    report.update({f"miou_{d}": float(miou[d].compute()) for d in DOMAINS})
    return {**report, "n_test": n_test}


# ---------------------------------------------------------------------- loading and caching
def load_evaluator(checkpoint: str | os.PathLike[str]) -> Evaluator:
    """Load an :class:`Evaluator` checkpoint on CPU, frozen: eval mode, no gradients.

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist (the message names it).
    """
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"evaluator checkpoint {str(path)!r} not found; train one with "
            "`gan-suite fit --config experiments/evaluator.yaml` (checkpoints land in "
            "runs/evaluator/<id>/checkpoints/) or call load_or_train_evaluator()"
        )
    model = Evaluator.load_from_checkpoint(path, map_location="cpu")
    return model.eval().requires_grad_(False)


def evaluator_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The held-out report written beside a cached evaluator (``.json`` or its ``.ckpt`` path)."""
    path = Path(path)
    with path.with_suffix(".json").open() as f:
        return json.load(f)


def require_labelled_dataset(root: str | os.PathLike[str]) -> Path:
    """Return ``root`` if it holds ``scenes.json`` labels and ``masks/``, else raise naming it."""
    from datamodules import DatasetLayoutError

    root = Path(root).expanduser()
    missing = [n for n in ("scenes.json", "masks") if not (root / n).exists()]
    if missing:
        raise DatasetLayoutError(
            f"{str(root)!r} has no {' or '.join(missing)}: an evaluator needs labelled data "
            "(class labels in scenes.json and semantic masks in masks/<split>/<id>.png beside "
            "the trainA/trainB/testA/testB folders). Train one on such data with `gan-suite fit "
            "--config experiments/evaluator.yaml --data.data_dir ...`, or pass checkpoint=..."
        )
    return root


def evaluator_fingerprint(root: Path, hparams: dict[str, Any], train: dict[str, Any]) -> str:
    """Hash of the dataset's identity (its scenes.json), the net's hyperparameters, the
    training budget and ``EVALUATOR_VERSION``: any change gives a new cached evaluator."""
    identity = {
        "version": EVALUATOR_VERSION,
        "scenes": hashlib.sha256((root / "scenes.json").read_bytes()).hexdigest(),
        "hparams": hparams,
        "train": train,
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return "evaluator-" + hashlib.sha256(text.encode()).hexdigest()[:20]


def train_evaluator(
    datamodule: L.LightningDataModule,
    model: Evaluator,
    *,
    max_epochs: int,
    seed: int,
    num_threads: int | None = None,
) -> tuple[L.Trainer, float]:
    """Fit ``model`` on CPU without logger, checkpoints or validation; returns (trainer, s).

    ``num_threads``: torch intra-op threads during the fit (restored afterwards); None keeps
    the process setting. On cores shared with other jobs, 1 thread can be ~10x faster than 2.
    """
    # No `deterministic=True`: it switches torch.use_deterministic_algorithms on for the whole
    # process, which would outlive this call; seeded CPU training repeats without it.
    with quiet("lightning.pytorch", "lightning.fabric"):
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            max_epochs=max_epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            default_root_dir=tempfile.gettempdir(),
        )
    threads = torch.get_num_threads()
    start = time.perf_counter()
    try:
        torch.set_num_threads(num_threads or threads)
        with seeded(seed), quiet("lightning.pytorch", "lightning.fabric"):
            trainer.fit(model, datamodule=datamodule)
    finally:
        torch.set_num_threads(threads)
    return trainer, time.perf_counter() - start


def load_or_train_evaluator(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    max_epochs: int = 5,
    seed: int = 0,
    batch_size: int = 32,
    num_workers: int = 0,
    num_threads: int | None = None,
    data_seed: int = 0,
    evaluator_kwargs: dict[str, Any] | None = None,
    **embedded: Any,
) -> Evaluator:
    """The frozen evaluator of a labelled dataset: from the cache, or trained once and cached.

    Args:
        data_dir: CycleGAN-layout root with ``scenes.json`` labels and ``masks/``; None = the
            embedded shapes data, ``materialize_shapes(seed=data_seed, **embedded)``.
        checkpoint: load this Evaluator checkpoint instead (no data, no training).
        cache_dir: where ``evaluators/<fingerprint>.ckpt`` and ``.json`` live (and the
            embedded data, unless ``embedded["root"]`` says otherwise); default
            ``$GAN_SUITE_CACHE`` or ``~/.cache/gan-suite``.
        max_epochs: training epochs (each sees every training scene in A and in B).
        seed: training seed (initialisation, shuffling, augmentation).
        batch_size: scenes per batch (each gives an A and a B image).
        num_workers: DataLoader workers while training (0: decoding 64 px PNGs is cheap next
            to the 2-core compute, and workers would compete for those cores).
        num_threads: torch threads while training (None: unchanged); see train_evaluator.
        data_seed: seed of the embedded dataset.
        evaluator_kwargs: constructor arguments of :class:`Evaluator` (defaults otherwise).
        **embedded: other ``materialize_shapes`` options: ``n_train``, ``n_test``,
            ``image_size``, ``root``.

    The held-out accuracy/mIoU per domain on the test split is saved beside the checkpoint
    (read it with :func:`evaluator_report`). Concurrent callers are serialised by a lock
    file, so only the first trains. Returns the model in eval mode without gradients.
    """
    if checkpoint is not None:
        return load_evaluator(checkpoint)
    plan = _plan(
        data_dir, cache_dir, max_epochs, seed, batch_size, data_seed, evaluator_kwargs, embedded
    )
    root, ckpt = plan["root"], plan["ckpt"]
    with file_lock(ckpt.with_suffix(".lock")):
        if not ckpt.is_file():
            with seeded(seed):  # the initial weights are part of the seeded recipe
                model = Evaluator(**dict(plan["model"].hparams))
            from datamodules import UnpairedDataModule

            # Images at their stored size, no crop: the net resizes to input_size itself,
            # exactly as it does when judging translations of any size.
            size = plan["image_size"]
            dm = UnpairedDataModule(str(root), size, size, True, batch_size, num_workers, seed=seed)
            trainer, seconds = train_evaluator(
                dm, model, max_epochs=max_epochs, seed=seed, num_threads=num_threads
            )
            report = evaluate_evaluator(model, dm)
            report.update(epochs=max_epochs, seconds=round(seconds, 1), data=str(root))
            atomic_write(ckpt.with_suffix(".json"), lambda p: p.write_text(json.dumps(report)))
            # The checkpoint goes last: its presence means the report exists too.
            atomic_write(ckpt, lambda p: trainer.save_checkpoint(p, weights_only=True))
    return load_evaluator(ckpt)


def evaluator_checkpoint_path(
    data_dir: str | os.PathLike[str] | None = None, **kwargs: Any
) -> Path:
    """Where :func:`load_or_train_evaluator` with the same arguments caches its checkpoint
    (the embedded data is materialised to fingerprint it; nothing is trained)."""
    names = ("cache_dir", "max_epochs", "seed", "batch_size", "data_seed", "evaluator_kwargs")
    defaults = {n: inspect.signature(load_or_train_evaluator).parameters[n].default for n in names}
    args = {**defaults, **kwargs}
    for unused in ("num_workers", "num_threads"):  # they do not change the result
        kwargs.pop(unused, None)
    embedded = {k: v for k, v in kwargs.items() if k not in names}
    return _plan(data_dir, *(args[n] for n in names), embedded)["ckpt"]


def _plan(
    data_dir: str | os.PathLike[str] | None,
    cache_dir: str | os.PathLike[str] | None,
    max_epochs: int,
    seed: int,
    batch_size: int,
    data_seed: int,
    evaluator_kwargs: dict[str, Any] | None,
    embedded: dict[str, Any],
) -> dict[str, Any]:
    """Resolve the dataset root, build the untrained model and name its cache checkpoint."""
    from datamodules import load_scenes, materialize_shapes

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    if data_dir is None:
        root = materialize_shapes(**{"root": cache, **embedded, "seed": data_seed})
    else:
        root = require_labelled_dataset(data_dir)
    model = Evaluator(**(evaluator_kwargs or {}))
    train_cfg = {"max_epochs": max_epochs, "seed": seed, "batch_size": batch_size}
    folder = cache / "evaluators"
    folder.mkdir(parents=True, exist_ok=True)
    name = evaluator_fingerprint(root, dict(model.hparams), train_cfg)
    return {
        "root": root,
        "model": model,
        "ckpt": folder / f"{name}.ckpt",
        "image_size": int(load_scenes(root).get("image_size", 64)),
    }
