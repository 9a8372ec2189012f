"""Which evaluator judges a dataset's generated images, and the class / attribute evaluator.

:func:`resolve_evaluator` picks the frozen :class:`~gan_suite.eval.evaluator.Evaluator` of a
data module (used by the ``Evaluation`` callback and by IC-GAN's feature extractor);
:func:`load_or_train_label_evaluator` provides it for class-labelled data (digits, MNIST, an
ImageFolder) and for attribute-labelled data (CelebA, the shapes with ``attributes=[...]``):
trained once on the real training images, then cached.
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
from torch import nn

from gan_suite.utils import atomic_write, default_cache_root, file_lock, seeded


def resolve_evaluator(datamodule, checkpoint: str | None = None) -> nn.Module | None:
    """The evaluator that judges generated images of ``datamodule``'s data, or None.

    - ``checkpoint``: that Evaluator (trained with ``experiments/evaluator.yaml``);
    - two-domain data with scene labels (the embedded shapes, or a folder with
      ``scenes.json``): the cached classifier + segmenter + domain head, trained on first use;
    - attribute-labelled data (``label_kind == "attributes"``: CelebA, or the shapes with
      ``attributes=[...]``): the cached attribute evaluator (width 32), whose
      ``classify_attributes`` StarGAN's and MatchGAN's scores need;
    - ``LabelledDataModule(source="shapes")`` with class labels: the evaluator of the shapes
      data;
    - other class-labelled data (digits, MNIST, class folders): the cached class evaluator
      (width 32: 128-d features), trained on the real training images on first use;
    - anything else (no labels): None.
    """
    from gan_suite.eval.evaluator import load_evaluator, load_or_train_evaluator

    if checkpoint:
        return load_evaluator(checkpoint)
    if not has_evaluator(datamodule):
        return None
    if getattr(datamodule, "labels", None) is not None and hasattr(datamodule, "root"):
        return load_or_train_evaluator(datamodule.root)
    if getattr(datamodule, "label_kind", None) == "attributes":
        # before the shapes branch: the two-domain shapes evaluator has no attribute head
        return load_or_train_label_evaluator(datamodule, width=32)
    if getattr(datamodule, "source", None) == "shapes":
        if datamodule.data_dir:
            return load_or_train_evaluator(datamodule.data_dir)
        embedded = dict(datamodule.embedded)
        return load_or_train_evaluator(None, data_seed=embedded.pop("seed", 0), **embedded)
    return load_or_train_label_evaluator(datamodule, width=32)


def has_evaluator(datamodule) -> bool:
    """Whether :func:`resolve_evaluator` finds (or trains) an evaluator for this set-up data
    module without a checkpoint: scene labels, the shapes source, class or attribute labels."""
    if getattr(datamodule, "labels", None) is not None and hasattr(datamodule, "root"):
        return True
    if getattr(datamodule, "source", None) == "shapes":
        return True
    return getattr(datamodule, "label_kind", None) in ("class", "attributes")


def resolve_evaluator_from_spec(spec: str) -> None:
    """:func:`resolve_evaluator` of a data module rebuilt from a JSON spec (``module``,
    ``class``, ``args``): run by rank 0 in a clean subprocess under DDP to fill the cache."""
    import importlib

    info = json.loads(spec)
    cls = getattr(importlib.import_module(info["module"]), info["class"])
    datamodule = cls(**info["args"])
    datamodule.setup("fit")  # as in the run: a data module knows its labels after setup
    if resolve_evaluator(datamodule, info.get("checkpoint")) is None:
        raise RuntimeError(f"no evaluator for the data module {spec}")


_DISTRIBUTED_ENV = (
    "LOCAL_RANK",
    "RANK",
    "WORLD_SIZE",
    "NODE_RANK",
    "GROUP_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
)


def fill_evaluator_cache(datamodule, checkpoint: str | None = None) -> None:
    """:func:`resolve_evaluator` of ``datamodule`` in a fresh single-process Python (cache
    hit: instant). Under DDP rank 0 calls it before a barrier: a Trainer nested in a DDP
    process would join the outer process group and deadlock."""
    import os
    import subprocess
    import sys

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _DISTRIBUTED_ENV and not k.startswith(("TORCHELASTIC_", "PL_"))
    }
    code = (
        "import sys; from gan_suite.eval.judge import resolve_evaluator_from_spec as f; "
        "f(sys.argv[1])"
    )
    spec = datamodule_spec(datamodule, checkpoint)
    subprocess.run([sys.executable, "-c", code, spec], env=env, check=True)


def datamodule_spec(datamodule, checkpoint: str | None) -> str:
    """The JSON spec of :func:`resolve_evaluator_from_spec` for ``datamodule``."""
    accepted = inspect.signature(type(datamodule)).parameters
    args = {k: v for k, v in dict(datamodule.hparams).items() if k in accepted}
    info = {
        "module": type(datamodule).__module__,
        "class": type(datamodule).__name__,
        "args": args,
        "checkpoint": checkpoint,
    }
    return json.dumps(info, default=str)


# -------------------------------------------------------------- the class / attribute evaluator
def load_or_train_label_evaluator(
    datamodule,
    checkpoint: str | None = None,
    max_epochs: int = 8,
    seed: int = 0,
    width: int = 16,
    cache_dir: str | None = None,
):
    """The suite's :class:`~gan_suite.eval.evaluator.Evaluator`, classification head only,
    trained once on the real training images of a ``LabelledDataModule`` and cached as an
    ordinary Evaluator checkpoint (``load_evaluator`` reads it).

    ``load_or_train_evaluator`` needs the two-domain shapes layout with masks; for digits,
    MNIST, an ImageFolder or CelebA there are neither domains nor masks, so this trains the
    same net on the label alone (images as 3-channel [-1, 1], as it judges them):

    - class labels (``label_kind == "class"``): ``n_classes`` logits, cross-entropy;
    - attribute labels (``"attributes"``: CelebA, the shapes with ``attributes=[...]``): one
      logit per attribute (``n_classes = A``, ``attribute_names`` set, read by
      ``classify_attributes``), binary cross-entropy on the 0/1 attribute vector.

    The held-out accuracy on the real test split is saved beside the checkpoint (``.json``):
    ``accuracy_real_test`` (for attributes the mean over attributes) and, for attributes,
    ``accuracy_real_test_per_attribute`` ``{name: accuracy}``.
    """
    from datamodules import LabelledDataModule
    from gan_suite.eval.evaluator import EVALUATOR_VERSION, Evaluator, load_evaluator

    if checkpoint:
        return load_evaluator(checkpoint)
    kind = getattr(datamodule, "label_kind", None)
    if kind not in ("class", "attributes"):
        raise ValueError(
            "the class / attribute evaluator needs a LabelledDataModule with class or "
            f"attribute labels (label_kind 'class' or 'attributes'); got "
            f"{type(datamodule).__name__}: pass model.evaluator_checkpoint"
        )
    overrides = {
        "channels": 3,
        "normalize": "tanh",
        "labelled_fraction": 1.0,
        "flip": False,
        "batch_size": 64,
        "num_workers": 0,
        "pin_memory": False,
        # how a model's run draws or batches its labels does not change the judge: every
        # run on the same images (StarGAN at 100%, on a subset, MatchGAN) gets the same one
        "labelled_sampling": "stratified",
        "labelled_list": None,
        "batch_composition": "random",
        "classes_per_batch": 4,
        "train_unlabelled": True,
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
    if kind == "attributes":
        ev_args["attribute_names"] = list(datamodule.attribute_names)
    identity = {
        "version": [EVALUATOR_VERSION, "labelled-1"],
        "data": data_args,
        "evaluator": ev_args,
        "train": {"max_epochs": max_epochs, "seed": seed},
    }
    if kind == "attributes":  # only here: the cached class evaluators keep their keys
        identity["labels"] = {"kind": kind, "attributes": ev_args["attribute_names"]}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    folder = Path(cache_dir).expanduser() if cache_dir else default_cache_root()
    folder = folder / "evaluators"
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "labelled" if kind == "class" else "attributes"
    ckpt = folder / f"{prefix}-{key[:20]}.ckpt"
    with file_lock(ckpt.with_suffix(".lock")):
        if not ckpt.is_file():
            dm = LabelledDataModule(**data_args)
            dm.setup("fit")
            dm.setup("test")
            # called from validation/test hooks, which run under inference mode
            with torch.inference_mode(False), torch.enable_grad(), seeded(seed):
                model = Evaluator(**ev_args)
                _train_classifier(model, dm.train_dataloader(), max_epochs, kind)
            model.eval()
            with torch.no_grad():
                accuracy = _held_out_accuracy(model, dm.test_dataloader(), kind)
            report = {**accuracy, "n_test": len(dm.test_set), **identity}
            acc = accuracy["accuracy_real_test"]
            rank_zero_info(f"[gan-suite] {kind} evaluator: real test accuracy {acc:.3f} -> {ckpt}")
            atomic_write(ckpt.with_suffix(".json"), lambda p: p.write_text(json.dumps(report)))
            state = {
                "state_dict": model.state_dict(),
                "hyper_parameters": dict(model.hparams),
                "pytorch-lightning_version": L.__version__,
            }
            atomic_write(ckpt, lambda p: torch.save(state, p))
    with torch.inference_mode(False):  # real parameters, not inference tensors
        return load_evaluator(ckpt)


def _train_classifier(model, loader, max_epochs: int, label_kind: str = "class") -> None:
    """Adam under a one-cycle schedule (the Evaluator's own recipe) on the true labels:
    class cross-entropy (``label_kind="class"``) or binary cross-entropy with logits of each
    attribute (``"attributes"``, float 0/1 targets (N, A))."""
    loss_fn = F.cross_entropy if label_kind == "class" else F.binary_cross_entropy_with_logits
    opt = torch.optim.Adam(
        model.parameters(), lr=model.hparams.lr, weight_decay=model.hparams.weight_decay
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=model.hparams.lr, total_steps=max_epochs * len(loader), pct_start=0.25
    )
    model.train()
    for _ in range(max_epochs):
        for batch in loader:
            logits = model.net.classify(model.augment(batch["image"]))
            loss = loss_fn(logits, batch["label_true"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


def _held_out_accuracy(model, loader, label_kind: str) -> dict:
    """``accuracy_real_test`` on ``loader``'s true labels; for attributes the mean over the
    attributes, with ``accuracy_real_test_per_attribute`` ``{name: accuracy}`` beside it."""
    if label_kind == "class":
        hits = [(model.classify(b["image"]).argmax(1) == b["label_true"]).float() for b in loader]
        return {"accuracy_real_test": float(torch.cat(hits).mean())}
    hits = [
        ((model.classify_attributes(b["image"]) > 0) == (b["label_true"] > 0.5)).float()
        for b in loader
    ]
    per_attribute = torch.cat(hits).mean(0)  # (A,)
    names = model.hparams.attribute_names
    return {
        "accuracy_real_test": float(per_attribute.mean()),
        "accuracy_real_test_per_attribute": dict(zip(names, per_attribute.tolist())),
    }
