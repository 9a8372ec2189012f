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

:mod:`gan_suite.eval.evaluator_model` holds the LightningModule and its training recipe; this
module decides where a trained evaluator is cached and when to train one, and re-exports
:class:`Evaluator` (the class path ``experiments/evaluator.yaml`` names).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from pathlib import Path
from typing import Any

from gan_suite.eval.evaluator_model import (
    DOMAINS,
    Evaluator,
    evaluate_evaluator,
    train_evaluator,
)
from gan_suite.utils import atomic_write, default_cache_root, file_lock, seeded

__all__ = [
    "DOMAINS",
    "EVALUATOR_VERSION",
    "Evaluator",
    "evaluate_evaluator",
    "evaluator_checkpoint_path",
    "evaluator_fingerprint",
    "evaluator_report",
    "evaluator_summary",
    "load_evaluator",
    "load_or_train_evaluator",
    "require_labelled_dataset",
    "train_evaluator",
]

#: Bump when the net, the training recipe or the report change: old cached evaluators are
#: then ignored rather than silently reused.
EVALUATOR_VERSION = 2  # 2: domain head (FID features must see the domain)
#: Fewest optimizer steps of a default evaluator training (the one-cycle recipe's budget).
MIN_STEPS = 150


def load_evaluator(checkpoint: str | os.PathLike[str]) -> Evaluator:
    """Load an :class:`Evaluator` checkpoint on CPU, frozen: eval mode, no gradients.

    The model remembers where it came from (``checkpoint_path``, absolute), so reports can
    name their judge (:func:`evaluator_summary`).

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
    model.checkpoint_path = str(path.resolve())
    return model.eval().requires_grad_(False)


def evaluator_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The held-out report written beside a cached evaluator (``.json`` or its ``.ckpt`` path)."""
    path = Path(path)
    with path.with_suffix(".json").open() as f:
        return json.load(f)


def evaluator_summary(evaluator: Any) -> dict[str, Any] | None:
    """What a run's ``metrics.json`` says about its judge: the checkpoint path and the
    held-out numbers of the report beside it (``accuracy*``, ``miou*``, ``n_test``: the class,
    attribute and two-domain evaluators alike), or just the path when the checkpoint has no
    report (trained with ``experiments/evaluator.yaml``). None without a known checkpoint."""
    path = getattr(evaluator, "checkpoint_path", None)
    if not path:
        return None
    summary: dict[str, Any] = {"checkpoint": str(path)}
    try:
        report = evaluator_report(path)
    except (OSError, ValueError):  # no report, or an unreadable one: the path still counts
        return summary
    summary.update(
        {k: v for k, v in report.items() if k.startswith(("accuracy", "miou")) or k == "n_test"}
    )
    return summary


def require_labelled_dataset(root: str | os.PathLike[str]) -> Path:
    """Return ``root`` if it holds ``scenes.json`` and, where it has classes, ``masks/``;
    else raise naming it."""
    from datamodules import DatasetLayoutError, load_scenes

    root = Path(root).expanduser()
    missing = [n for n in ("scenes.json", "masks") if not (root / n).exists()]
    if missing == ["masks"] and not load_scenes(root).get("classes", True):
        missing = []  # no classes (textures, faces): the evaluator judges the domains alone
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
    # hyperparameters added later count only when set, so existing caches stay valid
    hparams = {k: v for k, v in hparams.items() if not (k == "class_per_domain" and not v)}
    identity = {
        "version": EVALUATOR_VERSION,
        "scenes": hashlib.sha256((root / "scenes.json").read_bytes()).hexdigest(),
        # a judge of the domains alone also learns the rotation pretext (evaluator_model)
        **({"pretext": "rotation", "neither": 1} if hparams.get("n_classes") == 0 else {}),
        "hparams": hparams,
        "train": train,
    }
    text = json.dumps(identity, sort_keys=True, default=str)
    return "evaluator-" + hashlib.sha256(text.encode()).hexdigest()[:20]


def load_or_train_evaluator(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    max_epochs: int | None = None,
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
        max_epochs: training epochs (each sees every training scene in A and in B); None =
            5, or more on a small dataset, so that training takes at least 150 steps.
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
            from datamodules import UnpairedDataModule, load_scenes

            # Images at their stored size, no crop: the net resizes to input_size itself,
            # exactly as it does when judging translations of any size.
            size = plan["image_size"]
            # mirrored training images, unless the data has a handedness (digits)
            flip = bool(load_scenes(root).get("mirror_symmetric", True))
            dm = UnpairedDataModule(str(root), size, size, flip, batch_size, num_workers, seed=seed)
            trainer, seconds = train_evaluator(
                dm, model, max_epochs=plan["max_epochs"], seed=seed, num_threads=num_threads
            )
            report = evaluate_evaluator(model, dm)
            report.update(epochs=plan["max_epochs"], seconds=round(seconds, 1), data=str(root))
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
    max_epochs: int | None,
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
    # the dataset's classes decide the class head (0: a judge of the domains alone)
    # unpaired real domains get a classifier each (MNIST and UCI write a 7 differently)
    meta = load_scenes(root)
    n_classes = len(meta.get("classes", []))
    kwargs = {"n_classes": n_classes, **(evaluator_kwargs or {})}
    if not meta.get("paired", True) and kwargs["n_classes"] > 0:
        kwargs.setdefault("class_per_domain", True)
    model = Evaluator(**kwargs)
    if max_epochs is None:
        steps = max(1, _train_pairs(meta) // batch_size)  # the loader drops the last batch
        max_epochs = max(5, -(-MIN_STEPS // steps))
    train_cfg = {"max_epochs": max_epochs, "seed": seed, "batch_size": batch_size}
    folder = cache / "evaluators"
    folder.mkdir(parents=True, exist_ok=True)
    name = evaluator_fingerprint(root, dict(model.hparams), train_cfg)
    return {
        "root": root,
        "model": model,
        "ckpt": folder / f"{name}.ckpt",
        "image_size": int(meta.get("image_size", 64)),
        "max_epochs": max_epochs,
    }


def _train_pairs(meta: dict[str, Any]) -> int:
    """Training pairs per epoch of an embedded dataset: its scenes (shapes), or the larger
    domain's images (one record per image)."""
    records = meta["splits"]["train"]
    if records and "domain" in records[0]:
        return max(sum(r["domain"] == d for r in records) for d in DOMAINS)
    return len(records)
