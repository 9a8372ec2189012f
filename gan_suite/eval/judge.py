"""Judging generated images of a class-conditional model with a trained evaluator.

:class:`ImageJudge` scores generated images by their class accuracy under a frozen
:class:`~gan_suite.eval.evaluator.Evaluator` (per class, beside the accuracy on real images and
a chance level from shuffled labels) and by FID/KID in the evaluator's features.
:func:`load_or_train_label_evaluator` provides that evaluator for class-labelled data (digits,
MNIST, an ImageFolder): trained once on the real training images, then cached.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from gan_suite.eval.cache import atomic_write, default_cache_root, file_lock, seeded


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
        predicted = self.predict(fake)  # judged once: the accuracies and the chance level
        hits = (predicted == real_labels).float()
        out = {"class_acc": {"value": float(hits.mean()), "n_images": n, **judged}}
        names = class_names or [str(k) for k in range(int(real_labels.max()) + 1)]
        for k, name in enumerate(names):
            mask = real_labels == k
            if mask.any():
                value = float(hits[mask].mean())
                out[f"class_acc/{name}"] = {"value": value, "n_images": int(mask.sum()), **judged}
        # chance level of these very fakes: labels permuted (seeded), same class frequencies
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
        shuffled = float((predicted == real_labels[perm]).float().mean())
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


# ------------------------------------------------------------------------ the class evaluator
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
    from gan_suite.eval.evaluator import EVALUATOR_VERSION, Evaluator, load_evaluator

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
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_root()
    folder = folder / "evaluators"
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / f"labelled-{key[:20]}.ckpt"
    with file_lock(ckpt.with_suffix(".lock")):
        if not ckpt.is_file():
            dm = LabelledDataModule(**data_args)
            dm.setup("fit")
            dm.setup("test")
            # called from validation/test hooks, which run under inference mode
            with torch.inference_mode(False), torch.enable_grad(), seeded(seed):
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
            rank_zero_info(f"[gan-suite] class evaluator: real test accuracy {acc:.3f} -> {ckpt}")
            atomic_write(ckpt.with_suffix(".json"), lambda p: p.write_text(json.dumps(report)))
            state = {
                "state_dict": model.state_dict(),
                "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": L.__version__,
            }
            atomic_write(ckpt, lambda p: torch.save(state, p))
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
